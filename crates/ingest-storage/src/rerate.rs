//! Re-rating (SPEC §9): stored rows priced again with the prices in force
//! at each row's `occurred_at`, after an import or an organization price
//! that back-dates.
//!
//! One organization at a time (the organizations found by a loose index
//! scan), each walked in (`occurred_at`, `request_id`) order by a keyset, in
//! batches: read a batch, price it with a freshly built [`PriceBook`],
//! update in one transaction only the rows whose `cost_nano_usd`,
//! `price_id` or `pricing` differ. Ingestion never updates a stored row, so
//! the two do not collide, and a second run finds nothing to change.

use sea_orm::sea_query::{Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait, Value};
use time::OffsetDateTime;

use crate::prices::PriceQuery;
use crate::schema::UsageRecords as U;
use crate::{Backend, Error, Store};

/// Rows between progress lines within one organization.
const PROGRESS_EVERY: u64 = 50_000;

/// What [`Store::rerate`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RerateReport {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    pub organization_id: Option<String>,
    /// Rows in the range.
    pub examined: u64,
    /// Rows whose cost, price or pricing changed.
    pub changed: u64,
    /// Of those, rows unpriced before and priced now, and the reverse.
    pub newly_priced: u64,
    pub newly_unpriced: u64,
    /// The cost of the range's rows before and after, in nano-USD
    /// (unpriced rows count 0).
    pub cost_before_nano_usd: i128,
    pub cost_after_nano_usd: i128,
}

/// One stored row as re-rating reads it; `at` and `id` also as the
/// database holds them, to find the row again.
struct Row {
    at_value: Value,
    id_value: Value,
    at: OffsetDateTime,
    provider: String,
    model: String,
    version: Option<String>,
    tokens: Option<pricing::Tokens>,
    cost: Option<i64>,
    price_id: Option<i64>,
    pricing: String,
    project: Option<String>,
    user: Option<String>,
}

