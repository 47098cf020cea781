//! OpenTelemetry in (SPEC §11): `POST /v1/traces` through the whole service,
//! on a real socket, on SQLite and PostgreSQL, fed by real exporters:
//!
//! - the OpenTelemetry Python SDK with its OTLP/HTTP protobuf exporter
//!   (`tests/otlp/export.py`, configured only by the standard `OTEL_*`
//!   variables), emitting spans in the current GenAI conventions, the older
//!   `gen_ai.system` + `prompt_tokens` spelling, OpenLLMetry's `llm.usage.*`,
//!   cache counts reported apart from the input, and a span without usage;
//!   stored rows checked field by field, costs to the nano-USD; a
//!   re-export is all duplicates; tenancy (an organization key's spans land
//!   in its organization whatever the resource says; a service key's go
//!   where the header, else the resource, says);
//! - the Rust `opentelemetry-otlp` exporter with the JSON encoding;
//! - hand-written bodies for what exporters do not send: OTLP/JSON quirks,
//!   rejected usage spans in `partial_success` (both encodings), 400, 413
//!   (gzip bomb included), 415, 429, 403; `auth.mode = "none"`.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Command;

use ingestd::Config;
use ingestd::config::{AuthMode, PolicyConfig};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message as _;
use serde_json::{Value, json};
use testkit::Kind;
use testkit::http::{Client, Reply};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use common::Server;

mod common;

testkit::on_every_backend!(
    python_sdk_spans_are_stored_field_by_field,
    service_keys_take_the_header_then_the_resource,
    the_rust_exporter_with_json_encoding_is_stored,
    rejected_usage_spans_are_counted_in_partial_success,
);

fn with_keys(c: &mut Config) {
    c.auth.mode = AuthMode::ApiKey;
}

async fn key(server: &Server, scope: auth::Scope, org: Option<&str>, permissions: auth::Permissions) -> String {
    let keys = server.keys.as_ref().expect("auth.mode = api_key");
    keys.create(scope, org.map(str::to_owned), None, false, permissions).await.unwrap().key
}

/// Runs `tests/otlp/export.py` against `server` with `env` (the standard
/// `OTEL_*` variables) and returns what it printed.
async fn export_py(server: &Server, bearer: &str, env: &[(&str, &str)], args: &[&str]) -> Value {
    let python = testkit::python::otel_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/otlp/export.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(args);
    cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("http://{}/v1/traces", server.addr));
    // Header values are URL-encoded in this variable (the space of "Bearer ").
    cmd.env("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer%20{bearer}"));
    cmd.env("OTEL_RESOURCE_ATTRIBUTES", "service.name=checkout");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run python");
    assert!(
        output.status.success(),
        "export.py failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("export.py prints JSON")
}

/// Every stored record of `org`, newest first, through the read endpoint.
async fn rows(c: &mut Client, admin_key: &str, org: &str) -> Vec<Value> {
    let bearer = format!("Bearer {admin_key}");
    let path = format!("/v1/usage/records?organization_id={org}&limit=1000");
    let reply = c.send("GET", &path, &[("authorization", bearer.as_str())], Vec::new()).await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.json()["data"].as_array().unwrap().clone()
}

fn by_model<'a>(rows: &'a [Value], model: &str) -> &'a Value {
    rows.iter().find(|r| r["model_name"] == model).unwrap_or_else(|| panic!("no row for {model} in {rows:#?}"))
}

/// The row stored for `span` (as export.py printed it), found by its span id.
fn by_span<'a>(rows: &'a [Value], span: &Value) -> &'a Value {
    rows.iter()
        .find(|r| r["metadata"]["otel"]["span_id"] == span["span_id"])
        .unwrap_or_else(|| panic!("no row for span {span}"))
}

/// The value of one series in a `/metrics` text (0 when it is not there yet).
fn series(metrics: &str, name: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0)
}

async fn scrape(c: &mut Client) -> String {
    String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap()
}

