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
    /// PostgreSQL: the monthly partitions known to exist (`postgres.rs`).
    partitions: crate::postgres::Partitions,
    /// The prices every submission is priced from (`prices.rs`).
    pub(crate) prices: crate::prices::Prices,
    /// Whether the writer keeps the rollups (always, but in the
    /// benchmark's A/B: [`Store::without_rollups`]).
    rollups: bool,
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
                    // SQLite's default page cache (2 MiB) per pooled connection:
                    // the pool reads and administers; the writer's
                    // own connection (`sqlite.rs`) has 64 MiB. Reads walk the
                    // pool's connections in turn, so each one's cache adds to
                    // the process's memory (a 1M-row export warmed 8 × 64 MiB).
                    .pragma("cache_size", "-2048")
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
        // Processes opening a new SQLite file together race to switch it to
        // WAL, and SQLite answers that race BUSY at once instead of waiting
        // out the busy timeout (its rule against deadlocks): try again,
        // within the busy timeout.
        let deadline = tokio::time::Instant::now() + busy;
        let db = loop {
            match Database::connect(opts.clone()).await {
                Ok(db) => break db,
                Err(e)
                    if backend == Backend::Sqlite && is_sqlite_busy(&e) && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(Error::Connect(e)),
            }
        };
        // After the pool, which creates the file (`mode=rwc`).
        let bulk = match backend {
            Backend::Sqlite => Some(crate::sqlite::Bulk::open(config)?),
            Backend::Postgres => None,
        };
        Ok(Store {
            db,
            backend,
            bulk,
            partitions: crate::postgres::Partitions::default(),
            prices: crate::prices::Prices::default(),
            rollups: true,
        })
    }

    /// This store with a writer that does not keep the rollups: for the
    /// read benchmark's A/B only (`cargo xtask bench read`). Summaries of
    /// what it stores disagree with the rows.
    #[doc(hidden)]
    pub fn without_rollups(mut self) -> Self {
        self.rollups = false;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations, loads the price catalog snapshot on the
    /// first start, and builds the price book.
    pub async fn migrate(&self) -> Result<(), Error> {
        self.apply_migrations().await?;
        self.load_catalog_snapshot().await?;
        self.refresh_prices().await?;
        Ok(())
    }

    async fn apply_migrations(&self) -> Result<(), Error> {
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
    /// PostgreSQL: one prepared statement per commit through sqlx
    /// (`postgres.rs`: the records as one array per column, keys into
    /// `usage_record_keys`, new records into their monthly partitions). Any
    /// failure fails the whole transaction (the writer then calls
    /// [`insert_isolating`](Self::insert_isolating)).
    ///
    /// `records` must not repeat a key (the writer removes repeats first).
    pub(crate) async fn insert_new(
        &self,
        records: &[(&UsageRecord, Source)],
        received_at: OffsetDateTime,
    ) -> Result<Committed, Error> {
        if let Some(bulk) = &self.bulk {
            return bulk.insert(sqlite_rows(records, received_at), self.rollups).await;
        }
        // A failed commit forgets the known partitions (one may have been dropped).
        crate::postgres::insert_new(
            self.db.get_postgres_connection_pool(),
            &self.partitions,
            records,
            received_at,
            self.rollups,
        )
        .await
        .inspect_err(|_| self.partitions.forget())
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
            return bulk.insert(sqlite_rows(records, received_at), self.rollups).await;
        }
        crate::postgres::insert_isolating(
            self.db.get_postgres_connection_pool(),
            &self.partitions,
            records,
            received_at,
            self.rollups,
        )
        .await
        .inspect_err(|_| self.partitions.forget())
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

    /// `usage_records.occurred_at` values: as [`timestamp`](Self::timestamp)
    /// on PostgreSQL, fixed-width text on SQLite (`sqlite::occurred_text`).
    pub(crate) fn occurred(&self, t: OffsetDateTime) -> Value {
        match self.backend {
            Backend::Postgres => Value::TimeDateTimeWithTimeZone(Some(t)),
            Backend::Sqlite => Value::String(Some(crate::sqlite::occurred_text(t))),
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

    pub(crate) fn db_backend(&self) -> DbBackend {
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
            "otlp" => Source::Otlp,
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
pub(crate) fn refusal_reason(backend: Backend, e: &Error) -> Option<String> {
    match e {
        Error::Database(e) => refusal(backend, e),
        _ => None,
    }
}

fn refusal(backend: Backend, e: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = e else { return None };
    let sea_orm::sqlx::Error::Database(db) = &**e else { return None };
    let code = db.code()?;
    let data = match backend {
        // A CHECK violation names its constraint; "no partition of
        // relation … found for row" shares the code but names none, and is
        // the schema's problem (a partition missing), not the record's.
        Backend::Postgres => code.starts_with("22") || (code == "23514" && db.constraint().is_some()),
        Backend::Sqlite => code.parse::<i32>().is_ok_and(crate::sqlite::is_data_refusal),
    };
    data.then(|| format!("{} ({code})", db.message()))
}

/// SQLITE_BUSY, or one of its extended codes.
fn is_sqlite_busy(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    let DbErr::Conn(RuntimeErr::SqlxError(e)) = e else { return false };
    let sea_orm::sqlx::Error::Database(db) = &**e else { return false };
    db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|code| code & 0xff == 5)
}

/// The SQLite rows of one commit.
fn sqlite_rows(records: &[(&UsageRecord, Source)], received_at: OffsetDateTime) -> Vec<crate::sqlite::Row> {
    let received_at = crate::sqlite::time_text(received_at);
    records.iter().map(|(r, source)| crate::sqlite::Row::new(r, *source, &received_at)).collect()
}
