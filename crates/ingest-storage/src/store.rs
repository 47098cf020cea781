use std::collections::{HashMap, HashSet};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use model::{DeadLetter, DeadLetterSink, SinkError, Source, UsageRecord};
use sea_orm::sea_query::{
    Expr, ExprTrait, OnConflict, PostgresQueryBuilder, Query, QueryStatementWriter, SqliteQueryBuilder,
};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous as SqlxSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait, Value,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::schema::{DeadLetters, UsageRecords};
use crate::{DatabaseConfig, Error, SqliteSynchronous};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool to the ingestd database.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    backend: Backend,
    /// SQLite: the writer's own connection (see `sqlite.rs`).
    bulk: Option<crate::sqlite::Bulk>,
}

/// Ready while the database answers a ping.
impl model::Component for Store {
    fn readiness(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = model::Readiness> + Send + '_>> {
        Box::pin(async move { self.ping().await.map(|()| None).map_err(|e| error_chain(&e)) })
    }
}

/// `e` and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

impl DeadLetterSink for Store {
    async fn put(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        self.dead_letter(letter).await.map_err(|e| SinkError::Unavailable(Box::new(e)))
    }
}

/// A dead letter as stored, for `ingestd dlq list|replay`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub id: Uuid,
    pub letter: DeadLetter,
    pub first_seen_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    /// How many times the message was dead-lettered (redeliveries, replays).
    pub delivery_count: i64,
    /// When a replay stored its records; replayed letters are kept, marked.
    pub replayed_at: Option<OffsetDateTime>,
}

/// Which dead letters to list.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterFilter {
    pub source: Option<Source>,
    /// Only these ids (all when empty).
    pub ids: Vec<Uuid>,
    /// Also those already replayed.
    pub include_replayed: bool,
    /// At most this many, oldest first (no limit when `None`).
    pub limit: Option<u64>,
}

/// Rows per INSERT statement of PostgreSQL's isolating commit: it allows
/// 65535 bound parameters; each row binds 20.
const ISOLATING_CHUNK_ROWS: usize = 2_500;

/// Identity of a stored record.
pub(crate) type Key = (String, Uuid);

/// What one commit did with the records it was given: those stored now, and
/// those the database refused for their data (and why). The rest were
/// already stored (duplicates).
#[derive(Debug, Default)]
pub(crate) struct Committed {
    pub(crate) inserted: HashSet<Key>,
    pub(crate) refused: HashMap<Key, String>,
}