const OTLP_SPANS: [&str; 4] = [
    "ingestd_otlp_spans_total{outcome=\"accepted\"}",
    "ingestd_otlp_spans_total{outcome=\"duplicate\"}",
    "ingestd_otlp_spans_total{outcome=\"rejected\"}",
    "ingestd_otlp_spans_total{outcome=\"without_usage\"}",
];

/// How much each of [`OTLP_SPANS`] grew between two scrapes. The recorder
/// is the process's: exact growth holds where each test has a process of its
/// own (nextest, which `cargo xtask test` runs); under `cargo test` the tests
/// of this file running at once count into each other's.
fn grown(before: &str, after: &str) -> [u64; 4] {
    OTLP_SPANS.map(|name| series(after, name) - series(before, name))
}

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// What SPEC §11 says the row of `span` (as export.py printed it) holds
/// besides its attributes: id, time, latency, source, the span's ids.
fn assert_span_identity(row: &Value, span: &Value) {
    let (trace, id) = (span["trace_id"].as_str().unwrap(), span["span_id"].as_str().unwrap());
    let (start, end) = (span["start"].as_u64().unwrap(), span["end"].as_u64().unwrap());
    let expected = model::ids::derived_ordered(end / 1_000_000, &[b"otlp", &bytes(trace), &bytes(id)]);
    let request_id: uuid::Uuid = row["request_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(request_id, expected);
    assert_eq!(request_id.get_version_num(), 8);
    assert_eq!(
        u64::from_be_bytes([
            0,
            0,
            request_id.as_bytes()[0],
            request_id.as_bytes()[1],
            request_id.as_bytes()[2],
            request_id.as_bytes()[3],
            request_id.as_bytes()[4],
            request_id.as_bytes()[5]
        ]),
        end / 1_000_000,
        "time-ordered by the span's end"
    );
    let occurred = OffsetDateTime::parse(row["occurred_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(occurred.unix_timestamp_nanos(), i128::from(end / 1000 * 1000), "the span's end, to the microsecond");
    let latency = row["latency_ms"].as_f64().unwrap();
    assert!((latency - (end - start) as f64 / 1e6).abs() < 1e-6, "latency {latency} for {start}..{end}");
    assert_eq!(row["source"], "otlp");
    assert_eq!(row["metadata"], json!({ "otel": { "trace_id": trace, "span_id": id } }));
}

async fn python_sdk_spans_are_stored_field_by_field(kind: Kind) {
    let server = Server::start(kind, with_keys).await;
    let acme = key(&server, auth::Scope::Org, Some("acme"), auth::Permissions::WRITE).await;
    let admin = key(&server, auth::Scope::Admin, None, auth::Permissions::WRITE).await;
    // The resource and a header name another organization: an organization
    // key writes its own.
    let headers = format!("authorization=Bearer%20{acme},x-organization-id=globex");
    let env = [
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=checkout,ingestd.organization_id=globex"),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
    ];
    let mut c = server.client().await;
    let before = scrape(&mut c).await;
    let out = export_py(&server, &acme, &env, &["--exports", "2"]).await;
    assert_eq!(out["results"], json!(["SUCCESS", "SUCCESS"]), "the exporter's own verdict");
    assert!(rows(&mut c, &admin, "globex").await.is_empty(), "nothing for the resource's organization");
    let stored = rows(&mut c, &admin, "acme").await;
    assert_eq!(stored.len(), 4, "four usage spans, the re-export all duplicates: {stored:#?}");

    let spans = &out["spans"];
    let current = by_model(&stored, "gpt-4o-2024-08-06");
    assert_span_identity(current, &spans["chat gpt-4o"]);
    for (field, value) in [
        ("organization_id", json!("acme")),
        ("provider", json!("openai")),
        ("project_id", json!("checkout")),
        ("user_id", json!("user-7")),
        ("prompt_tokens", json!(1200)),
        ("completion_tokens", json!(300)),
        ("total_tokens", json!(1500)),
        ("cached_tokens", json!(400)),
        ("cache_write_tokens", json!(100)),
        ("reasoning_tokens", json!(120)),
        ("pricing", json!("priced")),
        // (1200 − 400 − 100) × 2.5e-6 input + 400 × 1.25e-6 cache read
        // + 100 × 2.5e-6 cache write (no rate: input) + 300 × 1e-5 output
        // (reasoning included) = 0.0055 USD.
        ("cost_nano_usd", json!(5_500_000)),
    ] {
        assert_eq!(current[field], value, "gpt-4o span, {field}");
    }

    let older = by_model(&stored, "claude-sonnet-4-5");
    assert_span_identity(older, &spans["chat claude"]);
    for (field, value) in [
        ("organization_id", json!("acme")),
        ("provider", json!("anthropic")),
        ("project_id", json!("checkout")),
        ("prompt_tokens", json!(50)),
        ("completion_tokens", json!(20)),
        ("total_tokens", json!(70)),
        ("cached_tokens", Value::Null),
        ("cache_write_tokens", Value::Null),
        ("reasoning_tokens", Value::Null),
        ("user_id", Value::Null),
        ("pricing", json!("priced")),
        // 50 × 3e-6 + 20 × 1.5e-5 = 0.00045 USD.
        ("cost_nano_usd", json!(450_000)),
    ] {
        assert_eq!(older[field], value, "gen_ai.system span, {field}");
    }

    let openllmetry = by_model(&stored, "gpt-4o-mini");
    assert_span_identity(openllmetry, &spans["openai.chat"]);
    for (field, value) in [
        ("organization_id", json!("acme")),
        ("provider", json!("openai")),
        ("prompt_tokens", json!(30)),
        ("completion_tokens", json!(12)),
        ("total_tokens", json!(42)),
        ("cached_tokens", Value::Null),
        ("cache_write_tokens", Value::Null),
        ("reasoning_tokens", Value::Null),
        ("user_id", Value::Null),
        ("project_id", json!("checkout")),
        // 30 × 1.5e-7 + 12 × 6e-7 = 0.0000117 USD.
        ("cost_nano_usd", json!(11_700)),
    ] {
        assert_eq!(openllmetry[field], value, "llm.usage span, {field}");
    }

    // Cache reads and writes beyond the input count were counted apart from
    // it: both are added to it (SPEC §11).
    let apart = by_span(&stored, &spans["chat claude-haiku"]);
    assert_span_identity(apart, &spans["chat claude-haiku"]);
    for (field, value) in [
        ("organization_id", json!("acme")),
        ("provider", json!("anthropic")),
        ("model_name", json!("claude-haiku-4-5")),
        ("prompt_tokens", json!(110)),
        ("completion_tokens", json!(5)),
        ("total_tokens", json!(115)),
        ("cached_tokens", json!(60)),
        ("cache_write_tokens", json!(40)),
        // 10 × 1e-6 + 60 × 1e-7 cache read + 40 × 1.25e-6 cache write
        // + 5 × 5e-6 = 0.000091 USD.
        ("cost_nano_usd", json!(91_000)),
    ] {
        assert_eq!(apart[field], value, "cache counted apart, {field}");
    }

    let after = scrape(&mut c).await;
    assert_eq!(grown(&before, &after), [4, 4, 0, 2], "ingestd_otlp_spans_total by outcome: {after}");
    let records = "ingestd_records_total{source=\"otlp\",outcome=\"accepted\"}";
    assert_eq!(series(&after, records) - series(&before, records), 4, "{after}");
    server.stop().await;
}

async fn service_keys_take_the_header_then_the_resource(kind: Kind) {
    let server = Server::start(kind, with_keys).await;
    let service = key(&server, auth::Scope::Service, None, auth::Permissions::WRITE).await;
    let admin = key(&server, auth::Scope::Admin, None, auth::Permissions::WRITE).await;
    let mut c = server.client().await;
    let before = scrape(&mut c).await;
    let headers = format!("authorization=Bearer%20{service},x-organization-id=globex");
    let resource = "service.name=billing,ingestd.organization_id=initech";
    let out = export_py(
        &server,
        &service,
        &[("OTEL_EXPORTER_OTLP_HEADERS", &headers), ("OTEL_RESOURCE_ATTRIBUTES", resource)],
        &[],
    )
    .await;
    assert_eq!(out["results"], json!(["SUCCESS"]));
    // Without the header the resource decides; gzip as an exporter sends it.
    let env = [("OTEL_RESOURCE_ATTRIBUTES", resource), ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];
    let out = export_py(&server, &service, &env, &[]).await;
    assert_eq!(out["results"], json!(["SUCCESS"]));
    // Neither: the usage spans are rejected (partial success), nothing stored.
    let out = export_py(&server, &service, &[], &[]).await;
    assert_eq!(out["results"], json!(["SUCCESS"]), "a partial success is a success to the exporter");

    let globex = rows(&mut c, &admin, "globex").await;
    let initech = rows(&mut c, &admin, "initech").await;
    assert_eq!((globex.len(), initech.len()), (4, 4));
    assert!(globex.iter().chain(&initech).all(|r| r["project_id"] == "billing"));
    assert_eq!(server.store.count_records(None).await.unwrap(), 8);
    let after = scrape(&mut c).await;
    assert_eq!(grown(&before, &after), [8, 0, 4, 3], "ingestd_otlp_spans_total by outcome: {after}");
    server.stop().await;
}

async fn the_rust_exporter_with_json_encoding_is_stored(kind: Kind) {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};

    let server = Server::start(kind, with_keys).await;
    let acme = key(&server, auth::Scope::Org, Some("acme"), auth::Permissions::WRITE).await;
    let admin = key(&server, auth::Scope::Admin, None, auth::Permissions::WRITE).await;
    let endpoint = format!("http://{}/v1/traces", server.addr);
    let started = OffsetDateTime::now_utc();
    // The exporter's client is blocking: it runs on a thread of its own.
    let (trace_id, span_id) = tokio::task::spawn_blocking(move || {
        // reqwest's rustls in this build takes the process's provider (ingestd
        // installs ring when it exports traces of its own): as an application
        // sharing the build would, install one first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(endpoint)
            .with_headers(HashMap::from([("authorization".to_owned(), format!("Bearer {acme}"))]))
            .build()
            .expect("build the exporter");
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "rust-svc")])
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("ingestd-tests");
        let mut span = tracer.span_builder("chat mistral-large").with_kind(SpanKind::Client).start(&tracer);
        span.set_attributes([
            KeyValue::new("gen_ai.provider.name", "mistral_ai"),
            KeyValue::new("gen_ai.request.model", "mistral-large-latest"),
            KeyValue::new("gen_ai.usage.input_tokens", 640_i64),
            KeyValue::new("gen_ai.usage.output_tokens", 64_i64),
            KeyValue::new("user.id", "u-rust"),
        ]);
        let ids = (span.span_context().trace_id().to_string(), span.span_context().span_id().to_string());
        span.end();
        provider.shutdown().expect("flush and shut down");
        ids
    })
    .await
    .unwrap();
    let finished = OffsetDateTime::now_utc();

    let mut c = server.client().await;
    let stored = rows(&mut c, &admin, "acme").await;
    assert_eq!(stored.len(), 1, "{stored:#?}");
    let row = &stored[0];
    for (field, value) in [
        ("provider", json!("mistral_ai")),
        ("model_name", json!("mistral-large-latest")),
        ("project_id", json!("rust-svc")),
        ("user_id", json!("u-rust")),
        ("prompt_tokens", json!(640)),
        ("completion_tokens", json!(64)),
        ("total_tokens", json!(704)),
        ("source", json!("otlp")),
    ] {
        assert_eq!(row[field], value, "{field}");
    }
    assert_eq!(row["metadata"], json!({ "otel": { "trace_id": trace_id, "span_id": span_id } }));
    // An OpenTelemetry provider name finds its price through the alias table.
    assert_eq!(row["pricing"], "priced", "mistral_ai → the catalog's mistral");
    // 640 × 5e-7 + 64 × 1.5e-6 = 0.000416 USD (mistral/mistral-large-latest).
    assert_eq!(row["cost_nano_usd"], 416_000);
    // The span ended while the exporter ran; the id is derived from its ids
    // and ordered by that end.
    let occurred = OffsetDateTime::parse(row["occurred_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(started <= occurred && occurred <= finished, "{started} <= {occurred} <= {finished}");
    let end_ms = u64::try_from(occurred.unix_timestamp_nanos() / 1_000_000).unwrap();
    let expected_id = model::ids::derived_ordered(end_ms, &[b"otlp", &bytes(&trace_id), &bytes(&span_id)]);
    assert_eq!(row["request_id"], expected_id.to_string(), "derived from the span's ids and end");
    assert!(row["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{row}");
    server.stop().await;
}

/// An OTLP/JSON span, as a collector or a hand-written exporter sends it.
fn json_span(span_id: &str, end_ns: u64, attributes: Value) -> Value {
    json!({
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": span_id,
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": (end_ns - 250_000_000).to_string(),
        "endTimeUnixNano": end_ns.to_string(),
        "attributes": attributes,
        "status": { "code": 1 },
        "somethingNew": { "a": [1, 2] }
    })
}

fn attrs(pairs: &[(&str, Value)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => json!({ "stringValue": s }),
                    // int64 as a decimal string, as OTLP/JSON writes it.
                    Value::Number(n) => json!({ "intValue": n.to_string() }),
                    other => other.clone(),
                };
                json!({ "key": k, "value": value })
            })
            .collect(),
    )
}

