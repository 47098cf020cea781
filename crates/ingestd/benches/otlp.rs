//! OpenTelemetry in (issue 21; docs/benchmarks.md, "OTLP in"), each number
//! measured in one run:
//!
//! - **Throughput**: the whole service in-process on a fresh database per
//!   run (SQLite, then PostgreSQL), 8 connections posting pre-built bodies
//!   with new ids: `POST /v1/traces` with 100 spans per request (protobuf,
//!   half of them with GenAI usage, attributes as the OpenAI
//!   instrumentation sets them) against `POST /v1/usage/batch` carrying the
//!   same 50 records per request (the same ids, so the same rows). Arms
//!   alternate per round; usage spans (records) per second and the median
//!   ratio OTLP ÷ JSON.
//! - **Decode cost**: CPU time per span of `opentelemetry-proto`'s own
//!   message types (decode only), of `otlp::decode` (its slim prost messages) +
//!   `otlp::usage_spans` (the mapping to record JSON) + the record decoder,
//!   against the record decoder alone on the JSON batch of the same records.
//!
//! `cargo xtask bench otlp`; `XTASK_BENCH_SECS` (default 5) per arm and
//! round, `XTASK_BENCH_ROUNDS` (default 3).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Any};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::{Value, json};
use testkit::{Kind, TestDatabase};

use common::{Service, env_number};

mod common;

const SPANS: usize = 100;
const CONNECTIONS: usize = 8;
const ORG: &str = "otlp-bench";

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

/// Request `n`: its protobuf body and the JSON batch of the same records.
fn bodies(n: u64, now_ns: u64) -> (Vec<u8>, Vec<u8>) {
    let mut spans = Vec::with_capacity(SPANS);
    let mut records = Vec::with_capacity(SPANS / 2);
    for i in 0..SPANS as u64 {
        let trace_id = (u128::from(n) << 32 | 0xbe0c).to_be_bytes().to_vec();
        let span_id = ((n << 8) | i | 1 << 63).to_be_bytes().to_vec();
        let end = now_ns - (i * 1_000_000);
        let start = end - 800_000_000;
        let usage = i % 2 == 0;
        let (input, output, cached) = (1000 + i as i64, 200 + i as i64, 100);
        let attributes = if usage {
            vec![
                kv("gen_ai.operation.name", Any::StringValue("chat".into())),
                kv("gen_ai.provider.name", Any::StringValue("openai".into())),
                kv("gen_ai.request.model", Any::StringValue("gpt-4o".into())),
                kv("gen_ai.response.model", Any::StringValue("gpt-4o-2024-08-06".into())),
                kv("gen_ai.response.id", Any::StringValue(format!("chatcmpl-{n}-{i}"))),
                kv("gen_ai.request.temperature", Any::DoubleValue(0.2)),
                kv("gen_ai.response.finish_reasons", Any::StringValue("stop".into())),
                kv("server.address", Any::StringValue("api.openai.com".into())),
                kv("gen_ai.usage.input_tokens", Any::IntValue(input)),
                kv("gen_ai.usage.output_tokens", Any::IntValue(output)),
                kv("gen_ai.usage.cache_read.input_tokens", Any::IntValue(cached)),
                kv("user.id", Any::StringValue(format!("user-{}", i % 10))),
            ]
        } else {
            vec![
                kv("http.request.method", Any::StringValue("POST".into())),
                kv("http.route", Any::StringValue("/checkout".into())),
                kv("http.response.status_code", Any::IntValue(200)),
                kv("server.address", Any::StringValue("shop.internal".into())),
                kv("url.path", Any::StringValue("/checkout".into())),
            ]
        };
        if usage {
            let id = model::ids::derived_ordered(end / 1_000_000, &[b"otlp", &trace_id, &span_id]);
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(end)).unwrap();
            records.push(json!({
                "request_id": id,
                "timestamp": at.format(&time::format_description::well_known::Rfc3339).unwrap(),
                "provider": "openai",
                "model": { "name": "gpt-4o-2024-08-06" },
                "organization_id": ORG,
                "project_id": "bench-svc",
                "user_id": format!("user-{}", i % 10),
                "usage": { "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output,
                           "cached_tokens": cached },
                "performance": { "latency_ms": 800.0 },
                "metadata": { "otel": { "trace_id": hex(&trace_id), "span_id": hex(&span_id) } },
            }));
        }
        spans.push(Span {
            trace_id,
            span_id,
            name: if usage { "chat gpt-4o".into() } else { "POST /checkout".into() },
            kind: if usage { 3 } else { 2 },
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            ..Span::default()
        });
    }
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Any::StringValue("bench-svc".into())),
                    kv("ingestd.organization_id", Any::StringValue(ORG.into())),
                    kv("telemetry.sdk.name", Any::StringValue("opentelemetry".into())),
                    kv("telemetry.sdk.language", Any::StringValue("python".into())),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }],
    };
    let batch = serde_json::to_vec(&json!({ "records": Value::Array(records) })).unwrap();
    (request.encode_to_vec(), batch)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Otlp,
    Json,
}