impl Store {
    /// Opens a pool. SQLite gets WAL, the configured `synchronous` level and a
    /// busy timeout on every connection.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, Error> {
        let url = config.url.as_str();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::UnsupportedUrl { url: url.to_owned() });
        };
        let busy = Duration::from_millis(config.busy_timeout_ms);
        let mut opts = ConnectOptions::new(url);
        opts.max_connections(Ord::max(config.max_connections, 1))
            .min_connections(1)
            .acquire_timeout(busy)
            .connect_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        if backend == Backend::Sqlite {
            let sync = match config.sqlite_synchronous {
                SqliteSynchronous::Off => SqlxSynchronous::Off,
                SqliteSynchronous::Normal => SqlxSynchronous::Normal,
                SqliteSynchronous::Full => SqlxSynchronous::Full,
            };
            opts.map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(sync)
                    .busy_timeout(busy)
                    // Multi-row `INSERT … ON CONFLICT` in a transaction keeps a
                    // statement journal; in a temporary file that costs a
                    // write(2) per page (≈10 % of commit time when profiled).
                    .pragma("temp_store", "memory")
                    // 64 MiB page cache per connection (SQLite's default is 2 MiB).
                    .pragma("cache_size", "-65536")
            });
        }
        if backend == Backend::Postgres {
            // Every statement is bounded, so a commit stuck on a lock (an
            // operator's `LOCK TABLE`, a long transaction elsewhere) ends in
            // an error — a 503, nothing committed — instead of holding its
            // callers forever. Migrations lift the bound for themselves.
            let limit = format!("{}ms", Ord::max(config.busy_timeout_ms, 1));
            opts.map_sqlx_postgres_opts(move |o| o.options([("statement_timeout", limit.as_str())]));
        }
        let db = Database::connect(opts).await.map_err(Error::Connect)?;
        // After the pool, which creates the file (`mode=rwc`).
        let bulk = match backend {
            Backend::Sqlite => Some(crate::sqlite::Bulk::open(config)?),
            Backend::Postgres => None,
        };
        Ok(Store { db, backend, bulk })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), Error> {
        match self.backend {
            Backend::Postgres => {
                // Replicas starting together take turns (the migrations run
                // in one transaction under an advisory lock): without it two
                // of them create the same table and one fails to start.
                let txn = self.db.begin().await?;
                // Migrations may take long on a large table (and wait for
                // the advisory lock): no statement timeout for them.
                txn.execute_unprepared("SET LOCAL statement_timeout = 0").await?;
                txn.execute_unprepared("SELECT pg_advisory_xact_lock(7283910056)").await?;
                Migrator::up(&txn, None).await.map_err(Error::Migrate)?;
                txn.commit().await?;
            }
            Backend::Sqlite => {
                Migrator::up(&self.db, None).await.map_err(Error::Migrate)?;
                self.refresh_sqlite_schema().await?;
            }
        }
        Ok(())
    }

    /// A pooled SQLite connection that read the schema before a migration
    /// keeps the old one until its next statement runs, and preparing an
    /// upsert against it fails ("ON CONFLICT clause does not match any
    /// PRIMARY KEY or UNIQUE constraint": the new unique index is unknown to
    /// it). One statement on every idle connection makes each reload it.
    async fn refresh_sqlite_schema(&self) -> Result<(), Error> {
        let pool = self.db.get_sqlite_connection_pool();
        let mut held = Vec::new();
        while let Some(mut conn) = pool.try_acquire() {
            sea_orm::sqlx::query("SELECT count(*) FROM sqlite_master")
                .execute(&mut *conn)
                .await
                .map_err(|e| Error::Database(sea_orm::DbErr::Custom(format!("refreshing the schema: {e}"))))?;
            held.push(conn);
        }
        Ok(())
    }

    /// Names of migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, Error> {
        let pending = Migrator::get_pending_migrations(&self.db).await.map_err(Error::Migrate)?;
        Ok(pending.iter().map(|m| m.name().to_owned()).collect())
    }

    /// Whether the database answers (for readiness).
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(Error::Database)
    }

    /// The number of stored records, optionally of one organization.
    pub async fn count_records(&self, organization_id: Option<&str>) -> Result<u64, Error> {
        let mut q = Query::select();
        q.expr(Expr::col(UsageRecords::OrganizationId).count()).from(UsageRecords::Table);
        if let Some(org) = organization_id {
            q.and_where(Expr::col(UsageRecords::OrganizationId).eq(org));
        }
        let row = self.db.query_one_raw(self.build(&q)).await?;
        let n: i64 = match row {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        Ok(n as u64)
    }

    /// Inserts the records of one commit in one transaction, ignoring those
    /// already stored.
    ///
    /// SQLite: one prepared single-row `INSERT` stepped per record on the
    /// writer's own connection (`sqlite.rs`), which also isolates a record
    /// the database refuses for its data.
    ///
    /// PostgreSQL: one prepared `INSERT … SELECT … FROM UNNEST($1, …)` with
    /// one array per column, whatever the batch size: one statement to parse
    /// and plan instead of a multi-row `VALUES` per 2,500 rows with 20
    /// parameters each (docs/benchmarks.md, "Storage floor"). The common
    /// case, no conflict, is learnt from the affected-row count alone; only
    /// when some rows already existed is the transaction rolled back and
    /// redone with `RETURNING`, to learn which. Any failure fails the whole
    /// transaction (the writer then calls
    /// [`insert_isolating`](Self::insert_isolating)).
    ///
    /// `records` must not repeat a key (the writer removes repeats first).
    pub(crate) async fn insert_new(
        &self,
        records: &[(&UsageRecord, Source)],
        received_at: OffsetDateTime,
    ) -> Result<Committed, Error> {
        if let Some(bulk) = &self.bulk {
            return bulk.insert(sqlite_rows(records, received_at)).await;
        }
        let pool = self.db.get_postgres_connection_pool();
        let columns = PgColumns::new(records);
        let mut txn = pool.begin().await.map_err(db_err)?;
        let affected = columns.insert(received_at, false).execute(&mut *txn).await.map_err(db_err)?.rows_affected();
        if affected == records.len() as u64 {
            txn.commit().await.map_err(db_err)?;
            let inserted = records.iter().map(|(r, _)| (r.organization_id.clone(), r.request_id)).collect();
            return Ok(Committed { inserted, refused: HashMap::new() });
        }
        txn.rollback().await.map_err(db_err)?;

        let mut txn = pool.begin().await.map_err(db_err)?;
        let rows: Vec<(String, Uuid)> = columns
            .insert(received_at, true)
            .fetch_all(&mut *txn)
            .await
            .map_err(db_err)?
            .iter()
            .map(|row| {
                use sea_orm::sqlx::Row as _;
                Ok((row.try_get(0)?, row.try_get(1)?))
            })
            .collect::<Result<_, sea_orm::sqlx::Error>>()
            .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        Ok(Committed { inserted: rows.into_iter().collect(), refused: HashMap::new() })
    }

    /// [`insert_new`](Self::insert_new) after it failed while the database
    /// still answers: finds the records the database refuses and commits
    /// all the others, in one transaction. Each chunk is tried under a
    /// savepoint; a chunk the database refuses for its *data* (a data
    /// exception or a constraint) is rolled back to the savepoint and split
    /// in halves, down to single records, which are then refused. O(k·log n)
    /// statements for k refused records; the usual path never comes here.
    /// Any other failure fails the whole transaction: nothing committed.
    ///
    /// Returns the keys inserted now and, for each refused key, why.
    pub(crate) async fn insert_isolating(
        &self,
        records: &[(&UsageRecord, Source)],
        received_at: OffsetDateTime,
    ) -> Result<Committed, Error> {
        if let Some(bulk) = &self.bulk {
            // Row by row already: a refused row never failed the others.
            return bulk.insert(sqlite_rows(records, received_at)).await;
        }
        let txn = self.db.begin().await?;
        if self.backend == Backend::Postgres {
            // A deferred constraint would fail only at COMMIT, outside the
            // savepoints that isolate it.
            txn.execute_unprepared("SET CONSTRAINTS ALL IMMEDIATE").await?;
        }
        let mut inserted = HashSet::with_capacity(records.len());
        let mut refused = HashMap::new();
        let step = ISOLATING_CHUNK_ROWS;
        // Ranges still to try, last first.
        let mut todo: Vec<std::ops::Range<usize>> =
            (0..records.len()).step_by(step).map(|at| at..(at + step).min(records.len())).rev().collect();
        while let Some(range) = todo.pop() {
            let chunk = &records[range.clone()];
            let savepoint = txn.begin().await?;
            match savepoint.query_all_raw(self.insert_statement(chunk, received_at, true)).await {
                Ok(rows) => {
                    savepoint.commit().await?;
                    for row in rows {
                        inserted.insert((row.try_get_by_index(0)?, self.get_uuid(&row, 1)?));
                    }
                }
                Err(e) => {
                    savepoint.rollback().await?;
                    let Some(reason) = refusal(self.backend, &e) else { return Err(e.into()) };
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
        txn.commit().await?;
        Ok(Committed { inserted, refused })
    }

    fn insert_statement(
        &self,
        chunk: &[(&UsageRecord, Source)],
        received_at: OffsetDateTime,
        returning: bool,
    ) -> Statement {
        let mut insert = Query::insert();
        insert.into_table(UsageRecords::Table).columns(UsageRecords::COLUMNS);
        let received_at = self.timestamp(received_at);
        for (record, source) in chunk {
            insert.values_panic(self.row_values(record, *source, received_at.clone()));
        }
        insert.on_conflict(
            OnConflict::columns([UsageRecords::OrganizationId, UsageRecords::RequestId]).do_nothing().to_owned(),
        );
        if returning {
            insert.returning(Query::returning().columns([UsageRecords::OrganizationId, UsageRecords::RequestId]));
        }
        self.build(&insert)
    }

    fn row_values(&self, r: &UsageRecord, source: Source, received_at: Value) -> [sea_orm::sea_query::SimpleExpr; 20] {
        let count = |n: u64| Value::BigInt(Some(n as i64));
        let opt_count = |n: Option<u64>| Value::BigInt(n.map(|n| n as i64));
        let tags = serde_json::Value::from(r.tags.clone());
        let metadata = r.metadata.clone().map(serde_json::Value::Object);
        [
            r.organization_id.clone().into(),
            self.uuid(r.request_id).into(),
            r.project_id.clone().into(),
            r.user_id.clone().into(),
            r.provider.clone().into(),
            r.model.name.clone().into(),
            r.model.version.clone().into(),
            opt_count(r.model.context_window).into(),
            count(r.usage.prompt_tokens).into(),
            count(r.usage.completion_tokens).into(),
            count(r.usage.total_tokens).into(),
            opt_count(r.usage.cached_tokens).into(),
            opt_count(r.usage.reasoning_tokens).into(),
            r.performance.latency_ms.into(),
            r.performance.time_to_first_token_ms.into(),
            self.json(Some(tags)).into(),
            self.json(metadata).into(),
            self.timestamp(r.timestamp).into(),
            received_at.into(),
            source.as_str().into(),
        ]
    }

    /// UUIDs: `uuid` on PostgreSQL, canonical lower-case text on SQLite.
    pub(crate) fn uuid(&self, id: Uuid) -> Value {
        match self.backend {
            Backend::Postgres => Value::Uuid(Some(id)),
            Backend::Sqlite => Value::String(Some(id.hyphenated().to_string())),
        }
    }

    /// Timestamps: `timestamptz` on PostgreSQL, RFC 3339 UTC text on SQLite.
    pub(crate) fn timestamp(&self, t: OffsetDateTime) -> Value {
        match self.backend {
            Backend::Postgres => Value::TimeDateTimeWithTimeZone(Some(t)),
            Backend::Sqlite => Value::String(Some(crate::sqlite::time_text(t))),
        }
    }

    /// JSON: `jsonb` on PostgreSQL, JSON text on SQLite.
    fn json(&self, v: Option<serde_json::Value>) -> Value {
        match self.backend {
            Backend::Postgres => Value::Json(v.map(Box::new)),
            Backend::Sqlite => Value::String(v.map(|v| v.to_string())),
        }
    }

    pub(crate) fn build(&self, stmt: &impl QueryStatementWriter) -> Statement {
        let (sql, values) = match self.backend {
            Backend::Postgres => stmt.build(PostgresQueryBuilder),
            Backend::Sqlite => stmt.build(SqliteQueryBuilder),
        };
        Statement::from_sql_and_values(self.db_backend(), sql, values)
    }

    /// A UUID column of `row`, whichever backend.
    pub(crate) fn get_uuid(&self, row: &sea_orm::QueryResult, i: usize) -> Result<Uuid, Error> {
        match self.backend {
            Backend::Postgres => Ok(row.try_get_by_index::<Uuid>(i)?),
            Backend::Sqlite => {
                let text: String = row.try_get_by_index(i)?;
                Ok(Uuid::try_parse(&text).map_err(|e| sea_orm::DbErr::Type(e.to_string()))?)
            }
        }
    }

    /// A nullable timestamp column of `row`, whichever backend.
    pub(crate) fn get_time(&self, row: &sea_orm::QueryResult, i: usize) -> Result<Option<OffsetDateTime>, Error> {
        match self.backend {
            Backend::Postgres => Ok(row.try_get_by_index::<Option<OffsetDateTime>>(i)?),
            Backend::Sqlite => {
                let text: Option<String> = row.try_get_by_index(i)?;
                text.map(|t| OffsetDateTime::parse(&t, &Rfc3339).map_err(|e| sea_orm::DbErr::Type(e.to_string())))
                    .transpose()
                    .map_err(Error::from)
            }
        }
    }

    fn db_backend(&self) -> DbBackend {
        match self.backend {
            Backend::Postgres => DbBackend::Postgres,
            Backend::Sqlite => DbBackend::Sqlite,
        }
    }

    /// Records a dead letter; the same message again bumps its delivery count.
    pub async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), Error> {
        let now = self.timestamp(OffsetDateTime::now_utc());
        let mut insert = Query::insert();
        insert
            .into_table(DeadLetters::Table)
            .columns([
                DeadLetters::Id,
                DeadLetters::Source,
                DeadLetters::MessageKey,
                DeadLetters::Payload,
                DeadLetters::Error,
                DeadLetters::FirstSeenAt,
                DeadLetters::LastSeenAt,
                DeadLetters::DeliveryCount,
            ])
            .values_panic([
                self.uuid(Uuid::now_v7()).into(),
                letter.source.as_str().into(),
                letter.message_key.clone().into(),
                Value::Bytes(Some(letter.payload.clone())).into(),
                letter.error.clone().into(),
                now.clone().into(),
                now.into(),
                1i64.into(),
            ])
            .on_conflict(
                OnConflict::columns([DeadLetters::Source, DeadLetters::MessageKey])
                    .update_columns([DeadLetters::LastSeenAt, DeadLetters::Error])
                    // Dead-lettered again: whatever a replay did, it is open again.
                    .value(DeadLetters::ReplayedAt, Expr::cust("NULL"))
                    .value(
                        DeadLetters::DeliveryCount,
                        Expr::col((DeadLetters::Table, DeadLetters::DeliveryCount)).add(1),
                    )
                    .to_owned(),
            );
        self.db.execute_raw(self.build(&insert)).await?;
        Ok(())
    }

    /// The number of dead letters, optionally from one source.
    pub async fn count_dead_letters(&self, source: Option<Source>) -> Result<u64, Error> {
        let mut q = Query::select();
        q.expr(Expr::col(DeadLetters::Id).count()).from(DeadLetters::Table);
        if let Some(source) = source {
            q.and_where(Expr::col(DeadLetters::Source).eq(source.as_str()));
        }
        let n: i64 = match self.db.query_one_raw(self.build(&q)).await? {
            Some(row) => row.try_get_by_index(0)?,
            None => 0,
        };
        Ok(n as u64)
    }

    /// Dead letters matching `filter`, oldest first.
    pub async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<StoredDeadLetter>, Error> {
        let mut q = Query::select();
        q.columns([
            DeadLetters::Id,
            DeadLetters::Source,
            DeadLetters::MessageKey,
            DeadLetters::Payload,
            DeadLetters::Error,
            DeadLetters::FirstSeenAt,
            DeadLetters::LastSeenAt,
            DeadLetters::DeliveryCount,
            DeadLetters::ReplayedAt,
        ])
        .from(DeadLetters::Table)
        .order_by(DeadLetters::FirstSeenAt, sea_orm::sea_query::Order::Asc)
        .order_by(DeadLetters::Id, sea_orm::sea_query::Order::Asc);
        if let Some(source) = filter.source {
            q.and_where(Expr::col(DeadLetters::Source).eq(source.as_str()));
        }
        if !filter.ids.is_empty() {
            q.and_where(Expr::col(DeadLetters::Id).is_in(filter.ids.iter().map(|id| self.uuid(*id))));
        }
        if !filter.include_replayed {
            q.and_where(Expr::col(DeadLetters::ReplayedAt).is_null());
        }
        if let Some(limit) = filter.limit {
            q.limit(limit);
        }
        let rows = self.db.query_all_raw(self.build(&q)).await?;
        rows.iter().map(|row| self.dead_letter_row(row)).collect()
    }

    fn dead_letter_row(&self, row: &sea_orm::QueryResult) -> Result<StoredDeadLetter, Error> {
        let source: String = row.try_get_by_index(1)?;
        let source = match source.as_str() {
            "http" => Source::Http,
            "nats" => Source::Nats,
            "redis" => Source::Redis,
            other => return Err(sea_orm::DbErr::Type(format!("unknown dead-letter source {other:?}")).into()),
        };
        let (id, first_seen_at, last_seen_at, replayed_at) = match self.backend {
            Backend::Postgres => (
                row.try_get_by_index::<Uuid>(0)?,
                row.try_get_by_index::<OffsetDateTime>(5)?,
                row.try_get_by_index::<OffsetDateTime>(6)?,
                row.try_get_by_index::<Option<OffsetDateTime>>(8)?,
            ),
            Backend::Sqlite => {
                let id: String = row.try_get_by_index(0)?;
                let time = |i: usize| -> Result<Option<OffsetDateTime>, Error> {
                    let text: Option<String> = row.try_get_by_index(i)?;
                    text.map(|t| OffsetDateTime::parse(&t, &Rfc3339).map_err(|e| sea_orm::DbErr::Type(e.to_string())))
                        .transpose()
                        .map_err(Error::from)
                };
                let missing = || Error::from(sea_orm::DbErr::Type("a dead letter without a timestamp".into()));
                (
                    Uuid::try_parse(&id).map_err(|e| sea_orm::DbErr::Type(e.to_string()))?,
                    time(5)?.ok_or_else(missing)?,
                    time(6)?.ok_or_else(missing)?,
                    time(8)?,
                )
            }
        };
        Ok(StoredDeadLetter {
            id,
            letter: DeadLetter {
                source,
                message_key: row.try_get_by_index(2)?,
                payload: row.try_get_by_index(3)?,
                error: row.try_get_by_index(4)?,
            },
            first_seen_at,
            last_seen_at,
            delivery_count: row.try_get_by_index(7)?,
            replayed_at,
        })
    }

    /// Marks a dead letter replayed (its records are stored); it is kept.
    pub async fn mark_replayed(&self, id: Uuid) -> Result<bool, Error> {
        let mut q = Query::update();
        q.table(DeadLetters::Table)
            .value(DeadLetters::ReplayedAt, self.timestamp(OffsetDateTime::now_utc()))
            .and_where(Expr::col(DeadLetters::Id).eq(self.uuid(id)));
        let result = self.db.execute_raw(self.build(&q)).await?;
        Ok(result.rows_affected() > 0)
    }

    /// Raw SQL access for tests and tooling.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// Why the database refused a statement *because of a value in it* —
/// PostgreSQL SQLSTATE class 22 (data exception: `invalid byte sequence`, a
/// value out of range, a string too long) and 23514 (a CHECK constraint);
/// SQLite TOOBIG, MISMATCH, and the CHECK and trigger (`RAISE(ABORT)`)
/// kinds of CONSTRAINT — or `None` for every other failure: a connection,
/// a lock, a serialization failure, and also NOT NULL, foreign-key and
/// unique violations, which mean the schema and ingestd disagree (a
/// migration half done, an operator's change), not that one record is bad:
/// those must stay retryable (503, nak), never become a refusal per record.
fn refusal(backend: Backend, e: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = e else { return None };
    let sea_orm::sqlx::Error::Database(db) = &**e else { return None };
    let code = db.code()?;
    let data = match backend {
        Backend::Postgres => code.starts_with("22") || code == "23514",
        Backend::Sqlite => code.parse::<i32>().is_ok_and(crate::sqlite::is_data_refusal),
    };
    data.then(|| format!("{} ({code})", db.message()))
}

/// The SQLite rows of one commit.
fn sqlite_rows(records: &[(&UsageRecord, Source)], received_at: OffsetDateTime) -> Vec<crate::sqlite::Row> {
    let received_at = crate::sqlite::time_text(received_at);
    records.iter().map(|(r, source)| crate::sqlite::Row::new(r, *source, &received_at)).collect()
}

/// An sqlx error as the crate's.
fn db_err(e: sea_orm::sqlx::Error) -> Error {
    Error::Database(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e))))
}

