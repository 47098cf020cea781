//! `redis-drain [ENTRIES] [STEADY_RATE] [STEADY_SECS]` (defaults 200000,
//! 20000, 10): the Redis Streams source's benchmark (docs/benchmarks.md).
//! Redis from `INGESTD_TEST_REDIS_URL` (else 127.0.0.1:6379); a fresh SQLite
//! database (`synchronous=FULL`) per phase. In one run:
//!
//! 1. *writer alone*: the same records, decoded beforehand, straight to the
//!    writer in 1000-record submissions (one in flight, as the source does,
//!    and four in flight);
//! 2. *drain*: a backlog of ENTRIES entries (one record each, no
//!    `request_id`) consumed by `RedisSource` until every entry is acked;
//! 3. *steady*: STEADY_RATE entries/s for STEADY_SECS seconds while the
//!    source runs; add-to-commit latency per record (XADD sent → writer
//!    commit returned).
//!
//! Prints one JSON line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use broker::{Health, RetryConfig};
use fred::cmd;
use fred::prelude::{ClientLike, Config as FredConfig};
use fred::types::Value;
use ingest_redis::{RedisConsumerConfig, RedisSource};
use model::{Ingestor, RecordSink, SinkError, Source, StoreOutcome, UsageRecord, ValidationConfig};
use storage::{DatabaseConfig, Store, Writer, WriterConfig, WriterHandle};
use tokio_util::sync::CancellationToken;

fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let entries = args.first().copied().unwrap_or(200_000);
    let rate = args.get(1).copied().unwrap_or(20_000);
    let secs = args.get(2).copied().unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let line = rt.block_on(run(entries, rate, secs))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

struct Db {
    _dir: tempfile::TempDir,
    store: Store,
    writer: Writer,
}

async fn fresh_db(tag: &str) -> Result<Db> {
    let dir = tempfile::Builder::new().prefix(&format!("redis-drain-{tag}-")).tempdir()?;
    let config =
        DatabaseConfig { url: format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()), ..Default::default() };
    let store = Store::connect(&config).await?;
    store.migrate().await?;
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    Ok(Db { _dir: dir, store, writer })
}

/// The writer, noting add-to-commit latency of records that carry their
/// send time in `metadata.t` (µs since the epoch).
#[derive(Clone)]
struct Timed {
    inner: WriterHandle,
    latencies: Arc<Mutex<Vec<u64>>>,
}

impl RecordSink for Timed {
    async fn store(&self, records: Vec<UsageRecord>, source: Source) -> Result<Vec<StoreOutcome>, SinkError> {
        let sent: Vec<u64> = records.iter().filter_map(|r| r.metadata.as_ref()?.get("t")?.as_u64()).collect::<Vec<_>>();
        let out = self.inner.store(records, source).await?;
        let now = now_us();
        self.latencies.lock().unwrap_or_else(|e| e.into_inner()).extend(sent.iter().map(|t| now.saturating_sub(*t)));
        Ok(out)
    }
}

async fn redis(url: &str) -> Result<fred::clients::Client> {
    let client = fred::clients::Client::new(FredConfig::from_url(url)?, None, None, None);
    client
        .init()
        .await
        .with_context(|| format!("cannot reach Redis at {url}; start it or set INGESTD_TEST_REDIS_URL"))?;
    Ok(client)
}

async fn xadd_all(client: &fred::clients::Client, key: &str, payloads: impl Iterator<Item = String>) -> Result<()> {
    let mut pipeline = client.pipeline();
    let mut queued = 0;
    for p in payloads {
        let args: Vec<Value> = vec![key.into(), "*".into(), "payload".into(), p.into()];
        let _: () = pipeline.custom(cmd!("XADD"), args).await?;
        queued += 1;
        if queued == 5000 {
            let _: Vec<Value> = pipeline.all().await?;
            pipeline = client.pipeline();
            queued = 0;
        }
    }
    if queued > 0 {
        let _: Vec<Value> = pipeline.all().await?;
    }
    Ok(())
}

fn consumer(key: &str) -> RedisConsumerConfig {
    RedisConsumerConfig {
        stream_key: key.to_owned(),
        group: "bench".into(),
        name: "bench-1".into(),
        ..RedisConsumerConfig::default()
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::now_v7().simple())
}

async fn writer_alone(payloads: &[String], in_flight: usize) -> Result<f64> {
    let db = fresh_db(&format!("writer{in_flight}")).await?;
    let ingestor = Ingestor::new(db.writer.handle(), ValidationConfig::default());
    let mut batches: Vec<Vec<UsageRecord>> = Vec::new();
    for chunk in payloads.chunks(1000) {
        let raw: Vec<_> = chunk.iter().map(|p| serde_json::from_str(p)).collect::<Result<_, _>>()?;
        let records = ingestor.decode(&raw, |_| uuid::Uuid::now_v7());
        batches.push(records.into_iter().collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    let total: usize = batches.iter().map(Vec::len).sum();
    let handle = db.writer.handle();
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(batches));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (queue, handle) = (queue.clone(), handle.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(batch) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else { return Ok(()) };
                handle.store(batch, Source::Redis).await?;
            }
        }));
    }
    for t in tasks {
        t.await?.map_err(|e: SinkError| anyhow::anyhow!(e))?;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(db.store.count_records(None).await? == total as u64, "writer alone lost rows");
    db.writer.shutdown().await;
    Ok(rate)
}

