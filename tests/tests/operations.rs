//! What operators read: the metrics the Grafana dashboard and the
//! Prometheus rules query exist on `/metrics` of a running service with
//! every part configured, and the OpenAPI document's request examples are
//! accepted by the server as documented.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fred::cmd;
use fred::prelude::{ClientLike, Config as FredConfig};
use fred::types::Value as RedisValue;
use ingestd::Config;
use ingestd::config::{AuthMode, NatsConfig, RateLimitBackend};
use serde_json::{Value, json};
use testkit::http::{Client, Reply};
use testkit::{Kind, record_json};

use common::Server;

mod common;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `ingestd_…` and `process_…` metric name in `text` (recording
/// rules are named `ingestd:…` and are not matched).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["ingestd_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

async fn post(c: &mut Client, path: &str, key: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let bearer = format!("Bearer {key}");
    c.send("POST", path, &[("content-type", content_type), ("authorization", bearer.as_str())], body).await.unwrap()
}

async fn redis_call(client: &fred::clients::Client, name: &'static str, args: &[&str]) -> RedisValue {
    let args: Vec<RedisValue> = args.iter().map(|a| RedisValue::from(*a)).collect();
    client.custom::<RedisValue, RedisValue>(cmd!(name), args).await.unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Each metric the dashboard and the alert rules query is on `/metrics`
/// after a short load through every way in (HTTP, OTLP, NATS, Redis, a
/// bad key, a record without a price, a message that cannot be stored),
/// with the Redis rate limiter and API keys on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_rules_query_only_metrics_that_are_exposed() {
    let dashboard = std::fs::read_to_string(root().join("deploy/grafana/ingestd.json")).unwrap();
    serde_json::from_str::<Value>(&dashboard).expect("the dashboard is JSON");
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/ingestd-rules.yml")).unwrap();
    let queried: BTreeSet<String> = metric_names(&dashboard).into_iter().chain(metric_names(&rules)).collect();
    assert!(queried.len() > 30, "{queried:?}");

    let redis_url = testkit::redis::url();
    let nats = NatsConfig {
        url: testkit::nats::url(),
        subject: format!("{}.usage", testkit::nats::unique("ops")),
        stream: testkit::nats::unique("OPS"),
        consumer: testkit::nats::unique("ingestd"),
        idle_wait_ms: 100,
        ..NatsConfig::default()
    };
    let (stream_key, group) = (testkit::redis::unique("ops:usage"), testkit::redis::unique("g"));
    let server = Server::start(Kind::Sqlite, |c: &mut Config| {
        c.auth.mode = AuthMode::ApiKey;
        c.rate_limit.backend = RateLimitBackend::Redis;
        c.redis.url = redis_url.clone();
        c.redis.consumer.stream_key = stream_key.clone();
        c.redis.consumer.group = group.clone();
        c.redis.consumer.block_ms = 100;
        c.nats = nats.clone();
    })
    .await;
    let key = server.first_key.clone().expect("a service key at first start");
    let org = testkit::redis::unique("org");
    let mut c = server.client().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get("/health/ready").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // HTTP: a priced record, an unpriced one, a refused one, a bad key.
    let mut unpriced = record_json(&org, 1);
    unpriced["model"]["name"] = json!("no-such-model-anywhere");
    let mut invalid = record_json(&org, 2);
    invalid["usage"]["total_tokens"] = json!(1);
    for (record, status) in [(record_json(&org, 0), 200), (unpriced, 200), (invalid, 422)] {
        let reply = post(&mut c, "/v1/usage", &key, "application/json", serde_json::to_vec(&record).unwrap()).await;
        assert_eq!(reply.status, status, "{:?}", reply.body);
    }
    let wrong = post(&mut c, "/v1/usage", "ik_live_wrong", "application/json", b"{}".to_vec()).await;
    assert_eq!(wrong.status, 401);
    // OTLP: the document's example (one usage span) for this organization.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(root().join("docs/openapi.json")).unwrap()).unwrap();
    let traces = doc["paths"]["/v1/traces"]["post"]["requestBody"]["content"]["application/json"]["example"].clone();
    let traces = serde_json::to_string(&traces).unwrap().replace("\"acme\"", &format!("\"{org}\""));
    assert_eq!(post(&mut c, "/v1/traces", &key, "application/json", traces.into_bytes()).await.status, 200);
    // NATS and Redis: a record each, and a message that is dead-lettered.
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    for (i, payload) in [record_json(&org, 10).to_string(), "not json".to_owned()].into_iter().enumerate() {
        js.publish(nats.subject.clone(), payload.into()).await.unwrap().await.unwrap_or_else(|e| panic!("{i}: {e}"));
    }
    let redis = fred::clients::Client::new(FredConfig::from_url(&redis_url).unwrap(), None, None, None);
    redis.init().await.unwrap();
    for payload in [record_json(&org, 20).to_string(), "not json".to_owned()] {
        redis_call(&redis, "XADD", &[&stream_key, "*", "payload", &payload]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, dead) = (server.count(&org).await, server.store.count_dead_letters(None).await.unwrap());
        if rows == 5 && dead == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows} of 5 rows, {dead} of 2 dead letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The sources read their lag every 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let text = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
        let exposed: BTreeSet<&str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        let missing: Vec<&String> = queried.iter().filter(|n| !exposed.contains(n.as_str())).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(missing.is_empty(), "queried by the dashboard or the rules, not on /metrics: {missing:?}");
    server.stop().await;
    redis_call(&redis, "DEL", &[&stream_key]).await;
}

/// The request body examples of docs/openapi.json, posted as they are to a
/// server with API keys: each gets the first success status its operation
/// documents.
#[tokio::test]
async fn every_request_example_of_the_openapi_document_is_accepted() {
    let server = Server::start(Kind::Sqlite, |c: &mut Config| c.auth.mode = AuthMode::ApiKey).await;
    let keys = server.keys.as_ref().unwrap();
    let admin = keys.create(auth::Scope::Admin, None, None, false, auth::Permissions::WRITE).await.unwrap().key;
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(root().join("docs/openapi.json")).unwrap()).unwrap();
    let mut c = server.client().await;
    let mut posted = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let Some(content) = operation["requestBody"]["content"].as_object() else { continue };
            let success = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|s| s.starts_with('2'))
                .min()
                .unwrap_or_else(|| panic!("{method} {path} documents no success"))
                .parse::<u16>()
                .unwrap();
            for (content_type, media) in content {
                let examples: Vec<&Value> = match (&media["example"], media["examples"].as_object()) {
                    (Value::Null, Some(named)) => named.values().map(|e| &e["value"]).collect(),
                    (example, _) => vec![example],
                };
                assert!(!examples.is_empty() && !examples[0].is_null(), "{method} {path} {content_type}: no example");
                for example in examples {
                    let uri = path.replace("{org}", "acme");
                    let bearer = format!("Bearer {admin}");
                    let headers = [("content-type", content_type.as_str()), ("authorization", bearer.as_str())];
                    let body = serde_json::to_vec(example).unwrap();
                    let reply = c.send(&method.to_uppercase(), &uri, &headers, body).await.unwrap();
                    assert_eq!(reply.status, success, "{method} {path}: {}", String::from_utf8_lossy(&reply.body));
                    posted += 1;
                }
            }
        }
    }
    assert!(posted >= 6, "only {posted} examples posted");
    // The three ingestion examples are four distinct records.
    assert_eq!(server.count("acme").await, 4);
    server.stop().await;
}