fn traces_body(resource: Value, spans: Vec<Value>) -> Value {
    json!({ "resourceSpans": [{
        "resource": { "attributes": resource },
        "scopeSpans": [{ "scope": { "name": "hand" }, "spans": spans }],
        "schemaUrl": "https://opentelemetry.io/schemas/1.30.0"
    }] })
}

async fn post_traces(c: &mut Client, key: &str, content_type: &str, extra: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let bearer = format!("Bearer {key}");
    let mut headers = vec![("content-type", content_type), ("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    c.send("POST", "/v1/traces", &headers, body).await.unwrap()
}

fn now_ns() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap()
}

async fn rejected_usage_spans_are_counted_in_partial_success(kind: Kind) {
    let server = Server::start(kind, with_keys).await;
    let service = key(&server, auth::Scope::Service, None, auth::Permissions::WRITE).await;
    let admin = key(&server, auth::Scope::Admin, None, auth::Permissions::WRITE).await;
    let mut c = server.client().await;
    let end = now_ns();
    let usage = |input: i64, output: i64| {
        vec![
            ("gen_ai.provider.name", json!("openai")),
            ("gen_ai.request.model", json!("gpt-4o")),
            ("gen_ai.usage.input_tokens", json!(input)),
            ("gen_ai.usage.output_tokens", json!(output)),
        ]
    };
    let mut too_much_reasoning = usage(10, 5);
    too_much_reasoning.push(("gen_ai.usage.reasoning.output_tokens", json!(6)));
    let body = traces_body(
        attrs(&[("service.name", json!("svc")), ("ingestd.organization_id", json!("acme"))]),
        vec![
            json_span("eee19b7ec3c1b174", end, attrs(&usage(100, 20))),
            json_span("eee19b7ec3c1b175", end, attrs(&too_much_reasoning)),
            json_span("", end, attrs(&usage(1, 1))),
            json_span("eee19b7ec3c1b176", end, attrs(&[("http.route", json!("/"))])),
        ],
    );
    let reply = post_traces(&mut c, &service, "application/json", &[], serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let partial = &reply.json()["partialSuccess"];
    assert_eq!(partial["rejectedSpans"], "2", "int64 as a decimal string: {partial}");
    let message = partial["errorMessage"].as_str().unwrap();
    assert!(
        message.starts_with("2 of 3 usage spans rejected; first: span eee19b7ec3c1b175 of trace 5b8efff798038103d269b633813fc60c: usage.reasoning_tokens: ")
            && message.contains("[reasoning_exceeds_completion]"),
        "{message}"
    );
    let stored = rows(&mut c, &admin, "acme").await;
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0]["prompt_tokens"].as_i64(), stored[0]["project_id"].as_str()), (Some(100), Some("svc")));

    // All accepted (the same span again: a duplicate): `{}`, no partial success.
    let again = traces_body(
        attrs(&[("ingestd.organization_id", json!("acme"))]),
        vec![json_span("eee19b7ec3c1b174", end, attrs(&usage(100, 20)))],
    );
    let reply = post_traces(&mut c, &service, "application/json", &[], serde_json::to_vec(&again).unwrap()).await;
    assert_eq!((reply.status.as_u16(), reply.json()), (200, json!({})));
    assert_eq!(rows(&mut c, &admin, "acme").await.len(), 1);

    // Protobuf, gzip-compressed, no organization anywhere: the answer is a
    // protobuf ExportTraceServiceResponse whose message says where to name one.
    let request: ExportTraceServiceRequest =
        serde_json::from_value(traces_body(json!([]), vec![json_span("aaaaaaaaaaaaaaaa", end, attrs(&usage(3, 4)))]))
            .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&request.encode_to_vec()).unwrap();
    let reply =
        post_traces(&mut c, &service, "application/x-protobuf", &[("content-encoding", "gzip")], gz.finish().unwrap())
            .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-protobuf"));
    let answer = ExportTraceServiceResponse::decode(&reply.body[..]).unwrap().partial_success.unwrap();
    assert_eq!(answer.rejected_spans, 1);
    assert!(
        answer.error_message.contains("organization_id: ") && answer.error_message.contains("X-Organization-Id"),
        "{}",
        answer.error_message
    );
    assert_eq!(server.store.count_records(None).await.unwrap(), 1);

    // An admin key acts as a service key: the header names the organization.
    let hooli = traces_body(json!([]), vec![json_span("bbbbbbbbbbbbbbbb", end, attrs(&usage(3, 4)))]);
    let reply = post_traces(
        &mut c,
        &admin,
        "application/json",
        &[("x-organization-id", "hooli")],
        serde_json::to_vec(&hooli).unwrap(),
    )
    .await;
    assert_eq!((reply.status.as_u16(), reply.json()), (200, json!({})));
    assert_eq!(rows(&mut c, &admin, "hooli").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_like_on_the_other_endpoints() {
    let server = Server::start(Kind::Sqlite, |c| {
        with_keys(c);
        c.server.max_body_bytes = 64 * 1024;
        c.rate_limit.default =
            PolicyConfig { max_requests: Some(7), window_secs: Some(3600), ..PolicyConfig::default() };
    })
    .await;
    let acme = key(&server, auth::Scope::Org, Some("acme"), auth::Permissions::WRITE).await;
    let reader = key(&server, auth::Scope::Org, Some("acme"), auth::Permissions::parse("read").unwrap()).await;
    let mut c = server.client().await;
    let one = |i: u64| {
        serde_json::to_vec(&traces_body(
            json!([]),
            vec![json_span(
                &format!("{i:016x}"),
                now_ns(),
                attrs(&[
                    ("gen_ai.system", json!("openai")),
                    ("gen_ai.request.model", json!("gpt-4o")),
                    ("gen_ai.usage.input_tokens", json!(1)),
                ]),
            )],
        ))
        .unwrap()
    };

    let reply = post_traces(&mut c, &acme, "text/plain", &[], one(1)).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (415, Some("unsupported_media_type")));
    assert!(reply.json()["error"].as_str().unwrap().contains("application/x-protobuf or application/json"));
    let reply =
        post_traces(&mut c, &acme, "application/x-protobuf", &[], vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (400, Some("malformed_otlp")));
    let reply = post_traces(&mut c, &acme, "application/json", &[], b"{\"resourceSpans\": 7}".to_vec()).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (400, Some("malformed_otlp")));
    // Over the body limit, as sent and after decompression (a bomb).
    let reply = post_traces(&mut c, &acme, "application/json", &[], vec![b' '; 65 * 1024]).await;
    assert_eq!(reply.status, 413);
    // The server closes a connection whose body it refused unread.
    let mut c = server.client().await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; 16 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 * 1024);
    let reply = post_traces(&mut c, &acme, "application/x-protobuf", &[("content-encoding", "gzip")], bomb).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (413, Some("body_too_large")));
    // More spans than one request may carry (empty ones, 2 bytes each).
    let many = ExportTraceServiceRequest {
        resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                spans: vec![Default::default(); 10_001],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let reply = post_traces(&mut c, &acme, "application/x-protobuf", &[], many.encode_to_vec()).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (413, Some("otlp_too_large")));
    assert!(reply.json()["error"].as_str().unwrap().contains("more than 10000 spans"));
    // A key without `write`.
    let reply = post_traces(&mut c, &reader, "application/json", &[], one(2)).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (403, Some("permission_denied")));
    assert_eq!(server.count("acme").await, 0, "nothing stored by refused requests");

    // The rate limit: 7 per hour for acme, 6 spent above (415, 400, 400,
    // 413, 413, 413; the 403 is answered before the limiter).
    let reply = post_traces(&mut c, &acme, "application/json", &[], one(3)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let reply = post_traces(&mut c, &acme, "application/json", &[], one(4)).await;
    assert_eq!(reply.status, 429);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(server.count("acme").await, 1, "the 429 stored nothing");
    server.stop().await;
}

