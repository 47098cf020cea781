//! The writer's PostgreSQL path: the one place the hot path uses sqlx
//! directly instead of SeaORM (docs/benchmarks.md, "Storage floor", shows
//! why), and the monthly partitions it inserts into.
//!
//! Each commit is one prepared statement whatever its size: the records
//! travel as one array per column (`UNNEST($1::text[], …)`), their keys go
//! into `usage_record_keys` (`ON CONFLICT DO NOTHING`), and only the records
//! whose key was new go into `usage_records` (migration m0003 says why the
//! key lives in a table of its own: a partitioned table's unique keys must
//! include the partition key). Dedupe stays exact across partitions and
//! across processes: a second transaction inserting the same key waits for
//! the first and then inserts nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use model::{Source, UsageRecord};
use sea_orm::sqlx::{Acquire as _, PgPool, Row as _};
use time::{Date, Month, OffsetDateTime};
use uuid::Uuid;

use crate::Error;
use crate::store::{Committed, Key, refusal_reason};

/// Rows per statement of the isolating commit; each chunk is tried under a
/// savepoint and split in halves when the database refuses it.
const ISOLATING_CHUNK_ROWS: usize = 2_500;

/// The insert: columns in the migration's order, `received_at` (the same
/// for the whole commit) as `$19`, each record's UTC hour as `$24`. The new
/// rows (`n`: those whose key was new) go into `usage_records` and, summed
/// per rollup group in key order (so concurrent commits lock rollup rows in
/// one order), into `usage_rollups` (`rollups.rs`).
fn pg_insert(returning: bool, rollups: bool) -> String {
    format!(
        "WITH t AS MATERIALIZED (SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], \
         $14::float8[], $15::float8[], $16::jsonb[], $17::jsonb[], $18::timestamptz[], $20::text[], \
         $21::int8[], $22::int8[], $23::int8[], $24::int8[]) \
         AS t(o, r, p, u, pr, m, v, cw, pt, ct, tt, cat, rt, l, ttft, tg, md, oc, s, cwt, cost, pid, hr)), \
         k AS (INSERT INTO usage_record_keys (organization_id, request_id, occurred_at) \
         SELECT o, r, oc FROM t ON CONFLICT DO NOTHING RETURNING organization_id, request_id), \
         n AS MATERIALIZED (SELECT t.* FROM t JOIN k ON k.organization_id = t.o AND k.request_id = t.r), \
         i AS (INSERT INTO usage_records (organization_id, request_id, project_id, user_id, provider, model_name, \
         model_version, context_window, prompt_tokens, completion_tokens, total_tokens, cached_tokens, \
         reasoning_tokens, latency_ms, time_to_first_token_ms, tags, metadata, occurred_at, received_at, source, \
         cache_write_tokens, cost_nano_usd, price_id, pricing) \
         SELECT o, r, p, u, pr, m, v, cw, pt, ct, tt, cat, rt, l, ttft, tg, md, oc, $19, s, cwt, cost, pid, \
         CASE WHEN cost IS NULL THEN 'unpriced' ELSE 'priced' END FROM n \
         RETURNING organization_id, request_id){} {}",
        if rollups { rollup_cte() } else { String::new() },
        if returning { "SELECT organization_id, request_id FROM i" } else { "SELECT count(*) FROM i" },
    )
}

/// The new rows' sums per rollup group, upserted in key order: byte order
/// (`COLLATE "C"`), the order of re-rating's `BTreeMap` too, so the writer
/// and a re-rating lock shared rollup rows in one order (no deadlock).
fn rollup_cte() -> String {
    let sum = |c: &str| format!("LEAST(COALESCE(sum({c}), 0), 9223372036854775807)::int8");
    format!(
        ", g AS (INSERT INTO usage_rollups (organization_id, hour_start, provider, model_name, project_id, user_id, \
         requests, prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_write_tokens, \
         reasoning_tokens, cost_nano_usd, unpriced_requests) \
         SELECT o, hr, pr, m, COALESCE(p, ''), COALESCE(u, ''), count(*), {}, {}, {}, {}, {}, {}, {}, \
         count(*) FILTER (WHERE cost IS NULL) FROM n GROUP BY 1, 2, 3, 4, 5, 6 \
         ORDER BY o COLLATE \"C\", hr, pr COLLATE \"C\", m COLLATE \"C\", COALESCE(p, '') COLLATE \"C\", \
         COALESCE(u, '') COLLATE \"C\"{})",
        sum("pt"),
        sum("ct"),
        sum("tt"),
        sum("cat"),
        sum("cwt"),
        sum("rt"),
        sum("cost"),
        crate::rollups::upsert_tail(),
    )
}
/// The statements, by (returning, rollups); without rollups only for the
/// benchmark's A/B (`Store::without_rollups`).
static INSERTS: std::sync::LazyLock<[[String; 2]; 2]> = std::sync::LazyLock::new(|| {
    [[pg_insert(false, false), pg_insert(false, true)], [pg_insert(true, false), pg_insert(true, true)]]
});

