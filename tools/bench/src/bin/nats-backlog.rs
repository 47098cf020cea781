//! `nats-backlog [messages] [steady-secs]`: the NATS source benchmark
//! (`cargo xtask bench nats`, docs/benchmarks.md); NATS at `INGESTD_TEST_NATS_URL`
//! (default `nats://127.0.0.1:4222`).
//!
//! For each id shape (records without `request_id`, so the source derives
//! time-ordered UUID v8 ids from stream, sequence and publish time; records
//! with a client v7 id):
//! 1. publishes a backlog of `messages` single-record messages to a fresh stream;
//! 2. *writer alone*: the same records (same ids), decoded beforehand,
//!    committed by a fresh SQLite writer in 1000-record submissions, from one
//!    caller (the source's own shape without NATS) and from 8 (the writer's
//!    best shape);
//! 3. *source*: a fresh database, the `NatsSource` started on the backlog
//!    with one fetch loop, then (on the same backlog published again) with
//!    `FETCHERS` loops as ingestd runs them, each timed until every record is
//!    committed (drain rate).
//!
//! Then, unless `steady-secs` is 0, p50/p99 publish-to-commit at a steady
//! 20k messages/s with `FETCHERS` loops. SQLite with `synchronous = FULL` throughout. The streams
//! are deleted afterwards.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use broker::{Health, RetryConfig};
use ingest_nats::{NatsConfig, NatsSource};
use model::{Ingestor, RecordSink, SinkError, Source, StoreOutcome, UsageRecord, ValidationConfig};
use storage::{DatabaseConfig, Store, Writer, WriterConfig, WriterHandle};
use tokio_util::sync::CancellationToken;

const STEADY_RATE: u64 = 20_000;
/// Fetch loops in the second drain: ingestd's default `nats.fetchers`.
const FETCHERS: usize = 4;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = std::env::var("INGESTD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let messages: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let steady_secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let client = async_nats::connect(&url).await.with_context(|| format!("connect to {url}"))?;
    let js = jetstream::new(client);

    println!("NATS source, backlog of {messages} single-record messages, SQLite synchronous=FULL");
    println!(
        "{:<28} {:>12} {:>14} {:>14} {:>9} {:>16} {:>7} {:>7}",
        "ids", "publish m/s", "writer 1×1000", "writer 8×1000", "fetchers", "source drain m/s", "/w1", "/w8"
    );
    for client_ids in [false, true] {
        let bench = Bench::new(&js, &url).await?;
        let (published, payloads) = bench.publish_backlog(messages, client_ids).await?;
        let alone1 = bench.writer_alone(&payloads, 1).await?;
        let alone8 = bench.writer_alone(&payloads, 8).await?;
        for fetchers in [1, FETCHERS] {
            if fetchers > 1 {
                // The same records again, on a fresh stream.
                bench.cleanup().await;
                bench.create_stream().await?;
                bench.publish(&payloads).await?;
            }
            let drain = bench.drain(messages, fetchers).await?;
            println!(
                "{:<28} {:>12.0} {:>14.0} {:>14.0} {:>9} {:>16.0} {:>7.3} {:>7.3}",
                if client_ids { "client v7 request_id" } else { "derived v8 (no request_id)" },
                published,
                alone1,
                alone8,
                fetchers,
                drain,
                drain / alone1,
                drain / alone8
            );
        }
        bench.cleanup().await;
    }
    if steady_secs > 0 {
        let bench = Bench::new(&js, &url).await?;
        let (p50, p99, committed, sent) = bench.steady(steady_secs).await?;
        println!(
            "steady {STEADY_RATE} msg/s for {steady_secs} s (derived ids): {committed}/{sent} committed, \
             publish-to-commit p50 {p50:.1} ms, p99 {p99:.1} ms"
        );
        bench.cleanup().await;
    }
    Ok(())
}

struct Bench {
    js: jetstream::Context,
    config: NatsConfig,
    dir: std::path::PathBuf,
}

impl Bench {
    async fn new(js: &jetstream::Context, url: &str) -> Result<Bench> {
        let tag = format!("{}_{}", std::process::id(), rand_ish() % 1_000_000_007);
        let config = NatsConfig {
            url: url.to_owned(),
            subject: format!("bench_{tag}.usage"),
            stream: format!("BENCH_{tag}"),
            consumer: "ingestd".into(),
            idle_wait_ms: 100,
            ..NatsConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("nats-bench-{tag}"));
        let bench = Bench { js: js.clone(), config, dir };
        bench.create_stream().await?;
        Ok(bench)
    }