impl Store {
    /// Re-prices the rows of `organization_id` (`None`: every organization)
    /// that occurred in `[from, to)`, `batch` rows per transaction.
    /// `progress` hears one line per organization.
    pub async fn rerate(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        organization_id: Option<&str>,
        batch: u64,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RerateReport, Error> {
        self.refresh_prices().await?;
        let book = self.price_book();
        let orgs = match organization_id {
            Some(org) => vec![org.to_owned()],
            None => self.organizations().await?,
        };
        let mut report = RerateReport {
            from,
            to,
            organization_id: organization_id.map(str::to_owned),
            examined: 0,
            changed: 0,
            newly_priced: 0,
            newly_unpriced: 0,
            cost_before_nano_usd: 0,
            cost_after_nano_usd: 0,
        };
        for org in &orgs {
            let (examined, changed) = (report.examined, report.changed);
            let mut after: Option<(Value, Value)> = None;
            // SQLite's `occurred_at` text sorts as the times (m0005).
            let (lo, hi) = (from, to);
            let mut reported = 0;
            loop {
                let rows = self.rerate_page(org, lo, hi, after.as_ref(), batch).await?;
                let Some(last) = rows.last() else { break };
                after = Some((last.at_value.clone(), last.id_value.clone()));
                let mut updates = Vec::new();
                for row in rows.iter().filter(|r| from <= r.at && r.at < to) {
                    report.examined += 1;
                    let cost = row.tokens.and_then(|tokens| {
                        book.cost(&PriceQuery {
                            organization_id: org,
                            provider: &row.provider,
                            model: &row.model,
                            version: row.version.as_deref(),
                            at: row.at,
                            tokens,
                        })
                    });
                    let pricing = if cost.is_some() { "priced" } else { "unpriced" };
                    report.cost_before_nano_usd += i128::from(row.cost.unwrap_or(0));
                    report.cost_after_nano_usd += i128::from(cost.map_or(0, |c| c.nano_usd));
                    if (cost.map(|c| c.nano_usd), cost.map(|c| c.price_id), pricing)
                        == (row.cost, row.price_id, row.pricing.as_str())
                    {
                        continue;
                    }
                    report.changed += 1;
                    match (row.cost.is_some(), cost.is_some()) {
                        (false, true) => report.newly_priced += 1,
                        (true, false) => report.newly_unpriced += 1,
                        _ => {}
                    }
                    updates.push((row, cost, pricing));
                }
                if !updates.is_empty() {
                    // Each row is updated only if it still holds what was
                    // read (another re-rating may have changed it since, or
                    // retention removed it); the rollups move by what was
                    // updated, in the same transaction, in key order.
                    let txn = self.connection().begin().await?;
                    let mut changes = crate::rollups::CostChanges::new();
                    for (row, cost, pricing) in updates {
                        let mut q = Query::update();
                        q.table(U::Table)
                            .value(U::CostNanoUsd, cost.map(|c| c.nano_usd))
                            .value(U::PriceId, cost.map(|c| c.price_id))
                            .value(U::Pricing, pricing)
                            .and_where(Expr::col(U::OrganizationId).eq(org.as_str()))
                            .and_where(Expr::col(U::OccurredAt).eq(row.at_value.clone()))
                            .and_where(Expr::col(U::RequestId).eq(row.id_value.clone()))
                            .and_where(Expr::col(U::Pricing).eq(row.pricing.as_str()))
                            .and_where(match row.cost {
                                Some(c) => Expr::col(U::CostNanoUsd).eq(c),
                                None => Expr::col(U::CostNanoUsd).is_null(),
                            })
                            .and_where(match row.price_id {
                                Some(p) => Expr::col(U::PriceId).eq(p),
                                None => Expr::col(U::PriceId).is_null(),
                            });
                        if txn.execute_raw(self.build(&q)).await?.rows_affected() != 1 {
                            continue;
                        }
                        let key = crate::rollups::RollupKey {
                            organization_id: org.clone(),
                            hour_start: crate::rollups::hour_start(row.at),
                            provider: row.provider.clone(),
                            model: row.model.clone(),
                            project: row.project.clone().unwrap_or_default(),
                            user: row.user.clone().unwrap_or_default(),
                        };
                        let change = changes.entry(key).or_default();
                        change.0 = change
                            .0
                            .saturating_add(cost.map_or(0, |c| c.nano_usd).saturating_sub(row.cost.unwrap_or(0)));
                        change.1 += i64::from(cost.is_none()) - i64::from(row.cost.is_none());
                    }
                    crate::rollups::apply_cost_changes(&txn, self.db_backend(), &changes).await?;
                    txn.commit().await?;
                }
                if (rows.len() as u64) < batch {
                    break;
                }
                if report.examined - examined >= reported + PROGRESS_EVERY {
                    reported = report.examined - examined;
                    progress(&format!(
                        "organization {org}: {reported} rows so far, {} changed",
                        report.changed - changed
                    ));
                }
            }
            if report.examined > examined {
                progress(&format!(
                    "organization {org}: {} rows in range, {} changed",
                    report.examined - examined,
                    report.changed - changed
                ));
            }
        }
        Ok(report)
    }

    /// Every organization with stored rows, by a loose index scan (one
    /// index probe per organization, not a scan of the rows).
    async fn organizations(&self) -> Result<Vec<String>, Error> {
        let sql = "WITH RECURSIVE o(id) AS ( \
                     SELECT MIN(organization_id) FROM usage_records \
                     UNION ALL \
                     SELECT (SELECT MIN(organization_id) FROM usage_records WHERE organization_id > o.id) \
                     FROM o WHERE o.id IS NOT NULL) \
                   SELECT id FROM o WHERE id IS NOT NULL";
        let rows = self.connection().query_all_raw(Statement::from_string(self.db_backend(), sql)).await?;
        rows.iter().map(|row| Ok(row.try_get_by_index(0)?)).collect()
    }

    /// Up to `limit` rows of `org` in `[from, to)` after `after`, in
    /// (`occurred_at`, `request_id`) order.
    async fn rerate_page(
        &self,
        org: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        after: Option<&(Value, Value)>,
        limit: u64,
    ) -> Result<Vec<Row>, Error> {
        let mut q = Query::select();
        q.columns([
            U::OccurredAt,
            U::RequestId,
            U::Provider,
            U::ModelName,
            U::ModelVersion,
            U::PromptTokens,
            U::CompletionTokens,
            U::CachedTokens,
            U::CacheWriteTokens,
            U::ReasoningTokens,
            U::CostNanoUsd,
            U::PriceId,
            U::Pricing,
            U::ProjectId,
            U::UserId,
        ])
        .from(U::Table)
        .and_where(Expr::col(U::OrganizationId).eq(org))
        .and_where(Expr::col(U::OccurredAt).gte(self.occurred(from)))
        .and_where(Expr::col(U::OccurredAt).lt(self.occurred(to)))
        .order_by(U::OccurredAt, Order::Asc)
        .order_by(U::RequestId, Order::Asc)
        .limit(limit);
        if let Some((at, id)) = after {
            q.and_where(
                Expr::col(U::OccurredAt)
                    .gt(at.clone())
                    .or(Expr::col(U::OccurredAt).eq(at.clone()).and(Expr::col(U::RequestId).gt(id.clone()))),
            );
        }
        let rows = self.connection().query_all_raw(self.build(&q)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let (at_value, id_value) = match self.backend() {
                Backend::Postgres => (
                    Value::TimeDateTimeWithTimeZone(Some(row.try_get_by_index(0)?)),
                    Value::Uuid(Some(row.try_get_by_index(1)?)),
                ),
                Backend::Sqlite => (
                    Value::String(Some(row.try_get_by_index::<String>(0)?)),
                    Value::String(Some(row.try_get_by_index::<String>(1)?)),
                ),
            };
            let count = |i: usize| -> Result<Option<u64>, Error> {
                let n: Option<i64> = row.try_get_by_index(i)?;
                Ok(n.and_then(|n| u64::try_from(n).ok()))
            };
            let tokens = (|| -> Result<Option<pricing::Tokens>, Error> {
                let (Some(prompt), Some(completion)) = (count(5)?, count(6)?) else { return Ok(None) };
                Ok(Some(pricing::Tokens {
                    prompt,
                    completion,
                    cached: count(7)?.unwrap_or(0),
                    cache_write: count(8)?.unwrap_or(0),
                    reasoning: count(9)?.unwrap_or(0),
                }))
            })()?;
            out.push(Row {
                at: self.get_time(row, 0)?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                at_value,
                id_value,
                provider: row.try_get_by_index(2)?,
                model: row.try_get_by_index(3)?,
                version: row.try_get_by_index(4)?,
                tokens,
                cost: row.try_get_by_index(10)?,
                price_id: row.try_get_by_index(11)?,
                pricing: row.try_get_by_index(12)?,
                project: row.try_get_by_index(13)?,
                user: row.try_get_by_index(14)?,
            });
        }
        Ok(out)
    }
}
