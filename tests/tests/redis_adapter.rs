//! What only the Redis Streams source does, against a real redis-server
//! and real storage (the contract both sources keep is
//! `redis_conformance.rs`).
//! Each test uses its own stream key, group and organization; the ones that
//! stop the server start their own (`ThrowawayRedis`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use broker::{Health, RetryConfig};
use fred::cmd;
use fred::prelude::{Builder, ClientLike, Config as FredConfig, ReconnectPolicy};
use fred::types::Value;
use ingest_redis::{RedisConsumerConfig, RedisSource, Stats};
use model::{Ingestor, RecordSink, SinkError, Source, StoreOutcome, UsageRecord, ValidationConfig};
use sea_orm::{ConnectionTrait, Statement};
use storage::{Store, Writer, WriterConfig, WriterHandle};
use testkit::redis::{ThrowawayRedis, unique, url};
use testkit::{Kind, TestDatabase};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The writer, failing every submission while `down` is set: a stand-in
/// for a database outage at *our* interface.
#[derive(Clone)]
struct Flaky {
    inner: WriterHandle,
    down: Arc<AtomicBool>,
}

/// The model name of a record that panics the source task (the test's
/// stand-in for whatever defect kills a task mid-batch).
const TASK_KILLER: &str = "test-task-killer";

impl RecordSink for Flaky {
    async fn store(&self, records: Vec<UsageRecord>, source: Source) -> Result<Vec<StoreOutcome>, SinkError> {
        if records.iter().any(|r| r.model.name == TASK_KILLER) {
            panic!("test: this record kills the source task");
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(SinkError::Unavailable("the test took storage down".into()));
        }
        self.inner.store(records, source).await
    }
}

struct Harness {
    _db: TestDatabase,
    store: Store,
    writer: Writer,
    down: Arc<AtomicBool>,
    url: String,
    redis: fred::clients::Client,
    key: String,
    group: String,
    org: String,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), ingest_redis::Error>>,
    stats: Arc<Stats>,
    health: Health,
}

impl Running {
    async fn stop(self) -> Arc<Stats> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the source stops within 10 s")
            .unwrap()
            .unwrap();
        self.stats
    }

    /// Like a `kill -9`: the task is gone mid-whatever, nothing more is acked.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn retry() -> RetryConfig {
    RetryConfig { max_retries: 2, initial_delay_ms: 20, max_delay_ms: 300, backoff_multiplier: 2.0 }
}

async fn client(url: &str) -> fred::clients::Client {
    let mut builder = Builder::from_config(FredConfig::from_url(url).unwrap());
    builder.set_policy(ReconnectPolicy::new_constant(0, 50));
    let client = builder.build().unwrap();
    client.init().await.unwrap_or_else(|e| panic!("cannot reach Redis at {url} ({e})"));
    client
}

impl Harness {
    async fn new(kind: Kind) -> Self {
        Self::on(kind, url()).await
    }

    async fn on(kind: Kind, url: String) -> Self {
        let db = TestDatabase::new(kind).await;
        let store = db.store().await;
        let writer = Writer::spawn(store.clone(), WriterConfig::default());
        Harness {
            _db: db,
            store,
            writer,
            down: Arc::default(),
            redis: client(&url).await,
            url,
            key: unique("test:usage"),
            group: unique("g"),
            org: unique("org"),
        }
    }

    fn config(&self, name: &str) -> RedisConsumerConfig {
        RedisConsumerConfig {
            stream_key: self.key.clone(),
            group: self.group.clone(),
            name: name.to_owned(),
            read_batch: 500,
            block_ms: 200,
            claim_idle_secs: 3600,
            ..RedisConsumerConfig::default()
        }
    }

    fn start(&self, config: RedisConsumerConfig) -> Running {
        self.start_with(config, broker::Quarantine::new())
    }

