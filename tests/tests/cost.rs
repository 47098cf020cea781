//! Cost per record (SPEC §9) through the whole service: records sent over
//! HTTP come back from the database with the cost a hand computation gives,
//! the price row they used, and `pricing`; unknown models are stored
//! unpriced and counted, never rejected.

use serde_json::{Value, json};
use testkit::{Kind, StoredCost};

use common::Server;

mod common;

testkit::on_every_backend!(
    records_over_http_are_stored_with_their_exact_cost,
    records_from_nats_and_redis_are_stored_with_their_exact_cost,
);

/// A record of `org` as a client sends it, timestamped now (the catalog
/// snapshot is in force from the Unix epoch on).
fn record(org: &str, provider: &str, model: &str, usage: Value) -> Value {
    json!({
        "timestamp": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
        "provider": provider,
        "model": { "name": model },
        "organization_id": org,
        "usage": usage,
    })
}

fn usage(prompt: u64, cached: u64, cache_write: u64, completion: u64) -> Value {
    let mut u =
        json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
    if cached > 0 {
        u["cached_tokens"] = json!(cached);
    }
    if cache_write > 0 {
        u["cache_write_tokens"] = json!(cache_write);
    }
    u
}

fn priced(model: &str, nano: i64, key: &str, cache_write: Option<i64>) -> StoredCost {
    StoredCost {
        model_name: model.into(),
        cost_nano_usd: Some(nano),
        price_model: Some(key.into()),
        pricing: "priced".into(),
        cache_write_tokens: cache_write,
    }
}

/// Three records of `org` and the costs they must be stored with (worked
/// out in `records_over_http_are_stored_with_their_exact_cost`).
fn three(org: &str) -> ([Value; 3], [StoredCost; 3]) {
    (
        [
            record(org, "openai", "gpt-4o", usage(1234, 1024, 0, 56)),
            record(org, "anthropic", "claude-sonnet-4-5", usage(5000, 1500, 3000, 800)),
            record(org, "gemini", "gemini-2.5-pro", usage(200_001, 0, 0, 1000)),
        ],
        [
            priced("gpt-4o", 2_365_000, "gpt-4o", None),
            priced("claude-sonnet-4-5", 25_200_000, "claude-sonnet-4-5", Some(3000)),
            priced("gemini-2.5-pro", 515_002_500, "gemini/gemini-2.5-pro", None),
        ],
    )
}

