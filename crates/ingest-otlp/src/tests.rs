use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Any};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::{Value, json};

use super::*;

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

fn int(key: &str, n: i64) -> KeyValue {
    kv(key, Any::IntValue(n))
}

fn text(key: &str, s: &str) -> KeyValue {
    kv(key, Any::StringValue(s.into()))
}

const END: u64 = 1_764_000_000_123_456_789;

fn span(id: u8, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![id; 8],
        name: "chat gpt-4o".into(),
        start_time_unix_nano: END - 1_500_000_000,
        end_time_unix_nano: END,
        attributes,
        ..Span::default()
    }
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: resource, ..Resource::default() }),
            scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
            ..ResourceSpans::default()
        }],
    }
}

/// The official types' request, encoded, read back by ours (`wire.rs`).
fn ours(request: &ExportTraceServiceRequest) -> ExportRequest {
    decode(&request.encode_to_vec(), Encoding::Protobuf).unwrap()
}

fn records(request: &ExportTraceServiceRequest, org: Option<&str>) -> (Vec<Value>, u64) {
    mapped(&ours(request), org)
}

fn mapped(request: &ExportRequest, org: Option<&str>) -> (Vec<Value>, u64) {
    let spans = usage_spans(request, org);
    let records = spans.usage.iter().map(|s| serde_json::from_str(s.record.as_ref().unwrap().get()).unwrap()).collect();
    (records, spans.without_usage)
}