    fn start_with(&self, config: RedisConsumerConfig, quarantine: broker::Quarantine) -> Running {
        let ingestor =
            Ingestor::new(Flaky { inner: self.writer.handle(), down: self.down.clone() }, ValidationConfig::default());
        let health = Health::new();
        let source = RedisSource::new(&self.url, config, ingestor, self.store.clone(), retry(), health.clone())
            .with_quarantine(quarantine);
        let stats = source.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(source.run(stop.clone()));
        Running { stop, task, stats, health }
    }

    fn record(&self, i: u64, with_id: bool) -> String {
        let mut v = testkit::record_json(&self.org, i);
        if !with_id {
            v.as_object_mut().unwrap().remove("request_id");
        }
        v.to_string()
    }

    /// XADDs `payloads` in one pipeline.
    async fn add(&self, payloads: impl IntoIterator<Item = String>) {
        let pipeline = self.redis.pipeline();
        for p in payloads {
            let args: Vec<Value> = vec![self.key.as_str().into(), "*".into(), "payload".into(), p.into()];
            let _: () = pipeline.custom(cmd!("XADD"), args).await.unwrap();
        }
        let _: Vec<Value> = pipeline.all().await.unwrap();
    }

    async fn cmd(&self, name: &'static str, args: &[&str]) -> Value {
        let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
        self.redis.custom::<Value, Value>(cmd!(name), args).await.unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    async fn create_group(&self) {
        self.cmd("XGROUP", &["CREATE", &self.key, &self.group, "0", "MKSTREAM"]).await;
    }

    /// Reads up to `count` new entries as `consumer` and never acks them
    /// (a consumer that dies mid-batch); returns their ids.
    async fn read_as(&self, consumer: &str, count: usize) -> Vec<String> {
        let reply = self
            .cmd(
                "XREADGROUP",
                &["GROUP", &self.group, consumer, "COUNT", &count.to_string(), "STREAMS", &self.key, ">"],
            )
            .await;
        ingest_redis::entries::read_reply(reply, &self.key).unwrap().into_iter().map(|e| e.id).collect()
    }

    /// Entries of the group delivered and not acked.
    async fn pending(&self) -> u64 {
        match self.cmd("XPENDING", &[&self.key, &self.group]).await {
            Value::Array(summary) => match summary.first() {
                Some(Value::Integer(n)) => *n as u64,
                other => panic!("XPENDING summary: {other:?}"),
            },
            other => panic!("XPENDING summary: {other:?}"),
        }
    }

    async fn rows(&self) -> u64 {
        self.store.count_records(Some(&self.org)).await.unwrap()
    }

    /// (message key, error) of every dead letter, by key.
    async fn dead_letters(&self) -> Vec<(String, String)> {
        let db = self.store.connection();
        let sql = "SELECT message_key, error FROM dead_letters WHERE source = 'redis' ORDER BY message_key";
        let rows = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
        rows.iter()
            .map(|r| (r.try_get_by_index::<String>(0).unwrap(), r.try_get_by_index::<String>(1).unwrap()))
            .filter(|(k, _)| k.starts_with(&self.key))
            .collect()
    }

    async fn cleanup(self) {
        let _ = self.redis.custom::<Value, Value>(cmd!("DEL"), vec![Value::from(self.key.as_str())]).await;
        let _ = self.redis.quit().await;
        self.writer.shutdown().await;
    }
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `secs`.
async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

testkit::on_every_backend!(a_rewound_group_reads_everything_again_as_duplicates);

async fn a_rewound_group_reads_everything_again_as_duplicates(kind: Kind) {
    let h = Harness::new(kind).await;
    const N: u64 = 2_000;
    // Half carry a request_id, half get one derived from the entry id.
    h.add((0..N).map(|i| h.record(i, i % 2 == 0))).await;
    let run = h.start(h.config("solo"));
    eventually("every row", 60, || async { h.rows().await == N }).await;
    eventually("every entry acked", 10, || async { run.stats.counts().acked == N }).await;
    let stats = run.stop().await.counts();
    assert_eq!(h.pending().await, 0);
    assert_eq!((stats.read, stats.stored, stats.dead_lettered, stats.trimmed), (N, N, 0, 0));

    // Every entry again (the group rewound): all duplicates, no new row.
    h.cmd("XGROUP", &["SETID", &h.key, &h.group, "0"]).await;
    let run = h.start(h.config("solo"));
    eventually("the rewound stream re-read", 60, || async { run.stats.counts().acked == N }).await;
    let stats = run.stop().await.counts();
    assert_eq!(stats.stored, N);
    assert_eq!(h.rows().await, N, "re-reading never duplicates");
    assert_eq!(h.pending().await, 0);
    h.cleanup().await;
}

/// Invalid entries are dead-lettered and acked. An entry delivered more
/// than `max_deliveries` times is not dead-lettered for its count alone:
/// nothing killed a task under it, so it is stored with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_lettered_and_acked() {
    let h = Harness::new(Kind::Sqlite).await;
    h.create_group().await;
    // An entry some consumer kept failing on: delivered 7 times already.
    h.add([h.record(0, true)]).await;
    let hot = h.read_as("ghost", 1).await;
    h.cmd("XCLAIM", &[&h.key, &h.group, "ghost", "0", &hot[0], "RETRYCOUNT", "7"]).await;

    let mut bad_total = testkit::record_json(&h.org, 1);
    bad_total["usage"]["total_tokens"] = 1.into();
    let partial = format!(r#"{{"records":[{},{}]}}"#, h.record(2, false), bad_total);
    h.add(["{not json".to_owned(), bad_total.to_string(), partial, h.record(3, false)]).await;
    h.cmd("XADD", &[&h.key, "*", "data", "no payload here"]).await;

    let run = h.start(RedisConsumerConfig { claim_idle_secs: 1, ..h.config("worker") });
    eventually("everything acked", 20, || async { h.pending().await == 0 && run.stats.counts().read >= 6 }).await;
    let stats = run.stop().await.counts();
    assert_eq!(stats.dead_lettered, 4, "{stats:?}");
    assert_eq!(stats.stored, 2, "{stats:?}");
    assert_eq!(h.rows().await, 3, "the hot record, the valid record and the valid half of the batch");
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), 4, "{letters:#?}");
    assert!(!letters.iter().any(|(k, _)| k.ends_with(&hot[0])), "a good entry is not dead-lettered for its count");
    assert!(letters.iter().any(|(_, e)| e.starts_with("malformed JSON")), "{letters:#?}");
    assert!(letters.iter().any(|(_, e)| e.contains("no `payload` field")), "{letters:#?}");
    assert_eq!(letters.iter().filter(|(_, e)| e.contains("usage.total_tokens")).count(), 2, "{letters:#?}");
    h.cleanup().await;
}