    async fn create_stream(&self) -> Result<()> {
        self.js
            .create_stream(stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![self.config.subject.clone()],
                ..Default::default()
            })
            .await?;
        std::fs::create_dir_all(&self.dir)?;
        Ok(())
    }

    async fn cleanup(&self) {
        let _ = self.js.delete_stream(&self.config.stream).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn store(&self, name: &str) -> Result<Store> {
        let config = DatabaseConfig {
            url: format!("sqlite://{}/{name}.db?mode=rwc", self.dir.display()),
            ..DatabaseConfig::default()
        };
        let store = Store::connect(&config).await?;
        store.migrate().await?;
        Ok(store)
    }

    fn payload(i: u64, client_id: bool) -> String {
        let mut record = ingest_bench::record(i as usize);
        record["usage"]["prompt_tokens"] = i.into();
        record["usage"]["total_tokens"] = (i + 350).into();
        record["usage"]["cached_tokens"] = 0.into();
        record["timestamp"] = "2026-11-26T10:00:00Z".into();
        if client_id {
            record["request_id"] = uuid::Uuid::now_v7().to_string().into();
        }
        record.to_string()
    }

    /// Publishes `n` messages, 1024 acks in flight; messages/s and the payloads.
    async fn publish_backlog(&self, n: u64, client_ids: bool) -> Result<(f64, Vec<String>)> {
        let payloads: Vec<String> = (0..n).map(|i| Self::payload(i, client_ids)).collect();
        let start = Instant::now();
        self.publish(&payloads).await?;
        Ok((n as f64 / start.elapsed().as_secs_f64(), payloads))
    }

    async fn publish(&self, payloads: &[String]) -> Result<()> {
        let mut acks = Vec::with_capacity(1024);
        for payload in payloads {
            acks.push(self.js.publish(self.config.subject.clone(), payload.clone().into()).await?);
            if acks.len() == 1024 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    /// The published messages, decoded as the source would (same derived ids),
    /// then committed in 1000-record submissions; records/s.
    async fn writer_alone(&self, payloads: &[String], callers: usize) -> Result<f64> {
        let n = payloads.len() as u64;
        let store = self.store(&format!("alone{callers}")).await?;
        let writer = Writer::spawn(store, WriterConfig::default());
        let ingestor = Ingestor::new(writer.handle(), ValidationConfig::default());
        let mut records = Vec::with_capacity(payloads.len());
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for (i, payload) in payloads.iter().enumerate() {
            // A fresh stream numbers its messages from 1.
            let raw = model::decode::stream_message(payload.as_bytes())?;
            // The source keys messages with their publish time too: the same
            // shape of ids (time-ordered v8), 100 messages per millisecond.
            let published_ms = epoch_ms + i as u64 / 100;
            let key = broker::nats_key(&self.config.stream, i as u64 + 1, published_ms);
            let unix_ms = broker::key_unix_ms(Source::Nats, &key);
            for r in ingestor.decode(&raw, |i| broker::record_id(Source::Nats, &key, unix_ms, i)) {
                records.push(r.map_err(|e| anyhow::anyhow!("invalid benchmark record: {e:?}"))?);
            }
        }
        // `callers` tasks, each committing 1000-record submissions in turn.
        let mut chunks: Vec<Vec<UsageRecord>> = Vec::new();
        let mut rest = records;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(1000));
            chunks.push(rest);
            rest = tail;
        }
        let queue = Arc::new(Mutex::new(chunks));
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let (queue, handle) = (queue.clone(), writer.handle());
                tokio::spawn(async move {
                    loop {
                        let next = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                        let Some(chunk) = next else { return anyhow::Ok(()) };
                        handle.store(chunk, Source::Nats).await?;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        writer.shutdown().await;
        Ok(rate)
    }

    /// Starts `fetchers` source loops on the backlog (as ingestd does with
    /// `nats.fetchers`); messages/s until all are committed.
    async fn drain(&self, n: u64, fetchers: usize) -> Result<f64> {
        let store = self.store(&format!("source{fetchers}")).await?;
        let writer = Writer::spawn(store.clone(), WriterConfig::default());
        let sink = Timed::new(writer.handle(), None);
        let token = CancellationToken::new();
        let start = Instant::now();
        let tasks = self.start(&sink, &store, fetchers, &token);
        while sink.committed.load(Ordering::Relaxed) < n {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(600), "drain did not finish in 10 minutes");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        token.cancel();
        for task in tasks {
            task.await??;
        }
        writer.shutdown().await;
        Ok(rate)
    }

    /// Starts `fetchers` source loops, as ingestd does with `nats.fetchers`.
    fn start(
        &self,
        sink: &Timed,
        store: &Store,
        fetchers: usize,
        token: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<Result<(), ingest_nats::Error>>> {
        (0..fetchers)
            .map(|_| {
                let source = NatsSource::new(
                    self.config.clone(),
                    Ingestor::new(sink.clone(), ValidationConfig::default()),
                    store.clone(),
                    RetryConfig::default(),
                    Health::new(),
                );
                tokio::spawn(source.run(token.clone()))
            })
            .collect()
    }

    /// Publishes at a steady rate while the source runs; (p50 ms, p99 ms,
    /// committed, sent) of publish-to-commit.
    async fn steady(&self, secs: u64) -> Result<(f64, f64, u64, u64)> {
        let store = self.store("steady").await?;
        let writer = Writer::spawn(store.clone(), WriterConfig::default());
        let total = STEADY_RATE * secs;
        let clock = Instant::now();
        let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
        let sink = Timed::new(writer.handle(), Some((clock, sent_at.clone())));
        let token = CancellationToken::new();
        let tasks = self.start(&sink, &store, FETCHERS, &token);
        tokio::time::sleep(Duration::from_millis(500)).await;

        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<jetstream::context::PublishAckFuture>(100_000);
        let acker = tokio::spawn(async move {
            while let Some(ack) = ack_rx.recv().await {
                ack.await?;
            }
            anyhow::Ok(())
        });
        let per_tick = STEADY_RATE / 1000;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut i = 0u64;
        while i < total {
            tick.tick().await;
            for _ in 0..per_tick {
                sent_at[i as usize].store(clock.elapsed().as_micros() as u64, Ordering::Relaxed);
                let ack = self.js.publish(self.config.subject.clone(), Self::payload(i, false).into()).await?;
                ack_tx.send(ack).await?;
                i += 1;
            }
        }
        drop(ack_tx);
        acker.await??;
        let start = Instant::now();
        while sink.committed.load(Ordering::Relaxed) < total && start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
        for task in tasks {
            task.await??;
        }
        writer.shutdown().await;
        let mut latencies = sink.latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        latencies.sort_unstable();
        let pick =
            |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
        let ms = |v: Option<&u64>| v.map(|us| *us as f64 / 1000.0).unwrap_or(f64::NAN);
        Ok((ms(pick(0.5)), ms(pick(0.99)), sink.committed.load(Ordering::Relaxed), total))
    }
}

/// The writer, counting committed records; with publish times, it also
/// records each record's publish-to-commit latency (the record's
/// `prompt_tokens` is its index).
#[derive(Clone)]
struct Timed {
    inner: WriterHandle,
    committed: Arc<AtomicU64>,
    sent: Option<(Instant, Arc<Vec<AtomicU64>>)>,
    latencies: Arc<Mutex<Vec<u64>>>,
}

impl Timed {
    fn new(inner: WriterHandle, sent: Option<(Instant, Arc<Vec<AtomicU64>>)>) -> Self {
        Timed { inner, committed: Arc::default(), sent, latencies: Arc::default() }
    }
}

impl RecordSink for Timed {
    async fn store(&self, records: Vec<UsageRecord>, source: Source) -> Result<Vec<StoreOutcome>, SinkError> {
        let indexes: Vec<u64> = records.iter().map(|r| r.usage.prompt_tokens).collect();
        let outcomes = self.inner.store(records, source).await?;
        if let Some((clock, sent)) = &self.sent {
            let now = clock.elapsed().as_micros() as u64;
            let mut latencies = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
            for i in &indexes {
                if let Some(at) = sent.get(*i as usize) {
                    latencies.push(now.saturating_sub(at.load(Ordering::Relaxed)));
                }
            }
        }
        self.committed.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        Ok(outcomes)
    }
}

fn rand_ish() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}
