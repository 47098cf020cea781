//! `ingestd retention`: removing usage records older than a cutoff.
//!
//! PostgreSQL drops whole monthly partitions that end at or before the
//! cutoff (instant, no dead rows), deletes the rows of the default partition
//! older than the cutoff in bounded batches (each batch with its keys, in
//! one transaction), and then removes the idempotency keys older than the
//! cutoff that no row holds (this run's dropped rows', and those of an
//! earlier run interrupted after its drop) in bounded batches: a key goes
//! only when no row holds it, checked in the
//! same statement, so "one row per key" holds at every moment, even while
//! records for those months keep arriving. A partition that straddles the
//! cutoff is kept whole (its rows are removed by a later run).
//!
//! SQLite deletes the rows older than the cutoff in bounded batches, one
//! organization at a time along the `(organization_id, occurred_at)` index.
//!
//! Rollups are kept (summaries of removed ranges keep working) unless
//! `with_rollups`: then the rollups of every hour up to the cutoff's are
//! rebuilt from the rows left (on PostgreSQL a partition straddling the
//! cutoff keeps its rows, and so their sums).
//!
//! A dry run (`execute = false`) counts what would be removed and changes
//! nothing. Once removed, a record is forgotten: if a source sends it again,
//! it is stored again (and removed by the next run).

use sea_orm::{ConnectionTrait, Statement, TransactionTrait, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::postgres::{month_start, partition_name};
use crate::store::Backend;
use crate::{Error, Store};

/// Rows (or keys) per batch: a bounded transaction, a short lock.
const BATCH: i64 = 10_000;

/// How long a `DETACH PARTITION` may wait for its lock, and how many times
/// it is tried.
const DETACH_LOCK_TIMEOUT: &str = "5s";
const DETACH_ATTEMPTS: u32 = 5;

/// PostgreSQL's `lock_not_available` (a lock timeout).
fn lock_not_granted(e: &Error) -> bool {
    let Error::Database(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))) = e else { return false };
    matches!(&**e, sea_orm::sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// What a retention run removed, or would remove (a dry run).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// Rows older than this are removed; whole seconds, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub cutoff: OffsetDateTime,
    /// Whether anything was changed (false: a dry run).
    pub executed: bool,
    /// PostgreSQL: the monthly partitions dropped whole.
    pub partitions: Vec<DroppedPartition>,
    /// Rows removed (or to remove) in all, partitions included.
    pub rows: u64,
    /// PostgreSQL: idempotency keys removed with the rows (none on SQLite,
    /// whose rows are their own key). In a dry run: the rows' count.
    pub keys: u64,
    /// With `--with-rollups` (executed): the rollups of the hours up to the
    /// cutoff's, rebuilt from the rows left, so removed rows leave no sums
    /// behind and the rows kept keep theirs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollups: Option<crate::RebuildReport>,
}

/// A partition dropped whole.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DroppedPartition {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    pub rows: u64,
}