/// A record that kills the source task (the sink panics on it) is found and
/// dead-lettered; the good entries that shared its batch are stored. Each
/// restart reuses the quarantine, as ingestd's supervisor does: first the
/// batch dies, then its entries are tried alone (the killer dies again),
/// then the killer is dead-lettered for its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_kills_the_task_is_dead_lettered_and_its_neighbours_stored() {
    let h = Harness::new(Kind::Sqlite).await;
    h.create_group().await;
    let mut killer = testkit::record_json(&h.org, 1);
    killer["model"]["name"] = TASK_KILLER.into();
    h.add([h.record(0, true), killer.to_string(), h.record(2, false)]).await;
    let quarantine = broker::Quarantine::new();
    let config = RedisConsumerConfig { max_deliveries: 1, ..h.config("worker") };
    let mut incarnations = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        incarnations += 1;
        let run = h.start_with(config.clone(), quarantine.clone());
        // Either the task dies (the killer was tried), or everything is done.
        loop {
            let done = h.pending().await == 0 && h.rows().await == 2;
            if run.task.is_finished() || done {
                break;
            }
            assert!(Instant::now() < deadline, "stuck after {incarnations} incarnations");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !run.task.is_finished() {
            run.stop().await;
            break;
        }
        let died = run.task.await;
        assert!(died.as_ref().is_err_and(|e| e.is_panic()), "{died:?}");
        assert!(incarnations < 5, "the killer is never isolated");
    }
    assert_eq!(incarnations, 3, "died in the batch, died alone, then dead-lettered");
    assert_eq!(h.rows().await, 2, "the killer's neighbours are stored");
    assert_eq!(h.pending().await, 0);
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert!(letters[0].1.contains("the source stopped while it was being tried alone"), "{}", letters[0].1);
    h.cleanup().await;
}