/// The `UNNEST` insert: columns in `schema::UsageRecords::COLUMNS` order,
/// `received_at` (the same for the whole commit) as `$19`.
macro_rules! pg_unnest_insert {
    () => {
        "INSERT INTO usage_records (organization_id, request_id, project_id, user_id, provider, model_name, \
         model_version, context_window, prompt_tokens, completion_tokens, total_tokens, cached_tokens, \
         reasoning_tokens, latency_ms, time_to_first_token_ms, tags, metadata, occurred_at, received_at, source) \
         SELECT o, r, p, u, pr, m, v, cw, pt, ct, tt, cat, rt, l, ttft, tg, md, oc, $19, s \
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::float8[], $15::float8[], \
         $16::jsonb[], $17::jsonb[], $18::timestamptz[], $20::text[]) \
         AS t(o, r, p, u, pr, m, v, cw, pt, ct, tt, cat, rt, l, ttft, tg, md, oc, s) \
         ON CONFLICT (organization_id, request_id) DO NOTHING"
    };
}
const PG_INSERT: &str = pg_unnest_insert!();
const PG_INSERT_RETURNING: &str = concat!(pg_unnest_insert!(), " RETURNING organization_id, request_id");

/// The records of one PostgreSQL commit, one array per column.
#[derive(Default)]
struct PgColumns {
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
}

impl PgColumns {
    fn new(records: &[(&UsageRecord, Source)]) -> Self {
        let mut c = PgColumns::default();
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
        }
        c
    }

    fn insert(
        &self,
        received_at: OffsetDateTime,
        returning: bool,
    ) -> sea_orm::sqlx::query::Query<'_, sea_orm::sqlx::Postgres, sea_orm::sqlx::postgres::PgArguments> {
        let sql = if returning { PG_INSERT_RETURNING } else { PG_INSERT };
        sea_orm::sqlx::query(sql)
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
    }
}
