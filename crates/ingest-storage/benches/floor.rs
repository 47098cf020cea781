//! The writer against each database's own bulk path on the same rows: the
//! storage floor (issue 18, docs/benchmarks.md "Storage floor").
//!
//! `cargo bench -p ingest-storage --bench floor` (or `cargo xtask bench floor`).
//! Each round makes fresh rows (time-ordered ids, as the sources derive
//! them), then in one run on fresh databases with the same schema, indexes
//! and durability settings (SQLite WAL with `synchronous = FULL`):
//!
//! - **SQLite floor**: one prepared single-row `INSERT` stepped in a loop in
//!   one transaction through the SQLite C API (rusqlite), written here
//!   without any of the product's code.
//! - **PostgreSQL floor**: binary `COPY` straight into `usage_records` (the
//!   partitioned table, routing included; not its key table) of the very
//!   rows the writer stored (taken out with `COPY (SELECT …) TO STDOUT
//!   (FORMAT binary)`), commit included.
//! - **Writer**: `WriterHandle::store` with 1000-record submissions from 8
//!   callers, until every submission is answered.
//! - **Writer without prices** (the pricing A/B, issue 19): the same on a
//!   database whose `prices` table is empty, so every record is unpriced
//!   after a memo lookup; same rows, same round.
//!
//! It prints rows/s of each and their ratios per round, then the medians.
//! `XTASK_BENCH_ROWS` (default 100000) and `XTASK_BENCH_ROUNDS` (default 3)
//! size it; PostgreSQL needs `INGESTD_TEST_POSTGRES_URL` or a local server
//! (the bench fails rather than skip when it cannot reach one).

#![allow(clippy::print_stdout)]

use std::time::Instant;

use futures::StreamExt;
use ingest_storage::{Writer, WriterConfig};
use model::{RecordSink, Source, UsageRecord};
use sea_orm::sqlx::postgres::PgPoolCopyExt;
use testkit::{Kind, TestDatabase, record};
use time::format_description::well_known::Rfc3339;

