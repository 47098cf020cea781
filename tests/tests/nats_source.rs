//! The whole service with the NATS source enabled (`nats.url` set), against
//! the shared nats-server with JetStream: messages become rows, readiness
//! lists `nats`, /metrics shows the source's counters.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use ingestd::config::NatsConfig;
use testkit::Kind;
use testkit::nats::unique;

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
    let batch = format!(r#"{{"records":[{},{}]}}"#, record(&org, 100), record(&org, 101));
    for payload in (0..50).map(|i| record(&org, i)).chain([batch, "{not json".to_owned()]) {
        js.publish(nats.subject.clone(), payload.into()).await.unwrap().await.unwrap();
    }
    let start = Instant::now();
    while server.count(&org).await < 52 {
        assert!(start.elapsed() < Duration::from_secs(30), "{} of 52 rows", server.count(&org).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let metrics = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
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
    let db = server.stop().await;
    drop(db);
    js.delete_stream(&nats.stream).await.unwrap();
}
