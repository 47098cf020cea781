//! Group-commit writer throughput, in rows/s.
//!
//! `cargo bench -p ingest-storage --bench writer` (or `cargo xtask bench writer`).
//! Scenarios: 64 concurrent callers submitting 1 record each, 8 callers
//! submitting 1000-record submissions, and the latter with random (v4)
//! instead of time-ordered (v7) ids, on SQLite (`synchronous=FULL`) and on
//! PostgreSQL (needs `INGESTD_TEST_POSTGRES_URL` or a local server; the bench
//! fails rather than skip when it cannot reach one).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ingest_storage::{Writer, WriterConfig};
use model::{RecordSink, Source, UsageRecord};
use testkit::{Kind, TestDatabase, record};
use uuid::Uuid;

struct Scenario {
    name: &'static str,
    callers: usize,
    per_submission: usize,
    /// Submissions per caller per iteration.
    rounds: usize,
    random_ids: bool,
    /// False: the database holds no prices, so every record is unpriced
    /// after a memo lookup — the reference for what pricing costs (A/B).
    priced: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "1-record x64 callers",
        callers: 64,
        per_submission: 1,
        rounds: 50,
        random_ids: false,
        priced: true,
    },
    Scenario {
        name: "1-record x64 callers, no prices",
        callers: 64,
        per_submission: 1,
        rounds: 50,
        random_ids: false,
        priced: false,
    },
    Scenario {
        name: "1000-record x8 callers",
        callers: 8,
        per_submission: 1000,
        rounds: 5,
        random_ids: false,
        priced: true,
    },
    Scenario {
        name: "1000-record x8 callers, no prices",
        callers: 8,
        per_submission: 1000,
        rounds: 5,
        random_ids: false,
        priced: false,
    },
    Scenario {
        name: "1000-record x8 callers, v4 ids",
        callers: 8,
        per_submission: 1000,
        rounds: 5,
        random_ids: true,
        priced: true,
    },
];

/// Removes every price, so the writer's pricing finds nothing.
async fn without_prices(store: &ingest_storage::Store) {
    use sea_orm::ConnectionTrait;
    let db = store.connection();
    for sql in ["DELETE FROM prices", "UPDATE price_book SET generation = generation + 1"] {
        db.execute_unprepared(sql).await.expect(sql);
    }
    store.refresh_prices().await.expect("refresh");
    assert!(store.price_book().generation() > 0);
}

fn records(n: usize, random_ids: bool) -> Vec<UsageRecord> {
    (0..n)
        .map(|i| {
            let mut r = record("bench-org", i as u64);
            if random_ids {
                r.request_id = Uuid::new_v4();
            }
            r
        })
        .collect()
}

fn writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let mut group = c.benchmark_group(format!("writer/{kind:?}").to_lowercase());
        group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(2));
        for s in SCENARIOS {
            let (db, writer) = rt.block_on(async {
                let db = TestDatabase::new(kind).await;
                let store = db.store().await;
                if !s.priced {
                    without_prices(&store).await;
                }
                // XTASK_BENCH_LINGER_MS overrides writer.linger_ms, to compare settings in one build.
                let linger = std::env::var("XTASK_BENCH_LINGER_MS").ok().and_then(|s| s.parse().ok());
                let config = WriterConfig {
                    linger_ms: linger.unwrap_or(WriterConfig::default().linger_ms),
                    ..WriterConfig::default()
                };
                (db, Writer::spawn(store, config))
            });
            group.throughput(Throughput::Elements((s.callers * s.per_submission * s.rounds) as u64));
            group.bench_function(s.name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let sink = writer.handle();
                    async move {
                        let mut elapsed = Duration::ZERO;
                        for _ in 0..iters {
                            // Records are made outside the timed part.
                            let work: Vec<Vec<Vec<UsageRecord>>> = (0..s.callers)
                                .map(|_| (0..s.rounds).map(|_| records(s.per_submission, s.random_ids)).collect())
                                .collect();
                            let start = Instant::now();
                            let tasks: Vec<_> = work
                                .into_iter()
                                .map(|subs| {
                                    let sink = sink.clone();
                                    tokio::spawn(async move {
                                        for sub in subs {
                                            sink.store(sub, Source::Http).await.expect("store");
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                            elapsed += start.elapsed();
                        }
                        elapsed
                    }
                })
            });
            rt.block_on(writer.shutdown());
            drop(db);
        }
        group.finish();
    }
}

criterion_group!(benches, writer);
criterion_main!(benches);