impl Store {
    /// Removes (with `execute`) or counts the usage records that occurred
    /// before `cutoff` (truncated to the second). `progress` hears one line
    /// per step.
    pub async fn retention(
        &self,
        cutoff: OffsetDateTime,
        execute: bool,
        with_rollups: bool,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RetentionReport, Error> {
        let cutoff = cutoff
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .map_err(|e| Error::Database(sea_orm::DbErr::Custom(e.to_string())))?;
        let mut report =
            RetentionReport { cutoff, executed: execute, partitions: Vec::new(), rows: 0, keys: 0, rollups: None };
        match self.backend() {
            Backend::Postgres => self.postgres_retention(&mut report, progress).await?,
            Backend::Sqlite => self.sqlite_retention(&mut report, progress).await?,
        }
        if execute && with_rollups {
            let rebuilt = self.rebuild_rollups(None, Some(cutoff)).await?;
            progress(&format!(
                "rollups up to {cutoff}: {} removed, {} rebuilt from the rows left",
                rebuilt.removed, rebuilt.written
            ));
            report.rollups = Some(rebuilt);
        }
        Ok(report)
    }

    /// The monthly partitions that end at or before `cutoff`, oldest first.
    async fn partitions_before(&self, cutoff: OffsetDateTime) -> Result<Vec<(String, i32)>, Error> {
        let rows = self
            .connection()
            .query_all_raw(Statement::from_string(
                self.db_backend(),
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'usage_records'::regclass",
            ))
            .await?;
        let mut found = Vec::new();
        for row in rows {
            let name: String = row.try_get_by_index(0)?;
            // Only the partitions ingestd names (and bounds) itself.
            let Some(month) = parse_partition_name(&name) else { continue };
            if month_start(month + 1) <= cutoff {
                found.push((name, month));
            }
        }
        found.sort_by_key(|(_, month)| *month);
        Ok(found)
    }

    async fn postgres_retention(
        &self,
        report: &mut RetentionReport,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), Error> {
        let cutoff = Value::TimeDateTimeWithTimeZone(Some(report.cutoff));
        let backend = self.db_backend();
        let db = self.connection();

        // 1. The default partition: rows and their keys, batch by batch.
        if report.executed {
            let sql = "WITH d AS (DELETE FROM usage_records_default WHERE ctid = ANY(ARRAY( \
                         SELECT ctid FROM usage_records_default WHERE occurred_at < $1 LIMIT $2)) \
                         RETURNING organization_id, request_id), \
                       kd AS (DELETE FROM usage_record_keys k USING d \
                         WHERE k.organization_id = d.organization_id AND k.request_id = d.request_id RETURNING 1) \
                       SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM kd)";
            loop {
                let row = db
                    .query_one_raw(Statement::from_sql_and_values(
                        backend,
                        sql,
                        [cutoff.clone(), Value::BigInt(Some(BATCH))],
                    ))
                    .await?;
                let (rows, keys) = match row {
                    Some(row) => (row.try_get_by_index::<i64>(0)?, row.try_get_by_index::<i64>(1)?),
                    None => (0, 0),
                };
                report.rows += rows as u64;
                report.keys += keys as u64;
                if rows == 0 {
                    break;
                }
                progress(&format!("usage_records_default: {} rows removed so far", report.rows));
            }
        } else {
            let n = self
                .count_unbounded("SELECT count(*) FROM usage_records_default WHERE occurred_at < $1", Some(&cutoff))
                .await?;
            report.rows += n;
            report.keys += n;
            progress(&format!("usage_records_default: {n} rows older than the cutoff"));
        }

        // 2. Whole partitions: counted (without a lock that would hold up
        //    inserts: a late record of that month arriving between the
        //    count and the drop goes uncounted), then detached and dropped
        //    under a lock timeout, tried again a few times when the lock is
        //    not granted (every insert queues behind a waiting DETACH, so
        //    it must not wait long).
        for (name, month) in self.partitions_before(report.cutoff).await? {
            let rows = self.count_unbounded(&format!("SELECT count(*) FROM {name}"), None).await?;
            if report.executed {
                let mut attempt = 0;
                loop {
                    match self.drop_partition(&name).await {
                        Ok(()) => break,
                        Err(e) if attempt < DETACH_ATTEMPTS && lock_not_granted(&e) => {
                            attempt += 1;
                            progress(&format!("{name}: lock not granted, trying again ({attempt}/{DETACH_ATTEMPTS})"));
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            if report.executed {
                progress(&format!("{name}: dropped ({rows} rows)"));
            } else {
                progress(&format!("{name}: would be dropped ({rows} rows)"));
                report.keys += rows;
            }
            report.rows += rows;
            report.partitions.push(DroppedPartition {
                name,
                from: month_start(month),
                to: month_start(month + 1),
                rows,
            });
        }

        // 3. Keys whose rows went with a partition (this run's, or an
        //    earlier run's that was interrupted after its DROP): one pass
        //    over the keys in key order, a page at a time; a key older than
        //    the cutoff goes only if no row has it.
        if report.executed {
            let sql = "WITH page AS (SELECT organization_id, request_id, occurred_at FROM usage_record_keys \
                         WHERE (organization_id, request_id) > ($1, $2) \
                         ORDER BY organization_id, request_id LIMIT $3), \
                       del AS (DELETE FROM usage_record_keys k USING page p \
                         WHERE k.organization_id = p.organization_id AND k.request_id = p.request_id \
                         AND p.occurred_at < $4 AND NOT EXISTS (SELECT 1 FROM usage_records r \
                           WHERE r.organization_id = p.organization_id AND r.occurred_at = p.occurred_at \
                           AND r.request_id = p.request_id) RETURNING 1), \
                       last AS (SELECT organization_id, request_id FROM page \
                         ORDER BY organization_id DESC, request_id DESC LIMIT 1) \
                       SELECT (SELECT count(*) FROM del), (SELECT organization_id FROM last), \
                         (SELECT request_id FROM last)";
            let (mut org, mut id) = (String::new(), Uuid::nil());
            loop {
                let row = db
                    .query_one_raw(Statement::from_sql_and_values(
                        backend,
                        sql,
                        [Value::from(org.clone()), Value::Uuid(Some(id)), Value::BigInt(Some(BATCH)), cutoff.clone()],
                    ))
                    .await?;
                let Some(row) = row else { break };
                report.keys += row.try_get_by_index::<i64>(0)? as u64;
                let last: Option<String> = row.try_get_by_index(1)?;
                let Some(last) = last else { break };
                org = last;
                id = row.try_get_by_index::<Option<Uuid>>(2)?.unwrap_or(Uuid::max());
                progress(&format!("usage_record_keys: {} keys removed so far", report.keys));
            }
        }
        Ok(())
    }

    /// Detaches and drops one partition in one transaction.
    async fn drop_partition(&self, name: &str) -> Result<(), Error> {
        let txn = self.connection().begin().await?;
        txn.execute_unprepared(&format!("SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")).await?;
        txn.execute_unprepared(&format!("ALTER TABLE usage_records DETACH PARTITION {name}")).await?;
        txn.execute_unprepared(&format!("DROP TABLE {name}")).await?;
        txn.commit().await?;
        Ok(())
    }

    /// `count(*)` of `sql` (`$1`: `arg`) without the pool's statement
    /// timeout, which bounds the writer's statements, not a count of a
    /// month of rows.
    async fn count_unbounded(&self, sql: &str, arg: Option<&Value>) -> Result<u64, Error> {
        let txn = self.connection().begin().await?;
        txn.execute_unprepared("SET LOCAL statement_timeout = 0").await?;
        let values: Vec<Value> = arg.into_iter().cloned().collect();
        let row = txn.query_one_raw(Statement::from_sql_and_values(self.db_backend(), sql, values)).await?;
        txn.commit().await?;
        Ok(row.map(|row| row.try_get_by_index::<i64>(0)).transpose()?.unwrap_or(0) as u64)
    }

    async fn sqlite_retention(
        &self,
        report: &mut RetentionReport,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), Error> {
        // Stored timestamps are RFC 3339 UTC text with an optional fraction;
        // the cutoff without its `Z` sorts before every one of its second's
        // texts and after every earlier second's, so text order is time order.
        let text = crate::sqlite::time_text(report.cutoff);
        let cutoff = Value::from(text.trim_end_matches('Z').to_owned());
        let backend = self.db_backend();
        let db = self.connection();
        let mut org = String::new();
        loop {
            let next = db
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    "SELECT organization_id FROM usage_records WHERE organization_id > ? \
                     ORDER BY organization_id LIMIT 1",
                    [Value::from(org.clone())],
                ))
                .await?;
            let Some(next) = next else { break };
            org = next.try_get_by_index(0)?;
            let args = [Value::from(org.clone()), cutoff.clone()];
            if report.executed {
                let mut removed = 0u64;
                loop {
                    let done = db
                        .execute_raw(Statement::from_sql_and_values(
                            backend,
                            "DELETE FROM usage_records WHERE rowid IN (SELECT rowid FROM usage_records \
                             WHERE organization_id = ? AND occurred_at < ? LIMIT ?)",
                            [args[0].clone(), args[1].clone(), Value::BigInt(Some(BATCH))],
                        ))
                        .await?
                        .rows_affected();
                    removed += done;
                    if done == 0 {
                        break;
                    }
                }
                report.rows += removed;
                if removed > 0 {
                    progress(&format!("organization {org}: {removed} rows removed"));
                }
            } else {
                let n = db
                    .query_one_raw(Statement::from_sql_and_values(
                        backend,
                        "SELECT count(*) FROM usage_records WHERE organization_id = ? AND occurred_at < ?",
                        args,
                    ))
                    .await?
                    .map(|row| row.try_get_by_index::<i64>(0))
                    .transpose()?
                    .unwrap_or(0) as u64;
                report.rows += n;
                if n > 0 {
                    progress(&format!("organization {org}: {n} rows older than the cutoff"));
                }
            }
        }
        Ok(())
    }
}

/// The month of a partition named `usage_records_yYYYYmMM`.
fn parse_partition_name(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("usage_records_y")?;
    let (year, month) = rest.split_once('m')?;
    if year.len() != 4 || month.len() != 2 {
        return None;
    }
    let (year, month): (i32, i32) = (year.parse().ok()?, month.parse().ok()?);
    let index = year * 12 + month - 1;
    ((1..=12).contains(&month) && partition_name(index) == name).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ingestds_own_partition_names_are_recognised() {
        assert_eq!(parse_partition_name("usage_records_y2026m12"), Some(2026 * 12 + 11));
        assert_eq!(parse_partition_name("usage_records_y2026m01"), Some(2026 * 12));
        for other in [
            "usage_records_default",
            "usage_records_y2026m13",
            "usage_records_y2026m00",
            "usage_records_y2026m1",
            "usage_records_y26m01",
            "usage_records_y2026m01_old",
            "usage_records_y+026m01",
        ] {
            assert_eq!(parse_partition_name(other), None, "{other}");
        }
    }
}