/// A consumer that read a batch and died before acking it.
async fn kill_mid_batch(h: &Harness, name: &str, n: u64) {
    h.down.store(true, Ordering::Relaxed);
    h.add((0..n).map(|i| h.record(i, false))).await;
    let run = h.start(h.config(name));
    eventually("the batch read and its commit failed", 10, || async {
        let c = run.stats.counts();
        c.read == n && c.storage_failures >= 1
    })
    .await;
    run.kill().await;
    h.down.store(false, Ordering::Relaxed);
    assert_eq!(h.pending().await, n);
    assert_eq!(h.rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_reclaimed_by_another() {
    let h = Harness::new(Kind::Sqlite).await;
    kill_mid_batch(&h, "dies", 300).await;
    let run = h.start(RedisConsumerConfig { claim_idle_secs: 1, ..h.config("survivor") });
    eventually("the dead consumer's entries reclaimed", 20, || async { h.pending().await == 0 }).await;
    let stats = run.stop().await.counts();
    assert_eq!(h.rows().await, 300);
    assert_eq!((stats.reclaimed, stats.stored), (300, 300));
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream() {
    let mut server = ThrowawayRedis::start();
    let h = Harness::on(Kind::Sqlite, server.url()).await;
    h.add((0..100).map(|i| h.record(i, false))).await;
    let run = h.start(h.config("r1"));
    eventually("the first half", 20, || async { h.rows().await == 100 }).await;
    eventually("connected", 5, || async { run.health.check().is_ok() }).await;

    server.kill();
    eventually("readiness shows the outage", 10, || async { !run.health.connected() }).await;
    assert!(run.health.check().unwrap_err().starts_with("redis"), "{:?}", run.health.check());
    server.restart();
    h.add((100..300).map(|i| h.record(i, false))).await;
    eventually("the rest after the restart", 30, || async { h.rows().await == 300 && h.pending().await == 0 }).await;
    eventually("ready again", 5, || async { run.health.check().is_ok() }).await;
    let stats = run.stop().await.counts();
    assert!(stats.redis_errors >= 1, "{stats:?}");
    assert_eq!(h.rows().await, 300);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_while_pending_are_counted_not_stored() {
    let h = Harness::new(Kind::Sqlite).await;
    h.create_group().await;
    h.add((0..10).map(|i| h.record(i, false))).await;
    assert_eq!(h.read_as("me", 4).await.len(), 4);
    assert_eq!(h.read_as("gone", 6).await.len(), 6);
    h.cmd("XTRIM", &[&h.key, "MAXLEN", "0"]).await;
    assert_eq!(h.pending().await, 10);

    // "me" finds 4 nil entries in its own pending list; the 6 of "gone" are
    // reported deleted by XAUTOCLAIM.
    let run = h.start(RedisConsumerConfig { claim_idle_secs: 1, ..h.config("me") });
    eventually("the trimmed entries counted", 20, || async { run.stats.counts().trimmed == 10 }).await;
    eventually("nothing pending", 5, || async { h.pending().await == 0 }).await;
    let stats = run.stop().await.counts();
    assert_eq!((stats.stored, stats.dead_lettered), (0, 0));
    assert_eq!(h.rows().await, 0);
    assert!(h.dead_letters().await.is_empty());
    h.cleanup().await;
}
