//! The whole service with `redis.url` set: entries of the stream are
//! ingested, readiness and /metrics show the source, and nothing is left
//! pending after a stop.

use std::time::{Duration, Instant};

use fred::cmd;
use fred::prelude::{ClientLike, Config as FredConfig};
use fred::types::Value;
use ingestd::Config;
use testkit::redis::{unique, url};
use testkit::{Kind, record_json};

use common::Server;

mod common;

async fn redis(url: &str) -> fred::clients::Client {
    let client = fred::clients::Client::new(FredConfig::from_url(url).unwrap(), None, None, None);
    client.init().await.unwrap_or_else(|e| panic!("cannot reach Redis at {url} ({e})"));
    client
}

async fn call(client: &fred::clients::Client, name: &'static str, args: &[&str]) -> Value {
    let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
    client.custom::<Value, Value>(cmd!(name), args).await.unwrap_or_else(|e| panic!("{name}: {e}"))
}

testkit::on_every_backend!(poison_entries_are_dead_lettered_and_the_source_goes_on);

/// Issue 15 through Redis Streams (see the NATS test of the same name):
/// exactly the four bad entries are dead-lettered, every other record is
/// stored, nothing is left pending, and the source stays ready.
async fn poison_entries_are_dead_lettered_and_the_source_goes_on(kind: Kind) {
    let url = url();
    let (key, group, org) = (unique("poison:usage"), unique("g"), unique("org"));
    let client = redis(&url).await;
    let server = Server::start(kind, |c: &mut Config| {
        c.redis.url = url.clone();
        c.redis.consumer.stream_key = key.clone();
        c.redis.consumer.group = group.clone();
        c.redis.consumer.block_ms = 100;
        c.redis.consumer.read_batch = 8;
    })
    .await;
    testkit::refuse_model(&server.store, "poison").await;
    let mix = common::poison_mix(&org);
    for payload in &mix.payloads {
        call(&client, "XADD", &[&key, "*", "payload", payload]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, dead) =
            (server.count(&org).await, server.store.count_dead_letters(Some(model::Source::Redis)).await.unwrap());
        if (rows, dead) == (mix.rows, mix.dead_letters) {
            break;
        }
        assert!(rows <= mix.rows && dead <= mix.dead_letters, "{rows} rows, {dead} dead letters");
        assert!(Instant::now() < deadline, "{rows} of {} rows, {dead} of {} dead letters", mix.rows, mix.dead_letters);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = server.client().await;
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{:?}", ready.json());
    let metrics = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    let mut restarts = metrics.lines().filter(|l| l.starts_with("ingestd_source_restarts_total{"));
    assert!(
        restarts.clone().count() > 0 && restarts.all(|l| l.ends_with(" 0")),
        "the source never stopped:\n{metrics}"
    );
    server.stop().await;
    let Value::Array(summary) = call(&client, "XPENDING", &[&key, &group]).await else { panic!("XPENDING") };
    assert_eq!(summary.first(), Some(&Value::Integer(0)), "nothing left pending");
    call(&client, "DEL", &[&key]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_entries_are_ingested_and_acked() {
    let url = url();
    let (key, group, org) = (unique("svc:usage"), unique("g"), unique("org"));
    let client = redis(&url).await;
    for i in 0..20u64 {
        let mut record = record_json(&org, i);
        if i % 2 == 0 {
            record.as_object_mut().unwrap().remove("request_id");
        }
        call(&client, "XADD", &[&key, "*", "payload", &record.to_string()]).await;
    }
    call(&client, "XADD", &[&key, "*", "payload", "{broken"]).await;

    let server = Server::start(Kind::Sqlite, |c: &mut Config| {
        c.redis.url = url.clone();
        c.redis.consumer.stream_key = key.clone();
        c.redis.consumer.group = group.clone();
        c.redis.consumer.name = "svc".into();
        c.redis.consumer.block_ms = 100;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.count(&org).await < 20 {
        assert!(Instant::now() < deadline, "the stream's records were not ingested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = server.client().await;
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{:?}", ready.json());
    assert_eq!(ready.json()["components"]["redis"]["status"], "up");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
        let has = |prefix: &str, needle: &str| metrics.lines().any(|l| l.starts_with(prefix) && l.contains(needle));
        if has("ingestd_source_connected{", "source=\"redis\"} 1")
            && has("ingestd_redis_entries_total{", "outcome=\"stored\"")
            && has("ingestd_redis_entries_total{", "outcome=\"dead_lettered\"")
            && has("ingestd_records_total{", "source=\"redis\"")
        {
            break;
        }
        assert!(Instant::now() < deadline, "/metrics lacks the Redis source's series:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The default `consumers = 4`: four members of the group, one name each.
    let Value::Array(consumers) = call(&client, "XINFO", &["CONSUMERS", &key, &group]).await else { panic!("XINFO") };
    let mut names: Vec<String> = consumers
        .iter()
        .map(|c| match c {
            Value::Array(fields) => fields
                .chunks(2)
                .find(|kv| kv[0].as_str().as_deref() == Some("name"))
                .and_then(|kv| kv[1].as_string())
                .expect("a consumer's name"),
            Value::Map(map) => map.get(&"name".into()).and_then(Value::as_string).expect("a consumer's name"),
            other => panic!("XINFO CONSUMERS entry: {other:?}"),
        })
        .collect();
    names.sort();
    assert_eq!(names, ["svc", "svc#2", "svc#3", "svc#4"]);

    let db = server.stop().await;
    let store = storage::Store::connect(&db.config).await.unwrap();
    assert_eq!(store.count_records(Some(&org)).await.unwrap(), 20);
    assert_eq!(store.count_dead_letters(Some(model::Source::Redis)).await.unwrap(), 1);
    let Value::Array(summary) = call(&client, "XPENDING", &[&key, &group]).await else { panic!("XPENDING") };
    assert_eq!(summary.first(), Some(&Value::Integer(0)), "nothing left pending after the stop");
    call(&client, "DEL", &[&key]).await;
}
