//! SQLite's hot path: the writer's inserts through the SQLite C API
//! (rusqlite, on the `libsqlite3-sys` that sqlx links), on a connection of
//! their own.
//!
//! This is the one place ingestd bypasses SeaORM, and the benchmark is why
//! (`cargo xtask bench floor`, docs/benchmarks.md, "Storage floor"): SQLite's
//! own bulk path is one prepared single-row `INSERT` stepped in a loop inside
//! one transaction. Through sqlx every statement is a round trip to its
//! worker thread, so the writer built multi-row `VALUES` statements instead
//! (parsed anew for every chunk, with `RETURNING` only to learn conflicts)
//! and reached about half of that floor. Here the loop runs on a blocking
//! thread against one cached statement, and each step says on its own
//! whether its row was new (`changes() == 1`), a duplicate (`0`) or refused
//! for its data (the statement fails, the transaction goes on): one pass,
//! no rollback and redo, and the isolation of a refused record for free.
//!
//! Everything else on SQLite (migrations, reads, admin, dead letters, pings)
//! stays on the SeaORM pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::{Source, UsageRecord};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params_from_iter};
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::rollups::{RollupKey, Sums};
use crate::store::{Committed, Key};
use crate::{DatabaseConfig, Error, SqliteSynchronous};

/// The insert, with the columns in the migration's order.
const INSERT: &str = "INSERT INTO usage_records (organization_id, request_id, project_id, user_id, provider, \
    model_name, model_version, context_window, prompt_tokens, completion_tokens, total_tokens, cached_tokens, \
    reasoning_tokens, latency_ms, time_to_first_token_ms, tags, metadata, occurred_at, received_at, source, \
    cache_write_tokens, cost_nano_usd, price_id, pricing) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
    ?21, ?22, ?23, ?24) \
    ON CONFLICT (organization_id, request_id) DO NOTHING";

/// The rollup upsert (`rollups.rs`).
static UPSERT_ROLLUP: std::sync::LazyLock<String> = std::sync::LazyLock::new(crate::rollups::sqlite_upsert);

/// The writer's connection. The writer commits one batch at a time, so the
/// lock is never contended; it is there because a blocking thread borrows
/// the connection for each commit.
#[derive(Clone)]
pub(crate) struct Bulk {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Bulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulk").finish_non_exhaustive()
    }
}

/// One row, encoded as `Store` encodes SQLite rows (text UUIDs, RFC 3339
/// UTC text, JSON text), and its key.
pub(crate) struct Row {
    key: Key,
    values: [Value; 24],
    rollup: (RollupKey, Sums),
}