#[test]
fn current_conventions_map_field_by_field() {
    let req = request(
        vec![text("service.name", "checkout"), text("ingestd.organization_id", "acme"), text("user.id", "res-user")],
        vec![span(
            1,
            vec![
                text("gen_ai.provider.name", "aws.bedrock"),
                text("gen_ai.system", "ignored"),
                text("gen_ai.request.model", "ignored"),
                text("gen_ai.response.model", "anthropic.claude-3-5-sonnet"),
                int("gen_ai.usage.input_tokens", 1000),
                int("gen_ai.usage.output_tokens", 200),
                int("gen_ai.usage.cache_read.input_tokens", 300),
                int("gen_ai.usage.cache_creation.input_tokens", 100),
                int("gen_ai.usage.reasoning.output_tokens", 50),
                text("user.id", "span-user"),
                text("http.method", "POST"),
            ],
        )],
    );
    let (records, skipped) = records(&req, None);
    assert_eq!(skipped, 0);
    let id = model::ids::derived_ordered(END / 1_000_000, &[b"otlp", &[7; 16], &[1; 8]]);
    assert_eq!(
        records,
        [json!({
            "request_id": id,
            "timestamp": "2025-11-24T16:00:00.123456789Z",
            "provider": "aws.bedrock",
            "model": { "name": "anthropic.claude-3-5-sonnet" },
            "organization_id": "acme",
            "project_id": "checkout",
            "user_id": "span-user",
            "usage": { "prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                       "cached_tokens": 300, "cache_write_tokens": 100, "reasoning_tokens": 50 },
            "performance": { "latency_ms": 1500.0 },
            "metadata": { "otel": { "trace_id": "07".repeat(16), "span_id": "01".repeat(8) } },
        })]
    );
    assert_eq!(id.get_version_num(), 8);
}

#[test]
fn older_spellings_and_openllmetry_are_read_in_order() {
    let req = request(
        vec![],
        vec![
            span(
                1,
                vec![
                    text("gen_ai.system", "openai"),
                    text("gen_ai.request.model", "gpt-4o"),
                    int("gen_ai.usage.prompt_tokens", 10),
                    int("gen_ai.usage.completion_tokens", 5),
                    int("gen_ai.usage.cache_read_input_tokens", 4),
                    int("gen_ai.usage.cache_creation_input_tokens", 2),
                    int("gen_ai.usage.reasoning_tokens", 1),
                ],
            ),
            span(
                2,
                vec![
                    text("gen_ai.system", "Anthropic"),
                    text("gen_ai.response.model", "claude-sonnet-4-5"),
                    int("llm.usage.prompt_tokens", 7),
                    int("llm.usage.completion_tokens", 3),
                    int("llm.usage.reasoning_tokens", 2),
                    // The newer spelling wins over OpenLLMetry's wherever both are sent.
                    int("gen_ai.usage.output_tokens", 4),
                ],
            ),
        ],
    );
    let (records, _) = records(&req, Some("acme"));
    assert_eq!(
        records[0]["usage"],
        json!({ "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                "cached_tokens": 4, "cache_write_tokens": 2, "reasoning_tokens": 1 })
    );
    assert_eq!(records[0]["provider"], "openai");
    assert_eq!(records[0]["model"]["name"], "gpt-4o");
    assert_eq!(
        records[1]["usage"],
        json!({ "prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11, "reasoning_tokens": 2 })
    );
    assert_eq!(records[1]["provider"], "Anthropic", "lower-cased by the record decoder, not here");
    assert!(records.iter().all(|r| r["organization_id"] == "acme" && r.get("project_id").is_none()));
}

#[test]
fn cache_counts_beyond_the_input_were_reported_separately_and_are_added() {
    let cache = |input: i64, read: i64, write: i64| {
        let req = request(
            vec![],
            vec![span(
                1,
                vec![
                    int("gen_ai.usage.input_tokens", input),
                    int("gen_ai.usage.output_tokens", 1),
                    int("gen_ai.usage.cache_read.input_tokens", read),
                    int("gen_ai.usage.cache_creation.input_tokens", write),
                ],
            )],
        );
        let usage = records(&req, Some("o")).0.remove(0)["usage"].clone();
        (usage["prompt_tokens"].as_u64().unwrap(), usage["total_tokens"].as_u64().unwrap())
    };
    assert_eq!(cache(100, 60, 40), (100, 101), "within the input: already part of it");
    assert_eq!(cache(10, 60, 40), (110, 111), "Anthropic-style: input excludes both cache counts");
    assert_eq!(cache(0, 0, 0), (0, 1));
}

#[test]
fn spans_without_usage_are_counted_not_mapped() {
    let req = request(
        vec![],
        vec![
            span(1, vec![text("gen_ai.provider.name", "openai"), text("gen_ai.request.model", "gpt-4o")]),
            span(2, vec![text("http.route", "/"), int("llm.usage.total_tokens", 9)]),
            span(3, vec![int("gen_ai.usage.output_tokens", 9)]),
        ],
    );
    let (records, skipped) = records(&req, Some("o"));
    assert_eq!(skipped, 2);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["usage"], json!({ "prompt_tokens": 0, "completion_tokens": 9, "total_tokens": 9 }));
}

#[test]
fn counts_that_are_not_whole_numbers_are_left_to_the_decoder() {
    let req = request(
        vec![],
        vec![
            span(
                1,
                vec![kv("gen_ai.usage.input_tokens", Any::DoubleValue(12.0)), int("gen_ai.usage.output_tokens", 3)],
            ),
            span(
                2,
                vec![
                    kv("gen_ai.usage.input_tokens", Any::StringValue("12".into())),
                    int("gen_ai.usage.output_tokens", 3),
                ],
            ),
            span(3, vec![int("gen_ai.usage.input_tokens", -1), int("gen_ai.usage.output_tokens", 3)]),
            span(4, vec![kv("gen_ai.usage.input_tokens", Any::DoubleValue(1.5))]),
        ],
    );
    let (records, _) = records(&req, Some("o"));
    assert_eq!(records[0]["usage"]["prompt_tokens"], json!(12), "a whole double is that count");
    assert_eq!(records[0]["usage"]["total_tokens"], json!(15));
    assert_eq!(records[1]["usage"]["prompt_tokens"], json!("12"));
    assert_eq!(records[2]["usage"]["prompt_tokens"], json!(-1));
    assert_eq!(records[3]["usage"]["prompt_tokens"], json!(1.5));
    for r in &records[1..] {
        assert_eq!(r["usage"]["total_tokens"], r["usage"]["prompt_tokens"], "the one bad count, not a second error");
    }
}

#[test]
fn the_organization_given_wins_over_the_resource() {
    let req = request(
        vec![text("ingestd.organization_id", "other")],
        vec![span(1, vec![int("gen_ai.usage.input_tokens", 1)])],
    );
    assert_eq!(records(&req, Some("mine")).0[0]["organization_id"], "mine");
    assert_eq!(records(&req, None).0[0]["organization_id"], "other");
    let bare = request(vec![], vec![span(1, vec![int("gen_ai.usage.input_tokens", 1)])]);
    assert!(records(&bare, None).0[0].get("organization_id").is_none());
}

#[test]
fn usage_spans_without_valid_ids_are_problems() {
    for (trace, span_id) in
        [(vec![], vec![1; 8]), (vec![0; 16], vec![1; 8]), (vec![1; 16], vec![0; 8]), (vec![1; 15], vec![1; 8])]
    {
        let mut s = span(1, vec![int("gen_ai.usage.input_tokens", 1)]);
        s.trace_id = trace;
        s.span_id = span_id;
        let spans = usage_spans(&ours(&request(vec![], vec![s])), Some("o"));
        assert_eq!(spans.usage[0].record.as_ref().unwrap_err(), &SpanProblem::InvalidSpanId);
    }
}

#[test]
fn ids_are_stable_and_differ_by_span() {
    let req = request(
        vec![],
        vec![span(1, vec![int("gen_ai.usage.input_tokens", 1)]), span(2, vec![int("gen_ai.usage.input_tokens", 1)])],
    );
    let (a, _) = records(&req, Some("o"));
    let (b, _) = records(&req, Some("o"));
    assert_eq!(a[0]["request_id"], b[0]["request_id"]);
    assert_ne!(a[0]["request_id"], a[1]["request_id"]);
}

#[test]
fn json_encoding_follows_otlp_json() {
    // Hex ids (any case), an integer enum, int64 as a decimal string or a
    // number, unknown members anywhere.
    let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
      "futureField":1,
      "scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174",
      "name":"chat","kind":3,"startTimeUnixNano":"1764000000000000000","endTimeUnixNano":1764000000500000000,
      "attributes":[{"key":"gen_ai.usage.input_tokens","value":{"intValue":"42"}},{"key":"gen_ai.usage.output_tokens","value":{"intValue":8}},
      {"key":"gen_ai.provider.name","value":{"stringValue":"openai","unknown":true}}],
      "status":{"code":1},"unknownSpanField":{"a":[1]}}]}]}]}"#;
    let req = decode(body, Encoding::Json).unwrap();
    let s = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(hex(&s.trace_id), "5b8efff798038103d269b633813fc60c");
    let (records, _) = mapped(&req, Some("o"));
    assert_eq!(records[0]["usage"], json!({ "prompt_tokens": 42, "completion_tokens": 8, "total_tokens": 50 }));
    assert_eq!(records[0]["performance"]["latency_ms"], json!(500.0));
    assert_eq!(records[0]["project_id"], "svc");
    assert_eq!(records[0]["provider"], "openai");
    // The same request through the official types' JSON reading and
    // protobuf encoding comes back to the same records.
    let official: ExportTraceServiceRequest = serde_json::from_slice(body).unwrap();
    assert_eq!(self::records(&official, Some("o")).0, records);
}