/// Months (`year * 12 + month0`) known to have a partition; shared by the
/// clones of one `Store`, forgotten after a failed commit (an operator or
/// `ingestd retention` may have dropped one).
#[derive(Clone, Debug, Default)]
pub(crate) struct Partitions(Arc<Mutex<HashSet<i32>>>);

impl Partitions {
    pub(crate) fn forget(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn known(&self, month: i32) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(&month)
    }

    fn learn(&self, month: i32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(month);
    }
}

/// `t`'s UTC month as `year * 12 + month0`.
pub(crate) fn month_index(t: OffsetDateTime) -> i32 {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.year() * 12 + i32::from(u8::from(t.month())) - 1
}

/// The first instant of month `index`, UTC.
pub(crate) fn month_start(index: i32) -> OffsetDateTime {
    let year = index.div_euclid(12);
    let month = Month::try_from(index.rem_euclid(12) as u8 + 1).unwrap_or(Month::January);
    Date::from_calendar_date(year, month, 1).unwrap_or(Date::MIN).midnight().assume_utc()
}

/// `usage_records_yYYYYmMM`, the partition of month `index`.
pub(crate) fn partition_name(index: i32) -> String {
    format!("usage_records_y{:04}m{:02}", index.div_euclid(12), index.rem_euclid(12) + 1)
}

/// Creates the partitions the records need that are not known to exist,
/// and this month's and the next month's ahead of their first record (so a
/// month's partition is made a month early, not in the commit of its first
/// record). Months older than [`migration::PARTITION_MONTHS_BACK`] get
/// none: their rows land in `usage_records_default`.
///
/// A partition another process just created is fine. One that cannot be
/// created because the default partition already holds rows of its month
/// (retention dropped the month and a late record of it went to the default
/// partition) is not tried again: the month's rows belong there now. Any
/// other failure (a lock not granted within [`PARTITION_LOCK_TIMEOUT`], a
/// lost connection, a missing privilege) fails the commit, retryably,
/// rather than send the month's rows to the default partition for good.
async fn ensure_partitions(
    pool: &PgPool,
    partitions: &Partitions,
    records: &[(&UsageRecord, Source)],
) -> Result<(), Error> {
    let now = month_index(OffsetDateTime::now_utc());
    let oldest = now - migration::PARTITION_MONTHS_BACK;
    let mut months: std::collections::BTreeSet<i32> =
        records.iter().map(|(r, _)| month_index(r.timestamp)).filter(|m| *m >= oldest).collect();
    months.extend([now, now + 1]);
    for month in months {
        if partitions.known(month) {
            continue;
        }
        match create_partition(pool, month).await {
            Ok(()) => partitions.learn(month),
            Err(sea_orm::sqlx::Error::Database(db)) => match db.code().as_deref() {
                // Two processes creating the same partition: one of them
                // sees the catalog's unique violation (or "already exists").
                Some("23505" | "42P07") => partitions.learn(month),
                Some("23514") => {
                    tracing::warn!(
                        partition = %partition_name(month), error = %db,
                        "the default partition holds rows of this month; its rows stay there"
                    );
                    partitions.learn(month);
                }
                _ => return Err(db_err(sea_orm::sqlx::Error::Database(db))),
            },
            Err(e) => return Err(db_err(e)),
        }
    }
    Ok(())
}

/// How long creating a partition may wait for its lock on `usage_records`
/// (every insert queues behind a waiting `CREATE … PARTITION OF`).
const PARTITION_LOCK_TIMEOUT: &str = "2s";

async fn create_partition(pool: &PgPool, month: i32) -> Result<(), sea_orm::sqlx::Error> {
    let (from, to) = (month_start(month), month_start(month + 1));
    // The name and bounds are made here from a month number, never from input.
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF usage_records FOR VALUES FROM ('{}') TO ('{}')",
        partition_name(month),
        pg_time(from),
        pg_time(to)
    );
    let mut txn = pool.begin().await?;
    sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")))
        .execute(&mut *txn)
        .await?;
    sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(sql)).execute(&mut *txn).await?;
    txn.commit().await
}

/// A timestamp literal PostgreSQL reads the same in every session time zone.
fn pg_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} 00:00:00+00", t.year(), u8::from(t.month()), t.day())
}