/// With `auth.mode = "none"` (and no rate limit, so the limit layer never
/// reads the header first), the header names the organization, else the
/// resource; a header that cannot name one (blank, or with a tab) is a 400,
/// as with the rate limit on, never a rejection of every span.
#[tokio::test]
async fn without_keys_the_header_then_the_resource_name_the_organization() {
    let server = Server::start(Kind::Sqlite, |c| c.rate_limit.enabled = false).await;
    let mut c = server.client().await;
    let end = now_ns();
    let body = |span_id: &str, resource: Value| {
        let usage = attrs(&[
            ("gen_ai.provider.name", json!("openai")),
            ("gen_ai.request.model", json!("gpt-4o")),
            ("gen_ai.usage.input_tokens", json!(8)),
            ("gen_ai.usage.output_tokens", json!(2)),
        ]);
        serde_json::to_vec(&traces_body(resource, vec![json_span(span_id, end, usage)])).unwrap()
    };
    let json = ("content-type", "application/json");
    let initech = attrs(&[("ingestd.organization_id", json!("initech"))]);

    let headers = [json, ("x-organization-id", "globex")];
    let reply = c.send("POST", "/v1/traces", &headers, body("cccccccccccccccc", initech.clone())).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.json()), (200, json!({})));
    let reply = c.send("POST", "/v1/traces", &[json], body("dddddddddddddddd", initech.clone())).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.json()), (200, json!({})));
    assert_eq!((server.count("globex").await, server.count("initech").await), (1, 1));

    for blank_or_tab in ["  ", "a\tb"] {
        let headers = [json, ("x-organization-id", blank_or_tab)];
        let reply = c.send("POST", "/v1/traces", &headers, body("eeeeeeeeeeeeeeee", initech.clone())).await.unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.json()["code"].as_str()),
            (400, Some("invalid_organization_header")),
            "{blank_or_tab:?}"
        );
    }
    let reply = c.send("POST", "/v1/traces", &[json], body("ffffffffffffffff", json!([]))).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.json()["partialSuccess"]["rejectedSpans"].as_str()), (200, Some("1")));
    assert_eq!(server.store.count_records(None).await.unwrap(), 2);
    server.stop().await;
}