#[test]
fn valid_otlp_json_that_the_official_serde_refuses_is_read() {
    // Empty lists as the Collector writes them, non-finite doubles as
    // strings, `null` members, a key-value without key, a value that is not
    // an object, bytes: all valid OTLP/JSON, none of it fatal.
    let body = br#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"spans":[
      {"traceId":"07070707070707070707070707070707","spanId":"0101010101010101","name":null,"startTimeUnixNano":null,
       "endTimeUnixNano":"1764000000500000000","attributes":[
         {"key":"a","value":{"arrayValue":{}}},{"key":"b","value":{"kvlistValue":{}}},{"key":"c","value":{"doubleValue":"NaN"}},
         {"value":{"stringValue":"keyless"}},{"key":"d","value":null},{"key":"e","value":5},{"key":"f","value":{"bytesValue":"AAE="}},
         {"key":"gen_ai.usage.input_tokens","value":{"doubleValue":"Infinity"}},
         {"key":"gen_ai.usage.prompt_tokens","value":{}},
         {"key":"llm.usage.prompt_tokens","value":{"intValue":"12"}},
         {"key":"gen_ai.usage.cache_read.input_tokens","value":{"intValue":1e1}},
         {"key":"gen_ai.usage.output_tokens","value":{"intValue":3}}]},
      {"traceId":null,"spanId":"zz","attributes":null,"events":[{"name":"e"}]}]}]}]}"#;
    let req = decode(body, Encoding::Json).unwrap();
    let spans = usage_spans(&req, Some("o"));
    assert_eq!((spans.usage.len(), spans.without_usage), (1, 1));
    let record: Value = serde_json::from_str(spans.usage[0].record.as_ref().unwrap().get()).unwrap();
    // Infinity is a double that is no count: passed on as null for the
    // decoder to refuse; an empty value is no value at all.
    assert_eq!(record["usage"]["prompt_tokens"], Value::Null);
    assert_eq!(record["usage"]["cached_tokens"], 10, "1e1 is the integer 10 in ProtoJSON");
    assert!(record.get("performance").is_none(), "no start time, no latency");
    // An id that is not hex is an invalid id, for that span alone.
    let bad_id = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"0101010101010101",
      "attributes":[{"key":"gen_ai.usage.input_tokens","value":{"intValue":"1"}}]}]}]}]}"#;
    let spans = usage_spans(&decode(bad_id, Encoding::Json).unwrap(), Some("o"));
    assert_eq!(spans.usage[0].record.as_ref().unwrap_err(), &SpanProblem::InvalidSpanId);
}

