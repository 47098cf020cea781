//! Reading usage back (SPEC §10): [`model::UsageReader`] for [`Store`].
//!
//! - Records: one organization's rows, newest first by (`occurred_at`,
//!   `request_id`), continued strictly after a position (a keyset: a row
//!   that existed when paging began is never skipped or repeated). On
//!   PostgreSQL the primary key `(organization_id, occurred_at,
//!   request_id)` is the order; on SQLite the m0005 index of the same
//!   columns (its `occurred_at` text sorts as the times).
//! - Summaries of 1h and 1d buckets: from `usage_rollups` (O(hours × groups)
//!   of the range, not O(rows)); of 1m buckets (ranges of at most 6 hours,
//!   checked by the HTTP edge): from the rows.
//!
//! Sums are read as their high and low 32 bits summed apart (neither can
//! overflow a 64-bit integer below 2^31 rows) and joined in Rust, so no sum
//! of stored values overflows, on either backend.

use model::read::{BucketWidth, ReadError, ReadFuture, RecordPosition, StoredRecord, SummaryQuery, SummaryRow, Totals};
use model::{UsageFilter, UsageReader};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};
use time::OffsetDateTime;

use crate::{Backend, Error, Store};

/// A statement under construction: SQL text and its arguments, numbered
/// as the backend wants them.
struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(backend: DbBackend) -> Self {
        Sql { backend, text: String::new(), values: Vec::new() }
    }

    /// The placeholder of a new argument.
    fn arg(&mut self, v: Value) -> String {
        self.values.push(v);
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => format!("?{}", self.values.len()),
        }
    }

    fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
}

const RECORD_COLUMNS: &str = "organization_id, request_id, occurred_at, provider, model_name, model_version, \
    project_id, user_id, prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_write_tokens, \
    reasoning_tokens, context_window, latency_ms, time_to_first_token_ms, cost_nano_usd, price_id, pricing, \
    tags, metadata, source, received_at";

fn unavailable(e: impl std::fmt::Display) -> ReadError {
    ReadError(e.to_string())
}

impl Store {
    /// The `WHERE` conditions of `filter` other than time.
    fn match_filter(&self, sql: &mut Sql, filter: &UsageFilter) -> String {
        let mut conditions =
            vec![format!("organization_id = {}", sql.arg(Value::from(filter.organization_id.clone())))];
        for (column, value) in [
            ("provider", &filter.provider),
            ("model_name", &filter.model),
            ("project_id", &filter.project_id),
            ("user_id", &filter.user_id),
        ] {
            if let Some(v) = value {
                conditions.push(format!("{column} = {}", sql.arg(Value::from(v.clone()))));
            }
        }
        conditions.join(" AND ")
    }

