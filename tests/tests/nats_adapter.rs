//! What only the NATS source does, against a real nats-server with
//! JetStream and a real store (the contract both sources keep is
//! `nats_conformance.rs`). Each test has its own stream, subject, consumer and organization;
//! tests that kill the server start their own (`ThrowawayNats`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage, stream};
use broker::{Health, RetryConfig};
use ingest_nats::{Error, NatsConfig, NatsSource};
use model::{Ingestor, Source, ValidationConfig};
use storage::{Store, Writer, WriterConfig};
use testkit::conformance::Probe;
use testkit::nats::{ThrowawayNats, unique};
use testkit::{Kind, TestDatabase};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

struct Harness {
    _db: TestDatabase,
    store: Store,
    writer: Writer,
    config: NatsConfig,
    js: jetstream::Context,
    org: String,
}

impl Harness {
    async fn new(kind: Kind, url: &str) -> Harness {
        let db = TestDatabase::new(kind).await;
        let store = db.store().await;
        let writer = Writer::spawn(store.clone(), WriterConfig::default());
        let config = NatsConfig {
            url: url.to_owned(),
            subject: format!("{}.usage", unique("t")),
            stream: unique("S"),
            consumer: unique("c"),
            ack_wait_secs: 5,
            idle_wait_ms: 200,
            ..NatsConfig::default()
        };
        let client = async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach NATS at {url} ({e}); start `nats-server -js`"));
        Harness { _db: db, store, writer, config, js: jetstream::new(client), org: unique("org") }
    }

    async fn shared(kind: Kind) -> Harness {
        Harness::new(kind, &testkit::nats::url()).await
    }

    fn probe(&self) -> Probe {
        Probe::new(self.writer.handle())
    }

    fn source(&self, probe: &Probe, health: &Health) -> NatsSource<Probe, Store> {
        NatsSource::new(
            self.config.clone(),
            Ingestor::new(probe.clone(), ValidationConfig::default()),
            self.store.clone(),
            retry(),
            health.clone(),
        )
    }

