//! The contract every stream source keeps, as one suite each must pass (as
//! Quickwit's `metastore_test_suite!` holds every metastore to one suite).
//!
//! A source (NATS JetStream in `ingest-nats`, Redis Streams in
//! `ingest-redis`, a Kafka one tomorrow) implements [`BrokerHarness`] in
//! `tests/tests/<broker>_conformance.rs`: a fresh stream of the test's own on the real
//! server, publishing, starting a source, and how many messages the broker
//! still holds unacknowledged. [`broker_conformance_suite!`](crate::broker_conformance_suite)
//! then runs every test below against it, on SQLite and on PostgreSQL:
//!
//! | test | the guarantee |
//! |---|---|
//! | [`every_message_lands_exactly_once`] | 2,000 messages (half without `request_id`) → 2,000 rows, all acknowledged, no duplicate |
//! | [`poison_is_dead_lettered_and_the_rest_flows`] | malformed JSON, an invalid record, an empty batch → dead letters; the valid half of a batch is stored; nothing comes back |
//! | [`killed_mid_batch_restart_stores_everything_once`] | a member killed with a batch read and not committed: its restart stores it all |
//! | [`killed_between_commit_and_ack_redelivers_as_duplicates`] | committed, not acknowledged, killed: the redelivery stores nothing twice |
//! | [`storage_down_then_back`] | nothing acknowledged while storage fails, readiness says so, everything lands after |
//! | [`shutdown_commits_and_acks_the_batch_in_hand`] | a stop during a commit waits for it and acknowledges it |
//! | [`published_while_stopped_is_ingested_at_start`] | the group / durable consumer keeps the position across a stop |
//! | [`two_members_share_the_work`] | two processes on one group share it without a duplicate |
//!
//! Broker-specific behaviour (NATS progress acks and stream mismatches,
//! Redis `XAUTOCLAIM` and trimmed entries, server restarts) is tested in
//! `tests/tests/<broker>_adapter.rs`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::{Health, RetryConfig};
use model::{Ingestor, RecordSink, SinkError, Source, StoreOutcome, UsageRecord, ValidationConfig};
use storage::{Store, Writer, WriterConfig, WriterHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Kind, TestDatabase};

const DEADLINE: Duration = Duration::from_secs(60);

/// A stream source under test, on a stream of its own on the real server.
pub trait BrokerHarness: Sized + Send + Sync + 'static {
    /// What its rows and dead letters are marked with.
    const SOURCE: Source;
    /// What its `run` returns on failure.
    type Error: std::fmt::Debug + Send + 'static;

    /// A fresh stream (and consumer group or durable consumer name) on the
    /// shared test server. Short redelivery times: a message delivered and
    /// not acknowledged comes back within a few seconds.
    fn new() -> impl Future<Output = Self> + Send;

    /// Appends `payloads`, one message each; returns once the broker holds
    /// every one.
    fn publish(&self, payloads: Vec<String>) -> impl Future<Output = ()> + Send;

    /// Starts a source as group member `member` (the same name after a
    /// restart is the same member; a broker whose members share one durable
    /// consumer may ignore it), storing through `ingestor` and dead letters
    /// into `dead_letters`, until `shutdown`.
    fn spawn(
        &self,
        member: &str,
        ingestor: Ingestor<Probe>,
        dead_letters: Store,
        health: Health,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<(), Self::Error>>;

    /// Messages the broker still holds for the group: not yet delivered, or
    /// delivered and not acknowledged.
    fn outstanding(&self) -> impl Future<Output = u64> + Send;

    /// Deletes the test's stream.
    fn cleanup(self) -> impl Future<Output = ()> + Send;
}

/// Retry settings short enough for tests.
pub fn retry() -> RetryConfig {
    RetryConfig { max_retries: 2, initial_delay_ms: 20, max_delay_ms: 300, backoff_multiplier: 2.0 }
}

/// The writer seen through a switch and some counters: storage can be made
/// unavailable, commits slowed down or followed by the task's death, and
/// what each source stored is counted.
#[derive(Clone)]
pub struct Probe(Arc<ProbeState>);

pub struct ProbeState {
    inner: WriterHandle,
    /// Every submission fails with `SinkError::Unavailable` while set.
    pub down: AtomicBool,
    /// Each submission waits this long first.
    pub delay_ms: AtomicU64,
    /// The next submission commits, then panics (the task dies before it
    /// can acknowledge: `kill -9` between commit and ack).
    pub die_after_commit: AtomicBool,
    pub started: AtomicU64,
    pub refused: AtomicU64,
    pub inserted: AtomicU64,
    pub duplicates: AtomicU64,
}