/// One commit's records inserted in one transaction, those already stored
/// ignored. The common case, no conflict, is learnt from the affected-row
/// count alone; only when some keys already existed is the transaction
/// rolled back and redone with `RETURNING`, to learn which.
pub(crate) async fn insert_new(
    pool: &PgPool,
    partitions: &Partitions,
    records: &[(&UsageRecord, Source)],
    received_at: OffsetDateTime,
    rollups: bool,
) -> Result<Committed, Error> {
    ensure_partitions(pool, partitions, records).await?;
    let columns = Columns::new(records, rollups);
    let mut txn = pool.begin().await.map_err(db_err)?;
    let affected: i64 =
        columns.insert(received_at, false).fetch_one(&mut *txn).await.map_err(db_err)?.try_get(0).map_err(db_err)?;
    if affected == records.len() as i64 {
        txn.commit().await.map_err(db_err)?;
        let inserted = records.iter().map(|(r, _)| (r.organization_id.clone(), r.request_id)).collect();
        return Ok(Committed { inserted, refused: HashMap::new() });
    }
    txn.rollback().await.map_err(db_err)?;

    let mut txn = pool.begin().await.map_err(db_err)?;
    let inserted = returned_keys(columns.insert(received_at, true).fetch_all(&mut *txn).await.map_err(db_err)?)?;
    txn.commit().await.map_err(db_err)?;
    Ok(Committed { inserted, refused: HashMap::new() })
}

/// [`insert_new`] after it failed while the database still answers: each
/// chunk under a savepoint; a chunk the database refuses for its *data* is
/// rolled back to the savepoint and split in halves, down to the single
/// records at fault, which are then refused. O(k·log n) statements for k
/// refused records. Any other failure fails the whole transaction.
pub(crate) async fn insert_isolating(
    pool: &PgPool,
    partitions: &Partitions,
    records: &[(&UsageRecord, Source)],
    received_at: OffsetDateTime,
    rollups: bool,
) -> Result<Committed, Error> {
    ensure_partitions(pool, partitions, records).await?;
    let mut txn = pool.begin().await.map_err(db_err)?;
    // A deferred constraint would fail only at COMMIT, outside the
    // savepoints that isolate it.
    sea_orm::sqlx::query("SET CONSTRAINTS ALL IMMEDIATE").execute(&mut *txn).await.map_err(db_err)?;
    let mut inserted = HashSet::with_capacity(records.len());
    let mut refused = HashMap::new();
    let step = ISOLATING_CHUNK_ROWS;
    // Ranges still to try, last first.
    let mut todo: Vec<std::ops::Range<usize>> =
        (0..records.len()).step_by(step).map(|at| at..(at + step).min(records.len())).rev().collect();
    while let Some(range) = todo.pop() {
        let chunk = &records[range.clone()];
        let columns = Columns::new(chunk, rollups);
        let mut savepoint = txn.begin().await.map_err(db_err)?;
        match columns.insert(received_at, true).fetch_all(&mut *savepoint).await {
            Ok(rows) => {
                savepoint.commit().await.map_err(db_err)?;
                inserted.extend(returned_keys(rows)?);
            }
            Err(e) => {
                savepoint.rollback().await.map_err(db_err)?;
                let e = db_err(e);
                let Some(reason) = refusal_reason(crate::Backend::Postgres, &e) else { return Err(e) };
                if let [(record, _)] = chunk {
                    tracing::warn!(
                        organization_id = %record.organization_id, request_id = %record.request_id, %reason,
                        "the database refused a record that passed validation"
                    );
                    refused.insert((record.organization_id.clone(), record.request_id), reason);
                } else {
                    let mid = range.start + chunk.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
            }
        }
    }
    txn.commit().await.map_err(db_err)?;
    Ok(Committed { inserted, refused })
}

fn returned_keys(rows: Vec<sea_orm::sqlx::postgres::PgRow>) -> Result<HashSet<Key>, Error> {
    rows.iter()
        .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<Uuid, _>(1)?)))
        .collect::<Result<_, sea_orm::sqlx::Error>>()
        .map_err(db_err)
}

/// An sqlx error as the crate's.
pub(crate) fn db_err(e: sea_orm::sqlx::Error) -> Error {
    Error::Database(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(Arc::new(e))))
}