    /// Creates the stream as an operator would (the source uses it as it is).
    async fn create_stream(&self) {
        self.js
            .create_stream(stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![self.config.subject.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn publish(&self, payloads: impl IntoIterator<Item = String>) {
        let mut acks = Vec::new();
        for payload in payloads {
            acks.push(self.js.publish(self.config.subject.clone(), payload.into()).await.unwrap());
            if acks.len() >= 512 {
                for ack in acks.drain(..) {
                    ack.await.unwrap();
                }
            }
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }

    async fn rows(&self) -> u64 {
        self.store.count_records(Some(&self.org)).await.unwrap()
    }

    async fn wait_rows(&self, expected: u64) {
        let start = Instant::now();
        loop {
            let n = self.rows().await;
            if n == expected {
                return;
            }
            assert!(n < expected, "{n} rows, more than the {expected} published");
            assert!(start.elapsed() < DEADLINE, "{n} of {expected} rows after {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn consumer(&self) -> PullConsumer {
        self.js.get_stream(&self.config.stream).await.unwrap().get_consumer(&self.config.consumer).await.unwrap()
    }

    /// Waits until the server has nothing left to deliver and nothing unacked.
    async fn wait_all_acked(&self) {
        let mut consumer = self.consumer().await;
        let start = Instant::now();
        loop {
            let info = consumer.info().await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "still {} pending, {} unacked", info.num_pending, info.num_ack_pending);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Harness {
    /// Deletes the test's stream (and with it the consumer) from the server.
    fn drop(&mut self) {
        let (url, stream) = (self.config.url.clone(), self.config.stream.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let client = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await.ok()?.ok()?;
                jetstream::new(client).delete_stream(stream).await.ok()
            })
        })
        .join();
    }
}

fn retry() -> RetryConfig {
    RetryConfig { max_retries: 2, initial_delay_ms: 50, max_delay_ms: 500, backoff_multiplier: 2.0 }
}

fn spawn(source: NatsSource<Probe, Store>) -> (CancellationToken, JoinHandle<Result<(), Error>>) {
    let token = CancellationToken::new();
    (token.clone(), tokio::spawn(source.run(token)))
}

async fn stop(token: CancellationToken, task: JoinHandle<Result<(), Error>>) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the source stops within 15 s")
        .unwrap()
        .expect("the source stops cleanly");
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A valid record of `org` without `request_id` (the source derives one).
fn record(org: &str, i: u64) -> String {
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    format!(
        r#"{{"timestamp":"{now}","provider":"openai","model":{{"name":"gpt-4o"}},"organization_id":"{org}","usage":{{"prompt_tokens":{i},"completion_tokens":5,"total_tokens":{}}}}}"#,
        i + 5
    )
}

/// A record that fails validation (token sum).
fn bad_record(org: &str) -> String {
    record(org, 1).replace(r#""total_tokens":6"#, r#""total_tokens":999"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_created_and_poison_does_not_stop_it() {
    let h = Harness::shared(Kind::Sqlite).await;
    let (probe, health) = (h.probe(), Health::new());
    let (token, task) = spawn(h.source(&probe, &health));
    wait_until("the source created the stream", || health.check().is_ok()).await;
    let org = &h.org;
    h.publish([
        record(org, 1),
        "{not json".to_owned(),
        record(org, 2),
        bad_record(org),
        r#"{"records":[]}"#.to_owned(),
        record(org, 3),
    ])
    .await;
    h.wait_rows(3).await;
    h.wait_all_acked().await;
    let letters = h.store.count_dead_letters(Some(Source::Nats)).await.unwrap();
    assert_eq!(letters, 3, "bad JSON, a failed validation and an empty batch are dead-lettered");
    // Terminated, not nak'ed: nothing comes back.
    h.publish([record(org, 4)]).await;
    h.wait_rows(4).await;
    h.wait_all_acked().await;
    assert_eq!(h.store.count_dead_letters(Some(Source::Nats)).await.unwrap(), 3);
    assert_eq!(Probe::count(&probe.state().duplicates), 0);
    stop(token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_mid_stream_everything_lands_once() {
    let mut nats = ThrowawayNats::start();
    let h = Harness::new(Kind::Sqlite, &nats.url()).await;
    let (probe, health) = (h.probe(), Health::new());
    let (token, task) = spawn(h.source(&probe, &health));
    wait_until("the source created the stream", || health.check().is_ok()).await;

    // The publisher retries until the server acknowledges; the message id
    // lets JetStream drop a retried publish that had in fact been stored.
    let n = 3000u64;
    let publisher = {
        let (js, subject, org) = (h.js.clone(), h.config.subject.clone(), h.org.clone());
        tokio::spawn(async move {
            for i in 0..n {
                let payload = record(&org, i);
                loop {
                    let msg = PublishMessage::build().payload(payload.clone().into()).message_id(format!("m-{i}"));
                    match js.send_publish(subject.clone(), msg).await {
                        Ok(ack) => match ack.await {
                            Ok(_) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        },
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        })
    };
    let start = Instant::now();
    while h.rows().await < 500 {
        assert!(start.elapsed() < DEADLINE, "ingestion did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nats.kill();
    wait_until("readiness reports the lost connection", || health.check().is_err()).await;
    assert!(!health.connected());
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    publisher.await.unwrap();
    h.wait_rows(n).await;
    h.wait_all_acked().await;
    assert_eq!(h.rows().await, n);
    wait_until("readiness recovers", || health.check().is_ok()).await;
    stop(token, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_commits_send_progress_so_nothing_is_redelivered() {
    let mut h = Harness::shared(Kind::Sqlite).await;
    h.config.ack_wait_secs = 1;
    // One fetch loop, started once all 20 are published: it takes them in
    // one batch, so every one of them waits on the slow commit.
    h.config.fetchers = 1;
    h.create_stream().await;
    let (slow, other) = (h.probe(), h.probe());
    slow.state().delay_ms.store(3000, Ordering::SeqCst);
    h.publish((0..20).map(|i| record(&h.org, i))).await;
    let (ts, js) = spawn(h.source(&slow, &Health::new()));
    wait_until("the slow process is committing", || Probe::count(&slow.state().started) > 0).await;
    // A second process on the same consumer would get anything redelivered.
    let (to, jo) = spawn(h.source(&other, &Health::new()));
    h.wait_rows(20).await;
    h.wait_all_acked().await;
    assert_eq!(Probe::count(&slow.state().inserted), 20, "the slow commit held on to its messages");
    assert_eq!(Probe::count(&other.state().started), 0, "nothing was redelivered to the other process");
    stop(ts, js).await;
    stop(to, jo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_without_the_subject_is_reported() {
    let h = Harness::shared(Kind::Sqlite).await;
    h.js.create_stream(stream::Config {
        name: h.config.stream.clone(),
        subjects: vec![format!("{}.elsewhere", unique("t"))],
        ..Default::default()
    })
    .await
    .unwrap();
    let (probe, health) = (h.probe(), Health::new());
    let (token, task) = spawn(h.source(&probe, &health));
    let start = Instant::now();
    let why = loop {
        match health.check() {
            Err(why) if why.contains("do not include") => break why,
            _ => {
                assert!(start.elapsed() < DEADLINE, "no mismatch reported: {:?}", health.check());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(why.contains(&h.config.stream) && why.contains(&h.config.subject), "{why}");
    stop(token, task).await;
}