impl Probe {
    pub fn new(inner: WriterHandle) -> Self {
        Probe(Arc::new(ProbeState {
            inner,
            down: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            die_after_commit: AtomicBool::new(false),
            started: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            inserted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }))
    }

    pub fn state(&self) -> &ProbeState {
        &self.0
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

impl RecordSink for Probe {
    async fn store(&self, records: Vec<UsageRecord>, source: Source) -> Result<Vec<StoreOutcome>, SinkError> {
        let s = &self.0;
        s.started.fetch_add(1, Ordering::SeqCst);
        let delay = s.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if s.down.load(Ordering::SeqCst) {
            s.refused.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::Unavailable("storage switched off by the test".into()));
        }
        let outcomes = s.inner.store(records, source).await?;
        for o in &outcomes {
            match o {
                StoreOutcome::Inserted => s.inserted.fetch_add(1, Ordering::SeqCst),
                StoreOutcome::Duplicate => s.duplicates.fetch_add(1, Ordering::SeqCst),
                StoreOutcome::Refused(_) => 0,
            };
        }
        if s.die_after_commit.swap(false, Ordering::SeqCst) {
            panic!("test: the source task dies after its commit, before acknowledging");
        }
        Ok(outcomes)
    }
}

/// One test's world: a database, a writer, the source's own stream and an
/// organization of its own.
pub struct Bench<H> {
    pub broker: H,
    pub store: Store,
    pub org: String,
    writer: Writer,
    _db: TestDatabase,
}

/// A source task started by [`Bench::start`].
pub struct Running<E> {
    pub probe: Probe,
    pub health: Health,
    stop: CancellationToken,
    task: JoinHandle<Result<(), E>>,
}

impl<E: std::fmt::Debug> Running<E> {
    /// Asks the source to stop and waits: it must return `Ok` within 15 s.
    pub async fn stop(self) -> Probe {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        result
            .expect("the source stops within 15 s")
            .expect("the task did not panic")
            .expect("the source stops cleanly");
        self.probe
    }

