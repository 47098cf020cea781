//! Rollups (SPEC §10; migration m0005): per organization, UTC hour,
//! provider, model, project and user, the sums summaries are answered from.
//!
//! The writer keeps them in step in the transaction that stores the rows,
//! from the rows that were new in it (a duplicate never counts twice, a
//! crash never leaves rows and rollups apart): SQLite adds each commit's
//! groups, aggregated in memory, one upsert per group (`sqlite.rs`);
//! PostgreSQL aggregates the new rows inside the insert statement itself
//! (`postgres.rs`). Sums saturate at 2^63 − 1 rather than fail a commit.
//! Re-rating moves each changed row's cost between the sums
//! ([`apply_cost_changes`]); `ingestd rollups rebuild` recomputes a range
//! from the rows ([`Store::rebuild_rollups`]).

use std::collections::BTreeMap;

use model::UsageRecord;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement, TransactionTrait, Value};
use time::OffsetDateTime;

use crate::{Backend, Error, Store};

/// A rollup row's key. `project` and `user` are `""` for a row without one
/// (a record's empty project or user is grouped with none: the read
/// endpoints refuse empty filters and report both as `null`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RollupKey {
    pub(crate) organization_id: String,
    pub(crate) hour_start: i64,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) project: String,
    pub(crate) user: String,
}

impl RollupKey {
    pub(crate) fn of(r: &UsageRecord) -> Self {
        RollupKey {
            organization_id: r.organization_id.clone(),
            hour_start: hour_start(r.timestamp),
            provider: r.provider.clone(),
            model: r.model.name.clone(),
            project: r.project_id.clone().unwrap_or_default(),
            user: r.user_id.clone().unwrap_or_default(),
        }
    }

    fn values(&self) -> [Value; 6] {
        [
            Value::from(self.organization_id.clone()),
            Value::BigInt(Some(self.hour_start)),
            Value::from(self.provider.clone()),
            Value::from(self.model.clone()),
            Value::from(self.project.clone()),
            Value::from(self.user.clone()),
        ]
    }
}

/// The start (Unix seconds) of the UTC hour holding `t`.
pub(crate) fn hour_start(t: OffsetDateTime) -> i64 {
    let s = t.unix_timestamp();
    s - s.rem_euclid(3600)
}

/// One group's sums, in the order of the rollup columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sums(pub(crate) [i64; 9]);

impl Sums {
    pub(crate) fn of(r: &UsageRecord) -> Self {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let u = &r.usage;
        Sums([
            1,
            n(u.prompt_tokens),
            n(u.completion_tokens),
            n(u.total_tokens),
            n(u.cached_tokens.unwrap_or(0)),
            n(u.cache_write_tokens.unwrap_or(0)),
            n(u.reasoning_tokens.unwrap_or(0)),
            r.cost.map_or(0, |c| c.nano_usd.max(0)),
            i64::from(r.cost.is_none()),
        ])
    }

    pub(crate) fn add(&mut self, other: &Sums) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }
}

/// The sum columns, in [`Sums`] order.
pub(crate) const SUM_COLUMNS: [&str; 9] = [
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_nano_usd",
    "unpriced_requests",
];

/// `ON CONFLICT … DO UPDATE SET` adding the new sums to the stored ones,
/// saturating (valid on SQLite and PostgreSQL).
pub(crate) fn upsert_tail() -> String {
    let set: Vec<String> = SUM_COLUMNS
        .iter()
        .map(|c| {
            format!(
                "{c} = CASE WHEN usage_rollups.{c} > 9223372036854775807 - excluded.{c} \
                 THEN 9223372036854775807 ELSE usage_rollups.{c} + excluded.{c} END"
            )
        })
        .collect();
    format!(
        " ON CONFLICT (organization_id, hour_start, provider, model_name, project_id, user_id) DO UPDATE SET {}",
        set.join(", ")
    )
}

/// SQLite's one-group upsert (`?1`–`?15`).
pub(crate) fn sqlite_upsert() -> String {
    format!(
        "INSERT INTO usage_rollups (organization_id, hour_start, provider, model_name, project_id, user_id, {}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15){}",
        SUM_COLUMNS.join(", "),
        upsert_tail()
    )
}

/// Per rollup row, the change re-rating makes: cost (nano-USD) and
/// unpriced requests.
pub(crate) type CostChanges = BTreeMap<RollupKey, (i64, i64)>;