/// Consumers of the group in the second drain.
const CONSUMERS: usize = 4;

/// Adds `payloads` to a fresh stream, then drains it with `consumers`
/// sources of one group into a fresh database: (entries/s, XADD seconds).
async fn drain_backlog(
    client: &fred::clients::Client,
    url: &str,
    payloads: &[String],
    consumers: usize,
) -> Result<(f64, f64)> {
    let entries = payloads.len() as u64;
    let key = unique("bench:usage");
    let added = Instant::now();
    xadd_all(client, &key, payloads.iter().cloned()).await?;
    let xadd_secs = added.elapsed().as_secs_f64();
    let db = fresh_db(&format!("drain{consumers}")).await?;
    let stop = CancellationToken::new();
    let mut stats = Vec::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for n in 1..=consumers {
        let ingestor = Ingestor::new(db.writer.handle(), ValidationConfig::default());
        let config = RedisConsumerConfig { name: format!("bench-{n}"), ..consumer(&key) };
        let source = RedisSource::new(url, config, ingestor, db.store.clone(), RetryConfig::default(), Health::new());
        stats.push(source.stats());
        tasks.push(tokio::spawn(source.run(stop.clone())));
    }
    let acked = |stats: &[Arc<ingest_redis::Stats>]| stats.iter().map(|s| s.counts().acked).sum::<u64>();
    while acked(&stats) < entries {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "drain did not finish: {}", acked(&stats));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();
    stop.cancel();
    for task in tasks {
        task.await??;
    }
    let rows = db.store.count_records(None).await?;
    anyhow::ensure!(rows == entries, "drain by {consumers} stored {rows} rows of {entries}");
    db.writer.shutdown().await;
    let _: Value = client.custom(cmd!("DEL"), vec![Value::from(key.as_str())]).await?;
    Ok((entries as f64 / drain_secs, xadd_secs))
}

async fn run(entries: u64, rate: u64, secs: u64) -> Result<serde_json::Value> {
    let url = std::env::var("INGESTD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis(&url).await?;
    let payloads: Vec<String> = (0..entries as usize).map(|i| ingest_bench::record(i).to_string()).collect();

    let writer_1 = writer_alone(&payloads, 1).await?;
    let writer_4 = writer_alone(&payloads, 4).await?;

    let (drain, xadd_secs) = drain_backlog(&client, &url, &payloads, 1).await?;
    // The same backlog drained by several consumers of the group in one
    // process: what overlapping one batch's reading and decoding with
    // another's commit is worth.
    let (drain_n, _) = drain_backlog(&client, &url, &payloads, CONSUMERS).await?;

    // Steady rate.
    let key = unique("bench:steady");
    let db = fresh_db("steady").await?;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let sink = Timed { inner: db.writer.handle(), latencies: latencies.clone() };
    let source = RedisSource::new(
        &url,
        RedisConsumerConfig { block_ms: 100, ..consumer(&key) },
        Ingestor::new(sink, ValidationConfig::default()),
        db.store.clone(),
        RetryConfig::default(),
        Health::new(),
    );
    let stats = source.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(source.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let total = per_tick * 100 * secs;
    let behind = Arc::new(AtomicBool::new(false));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let producing = Instant::now();
    let mut sent = 0;
    while sent < total {
        interval.tick().await;
        let batch = (0..per_tick).map(|i| {
            let mut r = ingest_bench::record((sent + i) as usize);
            r["metadata"] = serde_json::json!({ "t": now_us() });
            r.to_string()
        });
        xadd_all(&client, &key, batch).await?;
        sent += per_tick;
    }
    let produce_secs = producing.elapsed().as_secs_f64();
    if produce_secs > secs as f64 * 1.1 {
        behind.store(true, Ordering::Relaxed);
    }
    let waiting = Instant::now();
    while stats.counts().acked < total {
        anyhow::ensure!(
            waiting.elapsed() < Duration::from_secs(120),
            "steady run did not finish: {:?}",
            stats.counts()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    task.await??;
    db.writer.shutdown().await;
    let _: Value = client.custom(cmd!("DEL"), vec![Value::from(key.as_str())]).await?;
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);

    Ok(serde_json::json!({
        "entries": entries,
        "writer_alone_1_in_flight": writer_1,
        "writer_alone_4_in_flight": writer_4,
        "xadd_per_sec": entries as f64 / xadd_secs,
        "drain_per_sec": drain,
        "drain_vs_writer_1": drain / writer_1,
        "drain_vs_writer_4": drain / writer_4,
        "consumers": CONSUMERS,
        "drain_n_consumers_per_sec": drain_n,
        "drain_n_consumers_vs_writer_1": drain_n / writer_1,
        "drain_n_consumers_vs_writer_4": drain_n / writer_4,
        "steady_rate": total as f64 / produce_secs,
        "steady_producer_fell_behind": behind.load(Ordering::Relaxed),
        "steady_records": lat.len(),
        "p50_ms": ms(pct(0.50)),
        "p99_ms": ms(pct(0.99)),
        "max_ms": ms(lat.last().copied()),
    }))
}