/// The stream sources price on the same path: a NATS message and a Redis
/// entry each carrying the three records as a batch.
async fn records_from_nats_and_redis_are_stored_with_their_exact_cost(kind: Kind) {
    use fred::prelude::{ClientLike, Config as FredConfig, KeysInterface, StreamsInterface};
    let nats = ingestd::config::NatsConfig {
        url: testkit::nats::url(),
        subject: format!("{}.usage", testkit::nats::unique("cost")),
        stream: testkit::nats::unique("COST"),
        consumer: testkit::nats::unique("ingestd"),
        idle_wait_ms: 100,
        ..Default::default()
    };
    let redis_url = testkit::redis::url();
    let (key, group) = (testkit::redis::unique("cost:usage"), testkit::redis::unique("g"));
    let server = Server::start(kind, |c| {
        c.nats = nats.clone();
        c.redis.url = redis_url.clone();
        c.redis.consumer.stream_key = key.clone();
        c.redis.consumer.group = group.clone();
        c.redis.consumer.block_ms = 100;
    })
    .await;
    let (via_nats, via_redis) = (testkit::nats::unique("org-nats"), testkit::redis::unique("org-redis"));
    let (records, expected_nats) = three(&via_nats);
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let mut c = server.client().await;
    let start = std::time::Instant::now();
    while c.get("/health/ready").await.status != 200 {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let batch = json!({ "records": records }).to_string();
    js.publish(nats.subject.clone(), batch.into()).await.unwrap().await.unwrap();
    let (records, expected_redis) = three(&via_redis);
    let redis = fred::clients::Client::new(FredConfig::from_url(&redis_url).unwrap(), None, None, None);
    redis.init().await.unwrap();
    let _: String =
        redis.xadd(&key, false, None, "*", ("payload", json!({ "records": records }).to_string())).await.unwrap();

    for (org, expected) in [(&via_nats, &expected_nats), (&via_redis, &expected_redis)] {
        testkit::conformance::eventually("three rows", || async { server.count(org).await == 3 }).await;
        assert_eq!(&testkit::costs(&server.store, org).await, expected, "{org}");
    }
    server.stop().await;
    js.delete_stream(&nats.stream).await.unwrap();
    let _: i64 = redis.del(&key).await.unwrap();
}

/// The cost counters for openai and gemini and the unpriced counter for
/// `other`, and the whole exposition.
async fn counters(c: &mut testkit::http::Client) -> ([u64; 3], String) {
    let metrics = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    let value = |name: &str| -> u64 {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    let found = [
        value(r#"ingestd_cost_nano_usd_total{provider="openai"}"#),
        value(r#"ingestd_cost_nano_usd_total{provider="gemini"}"#),
        value(r#"ingestd_records_unpriced_total{provider="other"}"#),
    ];
    (found, metrics)
}

async fn records_over_http_are_stored_with_their_exact_cost(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let org = format!("org-cost-{}", uuid::Uuid::now_v7().simple());
    let records = [
        // Unknown provider and model: stored, unpriced.
        record(&org, "my-gateway", "mystery-model", usage(7, 0, 0, 3)),
        // GPT-4o, 1024 of 1234 prompt tokens cached: 210 × 2.5e-6 +
        // 1024 × 1.25e-6 + 56 × 1e-5 = 0.002365 USD.
        record(&org, "OpenAI", "gpt-4o", usage(1234, 1024, 0, 56)),
        // Claude Sonnet 4.5 writing 3000 prompt tokens to the cache, reading
        // 1500: 500 × 3e-6 + 1500 × 3e-7 + 3000 × 3.75e-6 + 800 × 1.5e-5 = 0.0252 USD.
        record(&org, "anthropic", "claude-sonnet-4-5", usage(5000, 1500, 3000, 800)),
        // Gemini 2.5 Pro one token above its 200k tier, named as
        // OpenTelemetry names the provider: 200001 × 2.5e-6 + 1000 × 1.5e-5
        // = 0.5150025 USD.
        record(&org, "gcp.gemini", "gemini-2.5-pro", usage(200_001, 0, 0, 1000)),
    ];
    let (before, _) = counters(&mut c).await;
    let reply = c.post_json("/v1/usage/batch", &json!({ "records": records })).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(reply.json()["accepted"], 4);

    let unpriced = StoredCost {
        model_name: "mystery-model".into(),
        cost_nano_usd: None,
        price_model: None,
        pricing: "unpriced".into(),
        cache_write_tokens: None,
    };
    assert_eq!(
        testkit::costs(&server.store, &org).await,
        [
            unpriced,
            priced("gpt-4o", 2_365_000, "gpt-4o", None),
            priced("claude-sonnet-4-5", 25_200_000, "claude-sonnet-4-5", Some(3000)),
            priced("gemini-2.5-pro", 515_002_500, "gemini/gemini-2.5-pro", None),
        ]
    );

    // Cached plus cache-write tokens beyond the prompt: a coded rejection.
    let bad = record(&org, "anthropic", "claude-sonnet-4-5", usage(100, 60, 41, 1));
    let reply = c.post_json("/v1/usage", &bad).await;
    assert_eq!(reply.status, 422, "{}", reply.json());
    assert_eq!(reply.json()["errors"][0]["code"], "cache_exceeds_prompt", "{}", reply.json());

    // The counters grew by exactly these records (the recorder is global to
    // the test process, which other tests may share).
    let (after, metrics) = counters(&mut c).await;
    let grown: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(grown, [2_365_000, 515_002_500, 1], "{metrics}");
    assert!(!metrics.contains("my-gateway"), "a client's provider never becomes a label:\n{metrics}");
    server.stop().await;
}