/// Records per second through one arm: a fresh database and service,
/// `CONNECTIONS` clients posting the arm's bodies for `secs`.
async fn run(kind: Kind, arm: Arm, bodies: Arc<Vec<Vec<u8>>>, secs: u64) -> f64 {
    let db = TestDatabase::new(kind).await;
    let service = Service::start(&db, |c| c.rate_limit.enabled = false).await;
    let addr = service.addr;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let began = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (bodies, next, done) = (bodies.clone(), next.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut client = testkit::http::Client::connect(addr).await.expect("connect");
            let (path, content_type) = match arm {
                Arm::Otlp => ("/v1/traces", "application/x-protobuf"),
                Arm::Json => ("/v1/usage/batch", "application/json"),
            };
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = bodies.get(i).expect("more bodies than the run can send").clone();
                let reply = client.send("POST", path, &[("content-type", content_type)], body).await.expect("request");
                assert_eq!(reply.status, 200, "{arm:?}: {:?}", reply.body);
                if arm == Arm::Otlp {
                    assert!(reply.body.is_empty(), "no partial success expected");
                }
                done.fetch_add((SPANS / 2) as u64, Ordering::Relaxed);
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    let elapsed = began.elapsed().as_secs_f64();
    let stored = db.store().await.count_records(Some(ORG)).await.expect("count");
    let sent = done.load(Ordering::Relaxed);
    assert_eq!(stored, sent, "{arm:?}: every record sent is stored once");
    service.stop().await;
    sent as f64 / elapsed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-span CPU cost of decoding: OTLP protobuf → records → decoded
/// records, against the JSON batch → decoded records.
fn decode_cost(otlp_body: &[u8], json_body: &[u8]) {
    let ingestor = model::Ingestor::new(Discard, model::ValidationConfig::default());
    let iterations = 2000;
    let time = |f: &dyn Fn() -> usize| {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let began = Instant::now();
            let mut n = 0;
            for _ in 0..iterations {
                n += f();
            }
            assert_eq!(n, iterations * SPANS / 2);
            samples.push(began.elapsed().as_secs_f64() / (iterations * SPANS) as f64);
        }
        median(samples)
    };
    // The official types (every field, nested values built) for comparison:
    // what `otlp::decode`'s own slim messages save.
    let official = time(&|| {
        let request = ExportTraceServiceRequest::decode(otlp_body).unwrap();
        request.resource_spans[0].scope_spans[0].spans.len() / 2
    });
    let ours = time(&|| {
        let request = otlp::decode(otlp_body, otlp::Encoding::Protobuf).unwrap();
        request.resource_spans[0].scope_spans[0].spans.len() / 2
    });
    let otlp_only = time(&|| {
        let request = otlp::decode(otlp_body, otlp::Encoding::Protobuf).unwrap();
        otlp::usage_spans(&request, None).usage.len()
    });
    let otlp_all = time(&|| {
        let request = otlp::decode(otlp_body, otlp::Encoding::Protobuf).unwrap();
        let spans = otlp::usage_spans(&request, None);
        let raw: Vec<_> = spans.usage.iter().map(|s| s.record.as_deref().unwrap()).collect();
        ingestor.decode(&raw, |_| model::ids::generate()).iter().filter(|r| r.is_ok()).count()
    });
    let json = time(&|| {
        let envelope = model::decode::batch(json_body, 1000).unwrap();
        ingestor.decode(&envelope.records, |_| model::ids::generate()).iter().filter(|r| r.is_ok()).count()
    });
    println!(
        "decode per span (of {SPANS}, half with usage): opentelemetry-proto's types alone {:.2} µs, \
         otlp::decode alone {:.2} µs; otlp::decode + mapping {:.2} µs, + record decoder {:.2} µs; \
         the JSON batch of the same records through the record decoder {:.2} µs (per span of the OTLP request)",
        official * 1e6,
        ours * 1e6,
        otlp_only * 1e6,
        otlp_all * 1e6,
        json * 1e6
    );
}

#[derive(Clone)]
struct Discard;

impl model::RecordSink for Discard {
    async fn store(
        &self,
        records: Vec<model::UsageRecord>,
        _: model::Source,
    ) -> Result<Vec<model::StoreOutcome>, model::SinkError> {
        Ok(vec![model::StoreOutcome::Inserted; records.len()])
    }
}

fn main() {
    let secs = env_number("XTASK_BENCH_SECS", 5) as u64;
    let rounds = env_number("XTASK_BENCH_ROUNDS", 3);
    let now_ns = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap() - 60_000_000_000;
    // Enough distinct requests for the fastest arm's run (ids never repeat
    // within a run; each run has its own database).
    let requests = env_number("XTASK_BENCH_REQUESTS", 6000) as u64;
    let (otlp_bodies, json_bodies): (Vec<_>, Vec<_>) = (0..requests).map(|n| bodies(n, now_ns)).unzip();
    println!(
        "bodies: OTLP protobuf {} bytes, JSON batch {} bytes (100 spans / 50 records)",
        otlp_bodies[0].len(),
        json_bodies[0].len()
    );
    decode_cost(&otlp_bodies[0], &json_bodies[0]);
    let (otlp_bodies, json_bodies) = (Arc::new(otlp_bodies), Arc::new(json_bodies));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let (o, j) = rt.block_on(async {
                if round % 2 == 0 {
                    let j = run(kind, Arm::Json, json_bodies.clone(), secs).await;
                    (run(kind, Arm::Otlp, otlp_bodies.clone(), secs).await, j)
                } else {
                    let o = run(kind, Arm::Otlp, otlp_bodies.clone(), secs).await;
                    (o, run(kind, Arm::Json, json_bodies.clone(), secs).await)
                }
            });
            println!(
                "{kind:?} round {round}: /v1/traces {:.1}k usage spans/s ({:.1}k spans/s), /v1/usage/batch {:.1}k records/s, OTLP/JSON {:.3}",
                o / 1e3,
                2.0 * o / 1e3,
                j / 1e3,
                o / j
            );
            ratios.push(o / j);
        }
        println!(
            "{kind:?}: OTLP/JSON median {:.3} over {rounds} rounds of {secs} s, {CONNECTIONS} connections",
            median(ratios)
        );
    }
}