impl Bulk {
    /// Opens the database file of `config.url` with the pool's settings
    /// (WAL, `synchronous`, busy timeout, in-memory statement journal).
    /// An in-memory database is refused: this connection would not see it.
    pub(crate) fn open(config: &DatabaseConfig) -> Result<Self, Error> {
        let options = SqliteConnectOptions::from_str(&config.url)
            .map_err(|e| Error::Connect(sea_orm::DbErr::Custom(e.to_string())))?;
        let path: PathBuf = options.get_filename().to_owned();
        let name = path.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file:sqlx-in-memory") {
            return Err(Error::UnsupportedUrl { url: config.url.clone() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(Error::Sqlite)?;
        conn.busy_timeout(Duration::from_millis(config.busy_timeout_ms)).map_err(Error::Sqlite)?;
        let synchronous = match config.sqlite_synchronous {
            SqliteSynchronous::Off => "OFF",
            SqliteSynchronous::Normal => "NORMAL",
            SqliteSynchronous::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA temp_store = memory; PRAGMA cache_size = -65536;"
        ))
        .map_err(Error::Sqlite)?;
        Ok(Bulk { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Inserts `rows` in one transaction: each row is stored, found already
    /// stored (a duplicate: in neither set) or refused for its data (SQLite
    /// TOOBIG, MISMATCH, a CHECK or a trigger's `RAISE(ABORT)`) without
    /// affecting the others. Any other failure rolls the whole transaction
    /// back.
    pub(crate) async fn insert(&self, rows: Vec<Row>, rollups: bool) -> Result<Committed, Error> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            insert(&mut conn, rows, rollups)
        })
        .await
        .map_err(|e| Error::Database(sea_orm::DbErr::Custom(format!("the SQLite insert thread failed: {e}"))))?
    }
}

fn insert(conn: &mut Connection, rows: Vec<Row>, rollups: bool) -> Result<Committed, Error> {
    // IMMEDIATE: the write lock is taken (or waited for, up to the busy
    // timeout) before the first row, not found busy half-way through.
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::Sqlite)?;
    let mut committed = Committed { inserted: HashSet::with_capacity(rows.len()), refused: HashMap::new() };
    // The rollups of the rows new in this commit, one upsert per group.
    let mut groups: BTreeMap<RollupKey, Sums> = BTreeMap::new();
    {
        let mut statement = txn.prepare_cached(INSERT).map_err(Error::Sqlite)?;
        for Row { key, values, rollup: (group, sums) } in rows {
            match statement.execute(params_from_iter(values)) {
                Ok(0) => {}
                Ok(_) => {
                    committed.inserted.insert(key);
                    groups.entry(group).or_default().add(&sums);
                }
                Err(e) => match refusal(&e) {
                    Some(reason) => {
                        tracing::warn!(
                            organization_id = %key.0, request_id = %key.1, %reason,
                            "the database refused a record that passed validation"
                        );
                        committed.refused.insert(key, reason);
                    }
                    // The transaction rolls back when dropped.
                    None => return Err(Error::Sqlite(e)),
                },
            }
        }
    }
    if rollups && !groups.is_empty() {
        let mut upsert = txn.prepare_cached(&UPSERT_ROLLUP).map_err(Error::Sqlite)?;
        for (group, Sums(sums)) in groups {
            let RollupKey { organization_id, hour_start, provider, model, project, user } = group;
            let key = [
                Value::Text(organization_id),
                Value::Integer(hour_start),
                Value::Text(provider),
                Value::Text(model),
                Value::Text(project),
                Value::Text(user),
            ];
            upsert
                .execute(params_from_iter(key.into_iter().chain(sums.into_iter().map(Value::Integer))))
                .map_err(Error::Sqlite)?;
        }
    }
    txn.commit().map_err(Error::Sqlite)?;
    Ok(committed)
}

/// Why SQLite refused one row for its data, or `None` when the failure is
/// not the row's (see `store::refusal`, which classifies sqlx's errors the
/// same way).
fn refusal(e: &rusqlite::Error) -> Option<String> {
    let rusqlite::Error::SqliteFailure(failure, message) = e else { return None };
    let code = failure.extended_code;
    is_data_refusal(code).then(|| format!("{} ({code})", message.as_deref().unwrap_or("refused")))
}

/// Primary (low byte) or extended SQLite result codes that refuse a row for
/// its data: SQLITE_TOOBIG (18), SQLITE_MISMATCH (20),
/// SQLITE_CONSTRAINT_CHECK (275) and SQLITE_CONSTRAINT_TRIGGER (1811).
/// NOT NULL, foreign-key and unique violations are not among them: those
/// mean the schema and ingestd disagree, and must stay retryable.
pub(crate) fn is_data_refusal(code: i32) -> bool {
    matches!(code & 0xff, 18 | 20) || matches!(code, 275 | 1811)
}