    /// Like `kill -9`: the task is gone wherever it was; nothing more is acknowledged.
    pub async fn kill(self) -> Probe {
        self.task.abort();
        let _ = self.task.await;
        self.probe
    }
}

impl<H: BrokerHarness> Bench<H> {
    pub async fn new(kind: Kind) -> Self {
        let db = TestDatabase::new(kind).await;
        let store = db.store().await;
        let writer = Writer::spawn(store.clone(), WriterConfig::default());
        let org = format!("org-{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
        Bench { broker: H::new().await, store, org, writer, _db: db }
    }

    pub fn start(&self, member: &str) -> Running<H::Error> {
        self.start_with(member, |_| {})
    }

    /// [`start`](Self::start) with the probe set up by `prepare` before the
    /// source can fetch anything.
    pub fn start_with(&self, member: &str, prepare: impl FnOnce(&ProbeState)) -> Running<H::Error> {
        let probe = Probe::new(self.writer.handle());
        prepare(probe.state());
        let health = Health::new();
        let stop = CancellationToken::new();
        let ingestor = Ingestor::new(probe.clone(), ValidationConfig::default());
        let task = self.broker.spawn(member, ingestor, self.store.clone(), health.clone(), stop.clone());
        Running { probe, health, stop, task }
    }

    /// A valid record of the test's organization; without `request_id` the
    /// source derives one from the message.
    pub fn record(&self, i: u64, with_id: bool) -> String {
        let mut v = crate::record_json(&self.org, i);
        if !with_id {
            v.as_object_mut().expect("a record is an object").remove("request_id");
        }
        v.to_string()
    }

    pub async fn publish_records(&self, range: std::ops::Range<u64>) {
        self.broker.publish(range.map(|i| self.record(i, i % 2 == 0)).collect()).await;
    }

    pub async fn rows(&self) -> u64 {
        self.store.count_records(Some(&self.org)).await.expect("count rows")
    }

    pub async fn dead_letters(&self) -> u64 {
        self.store.count_dead_letters(Some(H::SOURCE)).await.expect("count dead letters")
    }

    /// Waits until exactly `n` rows are stored; more is a failure at once.
    pub async fn wait_rows(&self, n: u64) {
        let start = Instant::now();
        loop {
            let rows = self.rows().await;
            assert!(rows <= n, "{rows} rows, more than the {n} published");
            if rows == n {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "{rows} of {n} rows after {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the broker holds nothing unacknowledged for the group.
    pub async fn wait_all_acknowledged(&self) {
        eventually("every message acknowledged", || async { self.broker.outstanding().await == 0 }).await;
    }

    pub async fn finish(self) {
        self.broker.cleanup().await;
        self.writer.shutdown().await;
    }
}

/// Polls `check` every 20 ms until it holds; fails naming `what` after 60 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn every_message_lands_exactly_once<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    const N: u64 = 2_000;
    b.publish_records(0..N).await;
    let run = b.start("m1");
    b.wait_rows(N).await;
    b.wait_all_acknowledged().await;
    assert_eq!(run.health.check(), Ok(()));
    let probe = run.stop().await;
    assert_eq!((Probe::count(&probe.0.inserted), Probe::count(&probe.0.duplicates)), (N, 0));
    assert_eq!(b.rows().await, N);
    assert_eq!(b.dead_letters().await, 0);
    b.finish().await;
}

pub async fn poison_is_dead_lettered_and_the_rest_flows<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    let mut invalid = crate::record_json(&b.org, 90);
    invalid["usage"]["total_tokens"] = 1.into();
    let half_valid = format!(r#"{{"records":[{},{invalid}]}}"#, b.record(3, false));
    let envelope =
        format!(r#"{{"message_id":"m-1","event_type":"batch","payload":{{"records":[{}]}}}}"#, b.record(4, false));
    b.broker
        .publish(vec![
            b.record(0, true),
            "{not json".to_owned(),
            b.record(1, false),
            invalid.to_string(),
            r#"{"records":[]}"#.to_owned(),
            half_valid,
            envelope,
            b.record(2, true),
        ])
        .await;
    let run = b.start("m1");
    b.wait_rows(5).await;
    b.wait_all_acknowledged().await;
    assert_eq!(b.dead_letters().await, 4, "malformed JSON, an invalid record, an empty batch, a half-valid batch");
    // Dead-lettered messages are acknowledged for good: nothing comes back.
    b.publish_records(5..6).await;
    b.wait_rows(6).await;
    b.wait_all_acknowledged().await;
    assert_eq!(b.dead_letters().await, 4);
    assert_eq!(run.health.check(), Ok(()));
    let probe = run.stop().await;
    assert_eq!(Probe::count(&probe.0.duplicates), 0);
    b.finish().await;
}

pub async fn killed_mid_batch_restart_stores_everything_once<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    b.publish_records(0..300).await;
    let run = b.start_with("m1", |p| p.down.store(true, Ordering::SeqCst));
    let probe = run.probe.clone();
    eventually("a batch read and its commit failed", || async { Probe::count(&probe.0.refused) >= 1 }).await;
    run.kill().await;
    assert_eq!(b.rows().await, 0);
    assert_eq!(b.broker.outstanding().await, 300, "nothing acknowledged");
    let run = b.start("m1");
    b.wait_rows(300).await;
    b.wait_all_acknowledged().await;
    let probe = run.stop().await;
    assert_eq!((Probe::count(&probe.0.inserted), Probe::count(&probe.0.duplicates)), (300, 0));
    b.finish().await;
}

pub async fn killed_between_commit_and_ack_redelivers_as_duplicates<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    const N: u64 = 250;
    b.publish_records(0..N).await;
    let run = b.start_with("m1", |p| p.die_after_commit.store(true, Ordering::SeqCst));
    let task_died = tokio::time::timeout(DEADLINE, run.task).await.expect("the task dies after its first commit");
    assert!(task_died.as_ref().is_err_and(|e| e.is_panic()), "{task_died:?}");
    let committed = b.rows().await;
    assert!(committed > 0, "the dead task committed its first batch");
    assert!(b.broker.outstanding().await >= committed, "and acknowledged none of it");

    let run = b.start("m1");
    b.wait_rows(N).await;
    b.wait_all_acknowledged().await;
    let probe = run.stop().await;
    assert_eq!(Probe::count(&probe.0.duplicates), committed, "the redelivered messages were duplicates");
    assert_eq!(Probe::count(&probe.0.inserted), N - committed);
    b.finish().await;
}

pub async fn storage_down_then_back<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    b.publish_records(0..200).await;
    let run = b.start_with("m1", |p| p.down.store(true, Ordering::SeqCst));
    eventually("retries exhausted and reported", || async {
        Probe::count(&run.probe.0.refused) >= 4 && run.health.check().is_err()
    })
    .await;
    let why = run.health.check().expect_err("readiness reports the failing storage");
    assert!(why.contains("storage"), "{why}");
    assert_eq!(b.rows().await, 0);
    assert_eq!(b.broker.outstanding().await, 200, "nothing acknowledged while storage is down");

    run.probe.0.down.store(false, Ordering::SeqCst);
    b.wait_rows(200).await;
    b.wait_all_acknowledged().await;
    eventually("ready again", || async { run.health.check().is_ok() }).await;
    assert_eq!(b.dead_letters().await, 0, "a storage outage dead-letters nothing");
    run.stop().await;
    b.finish().await;
}

pub async fn shutdown_commits_and_acks_the_batch_in_hand<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    b.publish_records(0..50).await;
    let run = b.start_with("m1", |p| p.delay_ms.store(1000, Ordering::SeqCst));
    let probe = run.probe.clone();
    eventually("a commit under way", || async { Probe::count(&probe.0.started) > 0 }).await;
    run.stop().await;
    assert_eq!(b.rows().await, 50, "the batch in hand was committed");
    assert_eq!(b.broker.outstanding().await, 0, "and acknowledged before the source returned");
    b.finish().await;
}

pub async fn published_while_stopped_is_ingested_at_start<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    b.publish_records(0..100).await;
    let run = b.start("m1");
    b.wait_rows(100).await;
    b.wait_all_acknowledged().await;
    run.stop().await;