    /// Up to `limit` rows of `filter` after `after`, newest first.
    pub async fn read_records(
        &self,
        filter: &UsageFilter,
        after: Option<RecordPosition>,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, Error> {
        let mut sql = Sql::new(self.db_backend());
        let mut conditions = vec![self.match_filter(&mut sql, filter)];
        if let Some(from) = filter.from {
            conditions.push(format!("occurred_at >= {}", sql.arg(self.occurred(from))));
        }
        // Past the first page the cursor is the upper bound: given `to` as
        // well, SQLite bounds the index scan by `to` and filters the rows
        // down to the cursor, reading every earlier page again.
        if let Some(to) = filter.to.filter(|to| after.is_none_or(|p| p.occurred_at >= *to)) {
            conditions.push(format!("occurred_at < {}", sql.arg(self.occurred(to))));
        }
        if let Some(p) = after {
            let at = sql.arg(self.occurred(p.occurred_at));
            let id = sql.arg(self.uuid(p.request_id));
            conditions.push(format!("(occurred_at, request_id) < ({at}, {id})"));
        }
        sql.text = format!(
            "SELECT {RECORD_COLUMNS} FROM usage_records WHERE {} ORDER BY occurred_at DESC, request_id DESC LIMIT {}",
            conditions.join(" AND "),
            limit
        );
        let rows = self.connection().query_all_raw(sql.statement()).await?;
        rows.iter().map(|row| self.stored_record(row)).collect()
    }

    fn stored_record(&self, row: &QueryResult) -> Result<StoredRecord, Error> {
        let json = |i: usize| -> Result<Option<serde_json::Value>, Error> {
            match self.backend() {
                Backend::Postgres => Ok(row.try_get_by_index::<Option<serde_json::Value>>(i)?),
                Backend::Sqlite => {
                    let text: Option<String> = row.try_get_by_index(i)?;
                    text.map(|t| serde_json::from_str(&t))
                        .transpose()
                        .map_err(|e| Error::Database(sea_orm::DbErr::Type(e.to_string())))
                }
            }
        };
        let time = |i: usize| -> Result<OffsetDateTime, Error> {
            self.get_time(row, i)?.ok_or_else(|| Error::Database(sea_orm::DbErr::Type("a null time".to_owned())))
        };
        Ok(StoredRecord {
            organization_id: row.try_get_by_index(0)?,
            request_id: self.get_uuid(row, 1)?,
            occurred_at: time(2)?,
            provider: row.try_get_by_index(3)?,
            model_name: row.try_get_by_index(4)?,
            model_version: row.try_get_by_index(5)?,
            project_id: row.try_get_by_index(6)?,
            user_id: row.try_get_by_index(7)?,
            prompt_tokens: row.try_get_by_index(8)?,
            completion_tokens: row.try_get_by_index(9)?,
            total_tokens: row.try_get_by_index(10)?,
            cached_tokens: row.try_get_by_index(11)?,
            cache_write_tokens: row.try_get_by_index(12)?,
            reasoning_tokens: row.try_get_by_index(13)?,
            context_window: row.try_get_by_index(14)?,
            latency_ms: row.try_get_by_index(15)?,
            time_to_first_token_ms: row.try_get_by_index(16)?,
            cost_nano_usd: row.try_get_by_index(17)?,
            price_id: row.try_get_by_index(18)?,
            pricing: row.try_get_by_index(19)?,
            tags: json(20)?.unwrap_or(serde_json::Value::Array(Vec::new())),
            metadata: json(21)?,
            source: row.try_get_by_index(22)?,
            received_at: time(23)?,
        })
    }

    /// The non-empty (bucket, group) results of `query`, in bucket order.
    pub async fn read_summary(&self, query: &SummaryQuery) -> Result<Vec<SummaryRow>, Error> {
        let backend = self.db_backend();
        let mut sql = Sql::new(backend);
        let w = query.width.seconds();
        let from_rows = query.width == BucketWidth::Minute;
        let (bucket, table, values): (String, &str, [&str; 9]) = if from_rows {
            let minute = match self.backend() {
                Backend::Postgres => "(floor(extract(epoch from occurred_at) / 60) * 60)::int8",
                Backend::Sqlite => "CAST(strftime('%s', substr(occurred_at, 1, 16)) AS INTEGER)",
            };
            (
                minute.to_owned(),
                "usage_records",
                [
                    "1",
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "COALESCE(cached_tokens, 0)",
                    "COALESCE(cache_write_tokens, 0)",
                    "COALESCE(reasoning_tokens, 0)",
                    "COALESCE(cost_nano_usd, 0)",
                    "CASE WHEN cost_nano_usd IS NULL THEN 1 ELSE 0 END",
                ],
            )
        } else {
            (format!("(hour_start - (((hour_start % {w}) + {w}) % {w}))"), "usage_rollups", crate::rollups::SUM_COLUMNS)
        };
        let mut conditions = vec![self.match_filter(&mut sql, &query.filter)];
        if from_rows {
            conditions.push(format!("occurred_at >= {}", sql.arg(self.occurred(seconds(query.start)?))));
            // The end of the last minute of 9999 is past what a time holds:
            // no upper bound is the same bound.
            if let Ok(end) = seconds(query.end) {
                conditions.push(format!("occurred_at < {}", sql.arg(self.occurred(end))));
            }
        } else {
            conditions.push(format!("hour_start >= {}", sql.arg(Value::BigInt(Some(query.start)))));
            conditions.push(format!("hour_start < {}", sql.arg(Value::BigInt(Some(query.end)))));
        }
        let g = query.group_by;
        let mut groups = vec!["b".to_owned()];
        let mut select = vec![format!("{bucket} AS b")];
        for (on, column, alias) in [
            (g.provider, "provider", "g_provider"),
            (g.model, "model_name", "g_model"),
            (g.project_id, "COALESCE(project_id, '')", "g_project"),
            (g.user_id, "COALESCE(user_id, '')", "g_user"),
        ] {
            if on {
                select.push(format!("{column} AS {alias}"));
                groups.push(alias.to_owned());
            }
        }
        for v in values {
            // 64-bit before shifting (a literal is a 32-bit int4 on PostgreSQL).
            select.push(format!("CAST(sum(CAST({v} AS BIGINT) >> 32) AS BIGINT)"));
            select.push(format!("CAST(sum(CAST({v} AS BIGINT) & 4294967295) AS BIGINT)"));
        }
        sql.text = format!(
            "SELECT {} FROM {table} WHERE {} GROUP BY {} ORDER BY {}",
            select.join(", "),
            conditions.join(" AND "),
            groups.join(", "),
            groups.join(", ")
        );
        let rows = self.connection().query_all_raw(sql.statement()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut i = 0;
            let mut next = || {
                i += 1;
                i - 1
            };
            let bucket_start: i64 = row.try_get_by_index(next())?;
            let mut text = |on: bool| -> Result<Option<String>, Error> {
                if !on {
                    return Ok(None);
                }
                let s: String = row.try_get_by_index(next())?;
                Ok((!s.is_empty()).then_some(s))
            };
            let (provider, model, project_id, user_id) =
                (text(g.provider)?, text(g.model)?, text(g.project_id)?, text(g.user_id)?);
            let mut sums = [0i128; 9];
            for sum in &mut sums {
                let hi: Option<i64> = row.try_get_by_index(next())?;
                let lo: Option<i64> = row.try_get_by_index(next())?;
                *sum = (i128::from(hi.unwrap_or(0)) << 32) + i128::from(lo.unwrap_or(0));
            }
            let [
                requests,
                prompt_tokens,
                completion_tokens,
                total_tokens,
                cached_tokens,
                cache_write_tokens,
                reasoning_tokens,
                cost_nano_usd,
                unpriced_requests,
            ] = sums;
            out.push(SummaryRow {
                bucket_start,
                provider,
                model,
                project_id,
                user_id,
                totals: Totals {
                    requests,
                    prompt_tokens,
                    completion_tokens,
                    total_tokens,
                    cached_tokens,
                    cache_write_tokens,
                    reasoning_tokens,
                    cost_nano_usd,
                    unpriced_requests,
                },
            });
        }
        Ok(out)
    }
}

fn seconds(s: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(s).map_err(|e| Error::Database(sea_orm::DbErr::Custom(e.to_string())))
}

impl UsageReader for Store {
    fn records(
        &self,
        filter: UsageFilter,
        after: Option<RecordPosition>,
        limit: u32,
    ) -> ReadFuture<'_, Vec<StoredRecord>> {
        Box::pin(async move { self.read_records(&filter, after, limit).await.map_err(unavailable) })
    }

    fn summary(&self, query: SummaryQuery) -> ReadFuture<'_, Vec<SummaryRow>> {
        Box::pin(async move { self.read_summary(&query).await.map_err(unavailable) })
    }
}