#[test]
fn empty_values_are_no_values() {
    let req = request(
        vec![],
        vec![span(
            1,
            vec![
                KeyValue {
                    key: "gen_ai.usage.input_tokens".into(),
                    value: Some(AnyValue { value: None }),
                    ..KeyValue::default()
                },
                int("gen_ai.usage.prompt_tokens", 5),
                KeyValue { key: "gen_ai.provider.name".into(), value: None, ..KeyValue::default() },
                text("gen_ai.system", "openai"),
            ],
        )],
    );
    let (stored, _) = records(&req, Some("o"));
    assert_eq!(stored[0]["usage"]["prompt_tokens"], 5);
    assert_eq!(stored[0]["provider"], "openai");
    let only_empty =
        request(vec![], vec![span(1, vec![kv("gen_ai.usage.input_tokens", Any::ArrayValue(Default::default()))])]);
    assert_eq!(records(&only_empty, Some("o")).1, 1, "a span whose only count is an array has no usage");
}

#[test]
fn spans_and_attributes_are_bounded_before_anything_is_built() {
    fn too_many(what: &'static str) -> impl Fn(DecodeError) -> bool {
        move |e| matches!(e, DecodeError::TooMany { what: w, .. } if w == what)
    }
    // Protobuf: empty spans (2 bytes each), then empty attributes.
    let spans = vec![Span::default(); MAX_SPANS + 1];
    let body = request(vec![], spans).encode_to_vec();
    assert!(decode(&body, Encoding::Protobuf).is_err_and(too_many("spans")));
    let at_limit = request(vec![], vec![Span::default(); MAX_SPANS]).encode_to_vec();
    assert_eq!(decode(&at_limit, Encoding::Protobuf).unwrap().resource_spans[0].scope_spans[0].spans.len(), MAX_SPANS);
    let attributes = vec![KeyValue::default(); MAX_ATTRIBUTES + 1];
    let body = request(vec![], vec![Span { attributes, ..Span::default() }]).encode_to_vec();
    assert!(decode(&body, Encoding::Protobuf).is_err_and(too_many("attributes")));
    // JSON: the same, counted while read.
    let spans = vec!["{}"; MAX_SPANS + 1].join(",");
    let body = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#);
    assert!(decode(body.as_bytes(), Encoding::Json).is_err_and(too_many("spans")));
    let attributes = vec!["{}"; MAX_ATTRIBUTES + 1].join(",");
    let body = format!(r#"{{"resourceSpans":[{{"resource":{{"attributes":[{attributes}]}}}}]}}"#);
    assert!(decode(body.as_bytes(), Encoding::Json).is_err_and(too_many("attributes")));
    // Span lists (empty ones, 2 bytes each in protobuf) count too.
    let lists = ExportTraceServiceRequest { resource_spans: vec![ResourceSpans::default(); MAX_SPANS + 1] };
    assert!(decode(&lists.encode_to_vec(), Encoding::Protobuf).is_err_and(too_many("resource and scope span lists")));
    let lists = vec!["{}"; MAX_SPANS + 1].join(",");
    let body = format!(r#"{{"resourceSpans":[{lists}]}}"#);
    assert!(decode(body.as_bytes(), Encoding::Json).is_err_and(too_many("resource and scope span lists")));
    // Within the limits, the counts start afresh for each request.
    let body = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#, vec!["{}"; MAX_SPANS].join(","));
    for _ in 0..2 {
        assert!(decode(body.as_bytes(), Encoding::Json).is_ok());
    }
}

#[test]
fn undecodable_bodies_are_errors() {
    assert!(decode(b"{", Encoding::Json).is_err());
    assert!(decode(br#"{"resourceSpans":7}"#, Encoding::Json).is_err());
    assert!(decode(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], Encoding::Protobuf).is_err());
    // A nested value is read past without being built (serde_json skips
    // it without recursing), however deep: no stack overflow, no memory.
    let deep = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"k","value":{}}}]}}}}]}}"#,
        "{\"arrayValue\":{\"values\":[".repeat(100_000) + &"]}}".repeat(100_000)
    );
    let decoded = decode(deep.as_bytes(), Encoding::Json).unwrap();
    assert_eq!(
        decoded.resource_spans[0].resource.as_ref().unwrap().attributes[0].value,
        Some(wire::AnyValue { value: None })
    );
    let deep = format!(r#"{{"resourceSpans":[{{"resource":{}}}]}}"#, "{\"a\":[".repeat(200) + &"]}".repeat(200));
    assert!(decode(deep.as_bytes(), Encoding::Json).is_ok(), "unknown members are skipped the same way");
    assert!(decode(br#"{"resourceSpans":[5]}"#, Encoding::Json).is_err());
    // In protobuf a nested value is skipped, never built, at any depth.
    let mut nested = AnyValue { value: Some(Any::StringValue("x".into())) };
    for _ in 0..200 {
        nested = AnyValue {
            value: Some(Any::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue { values: vec![nested] })),
        };
    }
    let req = request(vec![KeyValue { key: "k".into(), value: Some(nested), ..KeyValue::default() }], vec![]);
    let decoded = decode(&req.encode_to_vec(), Encoding::Protobuf).unwrap();
    assert_eq!(
        decoded.resource_spans[0].resource.as_ref().unwrap().attributes[0].value,
        Some(wire::AnyValue { value: None })
    );
}

#[test]
fn a_long_resource_value_is_cut_once_not_copied_into_every_record() {
    let long = "s".repeat(1 << 20);
    let spans = (1..=50).map(|i| span(i, vec![int("gen_ai.usage.input_tokens", 1)])).collect();
    let (stored, _) =
        records(&request(vec![text("service.name", &long), text("ingestd.organization_id", &long)], spans), None);
    for r in &stored {
        // One more character than an identifier may have: still refused as too long.
        assert_eq!(r["project_id"].as_str().unwrap().len(), 257);
        assert_eq!(r["organization_id"].as_str().unwrap().len(), 257);
    }
    let exact = "é".repeat(256);
    let (stored, _) = records(
        &request(vec![text("service.name", &exact)], vec![span(1, vec![int("gen_ai.usage.input_tokens", 1)])]),
        None,
    );
    assert_eq!(stored[0]["project_id"], exact.as_str(), "a valid value is untouched (cut by characters)");
}

#[test]
fn invalid_ids_of_any_length_are_cut_in_messages() {
    let mut s = span(1, vec![int("gen_ai.usage.input_tokens", 1)]);
    s.trace_id = vec![0xab; 1 << 20];
    let spans = usage_spans(&ours(&request(vec![], vec![s])), Some("o"));
    assert_eq!(spans.usage[0].trace_id, format!("{}…", "ab".repeat(16)));
}

#[test]
fn responses_set_partial_success_only_for_rejections() {
    assert_eq!(response(Encoding::Json, 0, ""), b"{}");
    assert_eq!(
        serde_json::from_slice::<Value>(&response(Encoding::Json, 2, "why")).unwrap(),
        json!({ "partialSuccess": { "rejectedSpans": "2", "errorMessage": "why" } })
    );
    assert!(response(Encoding::Protobuf, 0, "").is_empty());
    let decoded = ExportTraceServiceResponse::decode(&response(Encoding::Protobuf, 3, "why")[..]).unwrap();
    assert_eq!(decoded.partial_success.unwrap().rejected_spans, 3);
}