    b.publish_records(100..300).await;
    assert_eq!(b.broker.outstanding().await, 200, "the group kept its position; nothing new is acknowledged");
    assert_eq!(b.rows().await, 100);
    let run = b.start("m1");
    b.wait_rows(300).await;
    b.wait_all_acknowledged().await;
    let probe = run.stop().await;
    assert_eq!(Probe::count(&probe.0.inserted), 200);
    assert_eq!(Probe::count(&probe.0.duplicates), 0, "nothing before the kept position was delivered again");
    b.finish().await;
}

pub async fn two_members_share_the_work<H: BrokerHarness>(kind: Kind) {
    let b = Bench::<H>::new(kind).await;
    // Slow commits, so that both members have batches outstanding; both
    // set up before anything is published, and the messages arrive paced.
    let slow = |p: &ProbeState| p.delay_ms.store(20, Ordering::SeqCst);
    let (one, two) = (b.start_with("m1", slow), b.start_with("m2", slow));
    eventually("both members ready", || async { one.health.check().is_ok() && two.health.check().is_ok() }).await;
    const N: u64 = 3_000;
    for chunk in (0..N).step_by(100) {
        b.publish_records(chunk..chunk + 100).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.wait_rows(N).await;
    b.wait_all_acknowledged().await;
    let (one, two) = (one.stop().await, two.stop().await);
    let (a, c) = (Probe::count(&one.0.inserted), Probe::count(&two.0.inserted));
    assert_eq!(a + c, N);
    assert!(a > 0 && c > 0, "both members took a share: {a} and {c}");
    assert_eq!(Probe::count(&one.0.duplicates) + Probe::count(&two.0.duplicates), 0);
    b.finish().await;
}

/// Runs the suite against `$harness` (a [`BrokerHarness`]) on SQLite and
/// PostgreSQL: `conformance::sqlite::…` and `conformance::postgres::…`.
#[macro_export]
macro_rules! broker_conformance_suite {
    ($harness:ty) => {
        mod conformance {
            use super::*;
            $crate::broker_conformance_suite!(@backend sqlite, $crate::Kind::Sqlite, $harness);
            $crate::broker_conformance_suite!(@backend postgres, $crate::Kind::Postgres, $harness);
        }
    };
    (@backend $module:ident, $kind:expr, $harness:ty) => {
        mod $module {
            use super::*;
            $crate::broker_conformance_suite!(@tests $kind, $harness;
                every_message_lands_exactly_once,
                poison_is_dead_lettered_and_the_rest_flows,
                killed_mid_batch_restart_stores_everything_once,
                killed_between_commit_and_ack_redelivers_as_duplicates,
                storage_down_then_back,
                shutdown_commits_and_acks_the_batch_in_hand,
                published_while_stopped_is_ingested_at_start,
                two_members_share_the_work,
            );
        }
    };
    (@tests $kind:expr, $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name::<$harness>($kind).await
            }
        )*
    };
}