/// Applies re-rating's changes in its transaction, in key order (so two
/// runs lock rollup rows in the same order).
pub(crate) async fn apply_cost_changes(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    changes: &CostChanges,
) -> Result<(), Error> {
    let sql = match backend {
        DbBackend::Postgres => {
            "UPDATE usage_rollups SET cost_nano_usd = GREATEST(cost_nano_usd + $7, 0), \
             unpriced_requests = GREATEST(unpriced_requests + $8, 0) WHERE organization_id = $1 \
             AND hour_start = $2 AND provider = $3 AND model_name = $4 AND project_id = $5 AND user_id = $6"
        }
        _ => {
            "UPDATE usage_rollups SET cost_nano_usd = max(cost_nano_usd + ?7, 0), \
             unpriced_requests = max(unpriced_requests + ?8, 0) WHERE organization_id = ?1 \
             AND hour_start = ?2 AND provider = ?3 AND model_name = ?4 AND project_id = ?5 AND user_id = ?6"
        }
    };
    for (key, (cost, unpriced)) in changes {
        if (*cost, *unpriced) == (0, 0) {
            continue;
        }
        let mut values = key.values().to_vec();
        values.extend([Value::BigInt(Some(*cost)), Value::BigInt(Some(*unpriced))]);
        if txn.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?.rows_affected() == 0 {
            // Rows stored without their rollups (by a process older than
            // m0005): `ingestd rollups rebuild` puts them right.
            tracing::warn!(
                organization_id = %key.organization_id, hour_start = key.hour_start,
                "re-rated rows have no rollup row; run `ingestd rollups rebuild` for their hours"
            );
        }
    }
    Ok(())
}

/// What [`Store::rebuild_rollups`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// The hours rebuilt: `[from, to)`, whole UTC hours (`None`: unbounded).
    #[serde(with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub to: Option<OffsetDateTime>,
    /// Rollup rows removed and written.
    pub removed: u64,
    pub written: u64,
}

impl Store {
    /// Recomputes the rollups of the hours in `[from, to)` (widened to
    /// whole hours) from the rows, in one transaction. PostgreSQL: the
    /// rollup table is locked against the writer for the duration (its
    /// commits wait), so no commit lands between the count and the swap.
    /// SQLite: the transaction holds the database's one write lock.
    pub async fn rebuild_rollups(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<RebuildReport, Error> {
        let from_hour = from.map(hour_start);
        let to_hour = to.map(|t| {
            let h = hour_start(t);
            if h == t.unix_timestamp() && t.nanosecond() == 0 { h } else { h + 3600 }
        });
        let backend = self.db_backend();
        let txn = self.connection().begin().await?;
        if self.backend() == Backend::Postgres {
            txn.execute_unprepared("SET LOCAL statement_timeout = 0").await?;
            txn.execute_unprepared("LOCK TABLE usage_rollups IN EXCLUSIVE MODE").await?;
        }
        let p = |n: usize| match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => format!("?{n}"),
        };
        let (mut rollup_where, mut rollup_values) = (Vec::new(), Vec::new());
        let (mut row_where, mut row_values) = (Vec::new(), Vec::new());
        for (hour, op) in [(from_hour, ">="), (to_hour, "<")] {
            let Some(h) = hour else { continue };
            rollup_values.push(Value::BigInt(Some(h)));
            rollup_where.push(format!("hour_start {op} {}", p(rollup_values.len())));
            row_values.push(self.occurred(seconds(h)?));
            row_where.push(format!("occurred_at {op} {}", p(row_values.len())));
        }
        let clause = |w: &[String]| if w.is_empty() { String::new() } else { format!("WHERE {}", w.join(" AND ")) };
        let removed = txn
            .execute_raw(Statement::from_sql_and_values(
                backend,
                format!("DELETE FROM usage_rollups {}", clause(&rollup_where)),
                rollup_values,
            ))
            .await?
            .rows_affected();
        let written = txn
            .execute_raw(Statement::from_sql_and_values(
                backend,
                migration::fill_rollups_sql(backend, &clause(&row_where)),
                row_values,
            ))
            .await?
            .rows_affected();
        txn.commit().await?;
        Ok(RebuildReport {
            from: from_hour.map(seconds).transpose()?,
            to: to_hour.map(seconds).transpose()?,
            removed,
            written,
        })
    }
}

fn seconds(s: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(s).map_err(|e| Error::Database(sea_orm::DbErr::Custom(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn hours_are_utc_and_floored() {
        assert_eq!(
            hour_start(datetime!(2026-12-06 17:59:59.999 UTC)),
            datetime!(2026-12-06 17:00 UTC).unix_timestamp()
        );
        assert_eq!(hour_start(datetime!(2026-12-06 18:30 +01:00)), datetime!(2026-12-06 17:00 UTC).unix_timestamp());
        assert_eq!(hour_start(datetime!(1969-12-31 23:59:59.5 UTC)), -3600);
    }

    #[test]
    fn sums_saturate() {
        let mut a = Sums([i64::MAX - 1, 1, 0, 0, 0, 0, 0, 0, 0]);
        a.add(&Sums([5, 2, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(a.0[..3], [i64::MAX, 3, 0]);
        assert_eq!(a.0[8], 1);
    }
}