/// The records of one commit, one array per column.
#[derive(Default)]
struct Columns {
    organization_id: Vec<String>,
    request_id: Vec<Uuid>,
    project_id: Vec<Option<String>>,
    user_id: Vec<Option<String>>,
    provider: Vec<String>,
    model_name: Vec<String>,
    model_version: Vec<Option<String>>,
    context_window: Vec<Option<i64>>,
    prompt_tokens: Vec<i64>,
    completion_tokens: Vec<i64>,
    total_tokens: Vec<i64>,
    cached_tokens: Vec<Option<i64>>,
    reasoning_tokens: Vec<Option<i64>>,
    latency_ms: Vec<Option<f64>>,
    time_to_first_token_ms: Vec<Option<f64>>,
    tags: Vec<serde_json::Value>,
    metadata: Vec<Option<serde_json::Value>>,
    occurred_at: Vec<OffsetDateTime>,
    source: Vec<&'static str>,
    cache_write_tokens: Vec<Option<i64>>,
    cost_nano_usd: Vec<Option<i64>>,
    price_id: Vec<Option<i64>>,
    hour_start: Vec<i64>,
    rollups: bool,
}

impl Columns {
    fn new(records: &[(&UsageRecord, Source)], rollups: bool) -> Self {
        let mut c = Columns { rollups, ..Columns::default() };
        for (r, source) in records {
            c.organization_id.push(r.organization_id.clone());
            c.request_id.push(r.request_id);
            c.project_id.push(r.project_id.clone());
            c.user_id.push(r.user_id.clone());
            c.provider.push(r.provider.clone());
            c.model_name.push(r.model.name.clone());
            c.model_version.push(r.model.version.clone());
            c.context_window.push(r.model.context_window.map(|n| n as i64));
            c.prompt_tokens.push(r.usage.prompt_tokens as i64);
            c.completion_tokens.push(r.usage.completion_tokens as i64);
            c.total_tokens.push(r.usage.total_tokens as i64);
            c.cached_tokens.push(r.usage.cached_tokens.map(|n| n as i64));
            c.reasoning_tokens.push(r.usage.reasoning_tokens.map(|n| n as i64));
            c.latency_ms.push(r.performance.latency_ms);
            c.time_to_first_token_ms.push(r.performance.time_to_first_token_ms);
            c.tags.push(serde_json::Value::from(r.tags.clone()));
            c.metadata.push(r.metadata.clone().map(serde_json::Value::Object));
            c.occurred_at.push(r.timestamp);
            c.source.push(source.as_str());
            c.cache_write_tokens.push(r.usage.cache_write_tokens.map(|n| n as i64));
            c.cost_nano_usd.push(r.cost.map(|c| c.nano_usd));
            c.price_id.push(r.cost.map(|c| c.price_id));
            c.hour_start.push(crate::rollups::hour_start(r.timestamp));
        }
        c
    }

    fn insert(
        &self,
        received_at: OffsetDateTime,
        returning: bool,
    ) -> sea_orm::sqlx::query::Query<'_, sea_orm::sqlx::Postgres, sea_orm::sqlx::postgres::PgArguments> {
        let sql: &'static str = &INSERTS[usize::from(returning)][usize::from(self.rollups)];
        sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(sql))
            .bind(&self.organization_id)
            .bind(&self.request_id)
            .bind(&self.project_id)
            .bind(&self.user_id)
            .bind(&self.provider)
            .bind(&self.model_name)
            .bind(&self.model_version)
            .bind(&self.context_window)
            .bind(&self.prompt_tokens)
            .bind(&self.completion_tokens)
            .bind(&self.total_tokens)
            .bind(&self.cached_tokens)
            .bind(&self.reasoning_tokens)
            .bind(&self.latency_ms)
            .bind(&self.time_to_first_token_ms)
            .bind(&self.tags)
            .bind(&self.metadata)
            .bind(&self.occurred_at)
            .bind(received_at)
            .bind(&self.source)
            .bind(&self.cache_write_tokens)
            .bind(&self.cost_nano_usd)
            .bind(&self.price_id)
            .bind(&self.hour_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn months_are_utc_and_named_by_year_and_month() {
        let m = month_index(datetime!(2026-12-31 23:30 -01:00)); // 2027-01-01 00:30 UTC
        assert_eq!(partition_name(m), "usage_records_y2027m01");
        assert_eq!(month_start(m), datetime!(2027-01-01 0:00 UTC));
        assert_eq!(month_start(m + 1), datetime!(2027-02-01 0:00 UTC));
        assert_eq!(month_start(month_index(datetime!(2026-12-01 0:00 UTC)) + 1), datetime!(2027-01-01 0:00 UTC));
        assert_eq!(pg_time(month_start(m)), "2027-01-01 00:00:00+00");
        assert_eq!(partition_name(month_index(datetime!(0999-03-04 5:06 UTC))), "usage_records_y0999m03");
    }
}