impl Row {
    pub(crate) fn new(r: &UsageRecord, source: Source, received_at: &str) -> Self {
        let text = |s: &str| Value::Text(s.to_owned());
        let opt_text = |s: &Option<String>| s.as_ref().map_or(Value::Null, |s| Value::Text(s.clone()));
        let count = |n: u64| Value::Integer(n as i64);
        let opt_count = |n: Option<u64>| n.map_or(Value::Null, count);
        let opt_real = |n: Option<f64>| n.map_or(Value::Null, Value::Real);
        let tags = serde_json::Value::from(r.tags.clone()).to_string();
        let metadata =
            r.metadata.clone().map_or(Value::Null, |m| Value::Text(serde_json::Value::Object(m).to_string()));
        Row {
            rollup: (RollupKey::of(r), Sums::of(r)),
            key: (r.organization_id.clone(), r.request_id),
            values: [
                text(&r.organization_id),
                Value::Text(r.request_id.hyphenated().to_string()),
                opt_text(&r.project_id),
                opt_text(&r.user_id),
                text(&r.provider),
                text(&r.model.name),
                opt_text(&r.model.version),
                opt_count(r.model.context_window),
                count(r.usage.prompt_tokens),
                count(r.usage.completion_tokens),
                count(r.usage.total_tokens),
                opt_count(r.usage.cached_tokens),
                opt_count(r.usage.reasoning_tokens),
                opt_real(r.performance.latency_ms),
                opt_real(r.performance.time_to_first_token_ms),
                Value::Text(tags),
                metadata,
                Value::Text(occurred_text(r.timestamp)),
                text(received_at),
                text(source.as_str()),
                opt_count(r.usage.cache_write_tokens),
                r.cost.map_or(Value::Null, |c| Value::Integer(c.nano_usd)),
                r.cost.map_or(Value::Null, |c| Value::Integer(c.price_id)),
                text(if r.cost.is_some() { "priced" } else { "unpriced" }),
            ],
        }
    }
}

/// `occurred_at` as SQLite stores it (migration m0005): RFC 3339 in UTC
/// with exactly nine fraction digits, so that the text order of the column
/// is the order of the times.
pub(crate) fn occurred_text(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// A timestamp as SQLite stores it: RFC 3339 in UTC.
pub(crate) fn time_text(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurred_texts_sort_as_their_times() {
        use time::macros::datetime;
        let times = [
            datetime!(0999-01-01 0:00 UTC),
            datetime!(2026-12-06 17:00:05 UTC),
            datetime!(2026-12-06 17:00:05.000000001 UTC),
            datetime!(2026-12-06 17:00:05.25 UTC),
            datetime!(2026-12-06 17:00:05.5 UTC),
            datetime!(2026-12-06 18:00:05.75 +01:00),
            datetime!(2026-12-06 17:00:06 UTC),
        ];
        let texts: Vec<String> = times.iter().map(|t| occurred_text(*t)).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
        assert_eq!(texts[1], "2026-12-06T17:00:05.000000000Z");
        for (t, text) in times.iter().zip(&texts) {
            assert_eq!(OffsetDateTime::parse(text, &Rfc3339).unwrap(), *t);
        }
    }

    #[test]
    fn an_in_memory_database_is_refused() {
        for url in ["sqlite::memory:", "sqlite://:memory:"] {
            let config = DatabaseConfig { url: url.to_owned(), ..DatabaseConfig::default() };
            let e = Bulk::open(&config).expect_err(url);
            assert!(matches!(e, Error::UnsupportedUrl { .. }), "{url}: {e:?}");
        }
    }

    #[test]
    fn data_refusals_are_told_from_other_failures() {
        // TOOBIG, MISMATCH, CHECK, trigger RAISE(ABORT).
        for code in [18, 20, 275, 1811] {
            assert!(is_data_refusal(code), "{code}");
        }
        // BUSY, FULL, IOERR_FSYNC, NOT NULL (1299), UNIQUE (2067), PRIMARY KEY (1555), FOREIGN KEY (787).
        for code in [5, 13, 1034, 1299, 2067, 1555, 787] {
            assert!(!is_data_refusal(code), "{code}");
        }
    }
}
