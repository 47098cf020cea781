//! The whole service with the NATS source enabled (`nats.url` set), against
//! the shared nats-server with JetStream: messages become rows, readiness
//! lists `nats`, /metrics shows the source's counters.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use ingestd::config::NatsConfig;
use testkit::Kind;
use testkit::nats::unique;

testkit::on_every_backend!(poison_messages_are_dead_lettered_and_the_source_goes_on);

/// Issue 15 through NATS: a timestamp that panicked the decoder, strings
/// PostgreSQL refuses, a record the database refuses inside a batch — each
/// is dead-lettered (exactly these four), every other record is stored
/// (exactly), and the source stays ready throughout.
async fn poison_messages_are_dead_lettered_and_the_source_goes_on(kind: Kind) {
    let nats = NatsConfig {
        url: testkit::nats::url(),
        subject: format!("{}.usage", unique("poison")),
        stream: unique("POISON"),
        consumer: unique("ingestd"),
        idle_wait_ms: 200,
        fetch_batch: 8,
        ..NatsConfig::default()
    };
    let server = Server::start(kind, |c| c.nats = nats.clone()).await;
    testkit::refuse_model(&server.store, "poison").await;
    let org = unique("org");
    let mix = common::poison_mix(&org);
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let mut c = server.client().await;
    let start = Instant::now();
    while c.get("/health/ready").await.status != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for payload in &mix.payloads {
        js.publish(nats.subject.clone(), payload.clone().into()).await.unwrap().await.unwrap();
    }
    let start = Instant::now();
    loop {
        let (rows, dead) =
            (server.count(&org).await, server.store.count_dead_letters(Some(model::Source::Nats)).await.unwrap());
        if (rows, dead) == (mix.rows, mix.dead_letters) {
            break;
        }
        assert!(rows <= mix.rows && dead <= mix.dead_letters, "{rows} rows, {dead} dead letters");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{rows} of {} rows, {dead} of {} dead letters",
            mix.rows,
            mix.dead_letters
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.json());
    let metrics = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    let mut restarts = metrics.lines().filter(|l| l.starts_with("ingestd_source_restarts_total{"));
    assert!(
        restarts.clone().count() > 0 && restarts.all(|l| l.ends_with(" 0")),
        "the source never stopped:\n{metrics}"
    );
    // Nothing comes back: every message was acked or termed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.count(&org).await, mix.rows);
    assert_eq!(server.store.count_dead_letters(Some(model::Source::Nats)).await.unwrap(), mix.dead_letters);
    server.stop().await;
    js.delete_stream(&nats.stream).await.unwrap();
}

fn record(org: &str, i: u64) -> String {
    format!(
        r#"{{"timestamp":"2026-01-01T00:00:00Z","provider":"openai","model":{{"name":"gpt-4o"}},"organization_id":"{org}","usage":{{"prompt_tokens":{i},"completion_tokens":5,"total_tokens":{}}}}}"#,
        i + 5
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_to_nats_become_rows() {
    let nats = NatsConfig {
        url: testkit::nats::url(),
        subject: format!("{}.usage", unique("svc")),
        stream: unique("SVC"),
        consumer: unique("ingestd"),
        idle_wait_ms: 200,
        ..NatsConfig::default()
    };
    let server = Server::start(Kind::Sqlite, |c| c.nats = nats.clone()).await;
    let mut c = server.client().await;

    // Ready once the source has created the stream and the consumer.
    let start = Instant::now();
    loop {
        let ready = c.get("/health/ready").await;
        if ready.status == 200 {
            assert_eq!(ready.json()["components"]["nats"]["status"], "up");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never ready: {}", ready.json());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let org = unique("org");
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    // The default `fetchers = 4`: four pull requests wait on the idle consumer.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_stream(&nats.stream).await.unwrap().get_consumer(&nats.consumer).await.unwrap();
    let start = Instant::now();
    let mut waiting = 0;
    while waiting != 4 {
        assert!(start.elapsed() < Duration::from_secs(10), "{waiting} pull requests waiting, not 4");
        waiting = consumer.info().await.unwrap().num_waiting;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batch = format!(r#"{{"records":[{},{}]}}"#, record(&org, 100), record(&org, 101));
    for payload in (0..50).map(|i| record(&org, i)).chain([batch, "{not json".to_owned()]) {
        js.publish(nats.subject.clone(), payload.into()).await.unwrap().await.unwrap();
    }
    let start = Instant::now();
    let dead = || server.store.count_dead_letters(Some(model::Source::Nats));
    while server.count(&org).await < 52 || dead().await.unwrap() < 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "{} of 52 rows", server.count(&org).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The lag gauge is read from the server every few seconds, so the
    // scrape is repeated until it has been.
    let start = Instant::now();
    let mut metrics = String::new();
    while !metrics.contains("ingestd_nats_consumer_pending") && start.elapsed() < Duration::from_secs(15) {
        metrics = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for expected in [
        r#"ingestd_source_connected{source="nats"} 1"#,
        r#"ingestd_nats_messages_total{outcome="stored"}"#,
        r#"ingestd_nats_messages_total{outcome="dead_lettered"}"#,
        r#"ingestd_records_total{source="nats",outcome="accepted"}"#,
        "ingestd_nats_fetch_batch_size",
        "ingestd_nats_consumer_pending",
    ] {
        assert!(metrics.contains(expected), "no {expected} in\n{metrics}");
    }
    // Exactly: nothing stored twice, only the broken message dead-lettered.
    assert_eq!(server.count(&org).await, 52);
    assert_eq!(dead().await.unwrap(), 1);
    let db = server.stop().await;
    drop(db);
    js.delete_stream(&nats.stream).await.unwrap();
}
