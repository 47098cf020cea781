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

/// Issue 23: three `nats-server`s in one JetStream cluster; ingestd is given
/// all three URLs and creates the stream with 3 replicas. The stream's
/// leader is killed (SIGKILL) while messages are published and consumed:
/// every message becomes exactly one row (none lost; a publish retried
/// after an unanswered ack is one row by its `request_id`), consumption
/// goes on within 10 s of the cluster taking publishes again, and nothing
/// is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_nothing_when_the_stream_leader_is_killed() {
    const MESSAGES: u64 = 300;
    let mut cluster = testkit::nats::NatsCluster::start(3);
    let nats = NatsConfig {
        url: cluster.url(),
        subject: format!("{}.usage", unique("cluster")),
        stream: unique("CLUSTER"),
        stream_replicas: 3,
        consumer: unique("ingestd"),
        idle_wait_ms: 200,
        fetch_batch: 20,
        ..NatsConfig::default()
    };
    // ingestd retries its setup until the cluster has elected a meta leader.
    let server = Server::start(testkit::Kind::Sqlite, |c| c.nats = nats.clone()).await;
    let mut c = server.client().await;
    let start = Instant::now();
    while c.get("/health/ready").await.status != 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "never ready: {}", c.get("/health/ready").await.json());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.urls().iter().map(|u| u.parse().unwrap()).collect::<Vec<async_nats::ServerAddr>>())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&nats.stream).await.unwrap();
    // The new stream's replicas elect their leader.
    let start = Instant::now();
    let leader = loop {
        let info = stream.info().await.unwrap().clone();
        assert_eq!(info.config.num_replicas, 3, "created with nats.stream_replicas");
        if let Some(leader) = info.cluster.and_then(|c| c.leader) {
            break leader;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the stream never elected a leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader: usize = leader.rsplit("-n").next().unwrap().parse().unwrap();

    let org = unique("org");
    let publish = |i: u64| {
        let (js, subject, org) = (js.clone(), nats.subject.clone(), org.clone());
        async move {
            let payload = format!(
                r#"{{"request_id":"00000000-0000-4000-8000-{i:012x}","timestamp":"2026-01-01T00:00:00Z","provider":"openai","model":{{"name":"gpt-4o"}},"organization_id":"{org}","usage":{{"prompt_tokens":{i},"completion_tokens":5,"total_tokens":{}}}}}"#,
                i + 5
            );
            // Until the cluster acknowledges it: an unanswered publish is
            // sent again (JetStream's own dedupe by Nats-Msg-Id, and
            // ingestd's by request_id, keep it one row).
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let message = async_nats::jetstream::message::PublishMessage::build()
                    .message_id(format!("{org}-{i}"))
                    .payload(payload.clone().into());
                let sent = js.send_publish(subject.clone(), message).await;
                if let Ok(ack) = sent
                    && ack.await.is_ok()
                {
                    return;
                }
                assert!(Instant::now() < deadline, "message {i} was never acknowledged");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    for i in 0..MESSAGES / 3 {
        publish(i).await;
    }
    cluster.kill(leader);
    let killed = Instant::now();
    let rows_at_kill = server.count(&org).await;
    let mut published_again = None;
    for i in MESSAGES / 3..MESSAGES {
        publish(i).await;
        published_again.get_or_insert_with(|| killed.elapsed());
    }
    let mut resumed = None;
    loop {
        let rows = server.count(&org).await;
        if resumed.is_none() && rows > rows_at_kill.max(MESSAGES / 3) {
            resumed = Some(killed.elapsed());
        }
        if rows == MESSAGES {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(90), "{rows} of {MESSAGES} rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Measured from the kill, or from when the cluster took publishes again
    // if that is later: JetStream's elections (4–9 s in nats-server 2.9)
    // bound the publishers, not ingestd.
    let (resumed, published_again) = (resumed.unwrap(), published_again.unwrap());
    assert!(
        resumed.saturating_sub(published_again) < Duration::from_secs(10),
        "consumption resumed {resumed:?} after the kill; the first publish was acknowledged {published_again:?} after it"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.count(&org).await, MESSAGES, "nothing stored twice");
    assert_eq!(server.store.count_dead_letters(Some(model::Source::Nats)).await.unwrap(), 0);
    eprintln!("consumption resumed {resumed:?} after the stream leader was killed (publishes {published_again:?})");
    server.stop().await;
}