const CALLERS: usize = 8;
const PER_SUBMISSION: usize = 1000;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let rows = env_number("XTASK_BENCH_ROWS", 100_000);
    let rounds = env_number("XTASK_BENCH_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "storage floor: {rows} rows per run, {rounds} rounds, writer = {CALLERS} callers x {PER_SUBMISSION}-record submissions"
    );
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let (floor_name, target) = match kind {
            Kind::Sqlite => ("prepared INSERT loop", 0.8),
            Kind::Postgres => ("binary COPY", 0.6),
        };
        let mut ratios = Vec::new();
        let mut floors = Vec::new();
        let mut writers = Vec::new();
        let mut pricing = Vec::new();
        for round in 1..=rounds {
            let records: Vec<UsageRecord> = (0..rows).map(|i| record("floor-org", i as u64)).collect();
            let (floor, writer, unpriced) = rt.block_on(async {
                // Alternate which writer run goes first, so drift during a
                // round does not favour one.
                let both = async |records: Vec<UsageRecord>| {
                    if round % 2 == 0 {
                        let (unpriced, _) = writer_run(kind, records.clone(), false).await;
                        let (writer, db) = writer_run(kind, records, true).await;
                        (writer, unpriced, db)
                    } else {
                        let (writer, db) = writer_run(kind, records.clone(), true).await;
                        let (unpriced, _) = writer_run(kind, records, false).await;
                        (writer, unpriced, db)
                    }
                };
                match kind {
                    Kind::Sqlite => {
                        let floor = sqlite_floor(&records).await;
                        let (writer, unpriced, _db) = both(records).await;
                        (floor, writer, unpriced)
                    }
                    Kind::Postgres => {
                        let (writer, unpriced, db) = both(records).await;
                        (postgres_floor(&db).await, writer, unpriced)
                    }
                }
            });
            let ratio = writer / floor;
            println!(
                "{kind:?} round {round}: floor ({floor_name}) {:.1}k rows/s, writer {:.1}k rows/s, writer/floor {ratio:.2}; \
                 writer without prices {:.1}k rows/s, with/without {:.3}",
                floor / 1e3,
                writer / 1e3,
                unpriced / 1e3,
                writer / unpriced
            );
            floors.push(floor);
            writers.push(writer);
            ratios.push(ratio);
            pricing.push(writer / unpriced);
        }
        println!(
            "{kind:?} median: floor {:.1}k rows/s, writer {:.1}k rows/s, writer/floor {:.2} (target >= {target}); \
             writer with/without prices {:.3} (target >= 0.95)",
            median(&mut floors) / 1e3,
            median(&mut writers) / 1e3,
            median(&mut ratios),
            median(&mut pricing)
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rows/s of the writer storing `records` (on a database without prices
/// unless `priced`); returns its database too.
async fn writer_run(kind: Kind, records: Vec<UsageRecord>, priced: bool) -> (f64, TestDatabase) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    if !priced {
        use sea_orm::ConnectionTrait;
        for sql in ["DELETE FROM prices", "UPDATE price_book SET generation = generation + 1"] {
            store.connection().execute_unprepared(sql).await.expect(sql);
        }
        store.refresh_prices().await.expect("refresh");
    }
    if kind == Kind::Sqlite {
        // Both start from a checkpointed file: the catalog loaded by the
        // migration (or its removal) is not checkpointed inside the run.
        use sea_orm::ConnectionTrait;
        store.connection().execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await.expect("checkpoint");
    }
    let writer = Writer::spawn(store, WriterConfig::default());
    let n = records.len();
    let mut work: Vec<Vec<Vec<UsageRecord>>> = (0..CALLERS).map(|_| Vec::new()).collect();
    let mut records = records.into_iter();
    let mut caller = 0;
    loop {
        let submission: Vec<UsageRecord> = records.by_ref().take(PER_SUBMISSION).collect();
        if submission.is_empty() {
            break;
        }
        work[caller % CALLERS].push(submission);
        caller += 1;
    }
    let start = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|subs| {
            let sink = writer.handle();
            tokio::spawn(async move {
                for sub in subs {
                    sink.store(sub, Source::Http).await.expect("store");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller");
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    writer.shutdown().await;
    assert_eq!(db.store().await.count_records(Some("floor-org")).await.expect("count"), n as u64);
    (rate, db)
}

/// Rows/s of SQLite's own bulk path: one prepared single-row `INSERT`
/// stepped in a loop inside one transaction, on a fresh migrated database.
async fn sqlite_floor(records: &[UsageRecord]) -> f64 {
    let db = TestDatabase::new(Kind::Sqlite).await;
    drop(db.store().await);
    let path = db.config.url.trim_start_matches("sqlite://").trim_end_matches("?mode=rwc").to_owned();
    let mut conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA temp_store = memory; PRAGMA cache_size = -65536;",
    )
    .expect("pragmas");
    let received_at = time::OffsetDateTime::now_utc().format(&Rfc3339).expect("format");
    let start = Instant::now();
    let txn = conn.transaction().expect("begin");
    {
        let mut insert = txn
            .prepare(
                "INSERT INTO usage_records (organization_id, request_id, project_id, user_id, provider, model_name, \
                 model_version, context_window, prompt_tokens, completion_tokens, total_tokens, cached_tokens, \
                 reasoning_tokens, latency_ms, time_to_first_token_ms, tags, metadata, occurred_at, received_at, \
                 source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .expect("prepare");
        for r in records {
            insert
                .execute(rusqlite::params![
                    r.organization_id,
                    r.request_id.hyphenated().to_string(),
                    r.project_id,
                    r.user_id,
                    r.provider,
                    r.model.name,
                    r.model.version,
                    r.model.context_window.map(|n| n as i64),
                    r.usage.prompt_tokens as i64,
                    r.usage.completion_tokens as i64,
                    r.usage.total_tokens as i64,
                    r.usage.cached_tokens.map(|n| n as i64),
                    r.usage.reasoning_tokens.map(|n| n as i64),
                    r.performance.latency_ms,
                    r.performance.time_to_first_token_ms,
                    serde_json::Value::from(r.tags.clone()).to_string(),
                    r.metadata.clone().map(|m| serde_json::Value::Object(m).to_string()),
                    r.timestamp.format(&Rfc3339).expect("format"),
                    received_at,
                    "http",
                ])
                .expect("insert");
        }
    }
    txn.commit().expect("commit");
    records.len() as f64 / start.elapsed().as_secs_f64()
}

/// Rows/s of PostgreSQL's own bulk path: binary `COPY` of the rows the
/// writer stored in `source` straight into a fresh migrated database.
async fn postgres_floor(source: &TestDatabase) -> f64 {
    let from = sea_orm::sqlx::PgPool::connect(&source.config.url).await.expect("connect");
    let mut out = from.acquire().await.expect("acquire");
    let mut stream =
        out.copy_out_raw("COPY (SELECT * FROM usage_records) TO STDOUT (FORMAT binary)").await.expect("copy out");
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.expect("copy out chunk"));
    }
    drop(stream);
    drop(out);
    let rows: i64 =
        sea_orm::sqlx::query_scalar("SELECT count(*) FROM usage_records").fetch_one(&from).await.expect("count");

    let db = TestDatabase::new(Kind::Postgres).await;
    drop(db.store().await);
    let to = sea_orm::sqlx::PgPool::connect(&db.config.url).await.expect("connect");
    let start = Instant::now();
    let mut copy = to.copy_in_raw("COPY usage_records FROM STDIN (FORMAT binary)").await.expect("copy in");
    // In chunks, as a client streaming its rows would send them.
    for chunk in data.chunks(1 << 16) {
        copy.send(chunk).await.expect("copy in chunk");
    }
    let copied = copy.finish().await.expect("copy commit");
    let rate = copied as f64 / start.elapsed().as_secs_f64();
    assert_eq!(copied, rows as u64);
    rate
}
