//! Every rule, data first: a valid record, one edit, the errors expected.

use proptest::prelude::*;
use serde_json::{Value, json, value::RawValue};
use time::{Duration, macros::datetime};
use uuid::Uuid;

use crate::decode::{self, BatchError, DocumentError};
use crate::validate::Context;
use crate::{ErrorCode, UsageRecord};

fn ctx() -> Context {
    Context { now: datetime!(2026-01-01 12:00 UTC), max_future_skew: Duration::seconds(300) }
}

fn valid() -> Value {
    json!({
        "request_id": "0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e",
        "timestamp": "2026-01-01T11:59:00Z",
        "provider": " OpenAI ",
        "model": { "name": "gpt-4o", "version": "2024-08-06", "context_window": 128000 },
        "organization_id": "org-1",
        "project_id": "proj-1",
        "user_id": "user-1",
        "usage": { "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                   "cached_tokens": 20, "reasoning_tokens": 10 },
        "performance": { "latency_ms": 1200.5, "time_to_first_token_ms": 150 },
        "tags": ["prod", "chat"],
        "metadata": { "region": "eu" },
        "some_future_field": { "ignored": true }
    })
}

/// Every field path of [`valid`], and `""` for the whole record.
const FIELD_PATHS: &[&str] = &[
    "",
    "request_id",
    "timestamp",
    "provider",
    "model",
    "model.name",
    "model.version",
    "model.context_window",
    "organization_id",
    "project_id",
    "user_id",
    "usage",
    "usage.prompt_tokens",
    "usage.completion_tokens",
    "usage.total_tokens",
    "usage.cached_tokens",
    "usage.reasoning_tokens",
    "performance",
    "performance.latency_ms",
    "performance.time_to_first_token_ms",
    "tags",
    "metadata",
];

/// Any JSON value, nested up to 4 deep, with values near the valid ones.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("2026-01-01T11:59:00Z")),
        Just(Value::from("0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn decode_value(v: &Value) -> Result<UsageRecord, decode::Rejected> {
    let text = serde_json::to_string(v).unwrap();
    let raw: &RawValue = serde_json::from_str(&text).unwrap();
    decode::record(raw, &ctx(), Uuid::nil)
}

/// Applies `edit` to a valid record and compares the (field, code) pairs reported.
#[track_caller]
fn check(edit: impl FnOnce(&mut Value), expected: &[(&str, ErrorCode)]) {
    let mut v = valid();
    edit(&mut v);
    let actual: Vec<(String, ErrorCode)> = match decode_value(&v) {
        Ok(_) => Vec::new(),
        Err(r) => r.errors.into_iter().map(|e| (e.field, e.code)).collect(),
    };
    let expected: Vec<(String, ErrorCode)> = expected.iter().map(|(f, c)| (f.to_string(), *c)).collect();
    assert_eq!(actual, expected, "record: {v}");
}

fn set(path: &str, value: Value) -> impl FnOnce(&mut Value) {
    let path = path.to_owned();
    move |v| *v.pointer_mut(&path).unwrap() = value
}

fn remove(parent: &str, key: &str) -> impl FnOnce(&mut Value) {
    let (parent, key) = (parent.to_owned(), key.to_owned());
    move |v| {
        v.pointer_mut(&parent).unwrap().as_object_mut().unwrap().remove(&key);
    }
}

#[test]
fn valid_record_decodes_normalized() {
    let r = decode_value(&valid()).unwrap();
    assert_eq!(r.provider, "openai");
    assert_eq!(r.request_id.to_string(), "0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e");
    assert_eq!(r.usage.cached_tokens, Some(20));
    assert_eq!(r.performance.time_to_first_token_ms, Some(150.0));
    assert_eq!(r.tags, ["prod", "chat"]);
    assert_eq!(r.timestamp, datetime!(2026-01-01 11:59 UTC));
}

#[test]
fn timestamps_are_normalized_to_utc() {
    let r = decode_value(&{
        let mut v = valid();
        v["timestamp"] = json!("2026-01-01T13:30:00+02:00");
        v
    })
    .unwrap();
    assert_eq!(r.timestamp, datetime!(2026-01-01 11:30 UTC));
}

#[test]
fn missing_request_id_uses_the_default() {
    let mut v = valid();
    v.as_object_mut().unwrap().remove("request_id");
    let text = v.to_string();
    let raw: &RawValue = serde_json::from_str(&text).unwrap();
    let id = Uuid::from_u128(7);
    assert_eq!(decode::record(raw, &ctx(), || id).unwrap().request_id, id);
}

#[test]
fn optional_fields_may_be_absent_or_null() {
    check(
        |v| {
            let o = v.as_object_mut().unwrap();
            for k in ["project_id", "user_id", "performance", "tags", "metadata"] {
                o.remove(k);
            }
            o.insert("request_id".into(), Value::Null);
            v["usage"].as_object_mut().unwrap().remove("cached_tokens");
            v["usage"]["reasoning_tokens"] = Value::Null;
            v["model"].as_object_mut().unwrap().remove("version");
        },
        &[],
    );
}

#[test]
fn required_fields() {
    use ErrorCode::MissingField as M;
    check(remove("", "timestamp"), &[("timestamp", M)]);
    check(remove("", "provider"), &[("provider", M)]);
    check(remove("", "model"), &[("model", M)]);
    check(remove("/model", "name"), &[("model.name", M)]);
    check(remove("", "organization_id"), &[("organization_id", M)]);
    check(remove("", "usage"), &[("usage", M)]);
    check(remove("/usage", "prompt_tokens"), &[("usage.prompt_tokens", M)]);
    check(remove("/usage", "completion_tokens"), &[("usage.completion_tokens", M)]);
    check(remove("/usage", "total_tokens"), &[("usage.total_tokens", M)]);
    check(set("/provider", Value::Null), &[("provider", M)]);
}

#[test]
fn wrong_types() {
    use ErrorCode::InvalidType as T;
    check(set("/provider", json!(5)), &[("provider", T)]);
    check(set("/organization_id", json!(["a"])), &[("organization_id", T)]);
    check(set("/model", json!("gpt")), &[("model", T)]);
    check(set("/usage/prompt_tokens", json!("100")), &[("usage.prompt_tokens", T)]);
    check(set("/performance/latency_ms", json!(true)), &[("performance.latency_ms", T)]);
    check(set("/tags", json!("prod")), &[("tags", T)]);
    check(set("/tags", json!(["ok", 3, "fine"])), &[("tags[1]", T)]);
    check(set("/metadata", json!([1])), &[("metadata", T)]);
    check(set("/request_id", json!("not-a-uuid")), &[("request_id", ErrorCode::InvalidUuid)]);
    check(set("/timestamp", json!("yesterday")), &[("timestamp", ErrorCode::InvalidTimestamp)]);
    check(set("/timestamp", json!(1767268800)), &[("timestamp", T)]);
}

#[test]
fn numbers() {
    check(set("/usage/prompt_tokens", json!(-1)), &[("usage.prompt_tokens", ErrorCode::NegativeNumber)]);
    check(set("/usage/prompt_tokens", json!(1.5)), &[("usage.prompt_tokens", ErrorCode::NotAnInteger)]);
    check(
        set("/usage/prompt_tokens", json!(9223372036854775808u64)),
        &[("usage.prompt_tokens", ErrorCode::OutOfRange)],
    );
    check(set("/usage/prompt_tokens", json!(1e30)), &[("usage.prompt_tokens", ErrorCode::OutOfRange)]);
    check(set("/model/context_window", json!(0)), &[("model.context_window", ErrorCode::OutOfRange)]);
    check(set("/performance/latency_ms", json!(-0.5)), &[("performance.latency_ms", ErrorCode::NegativeNumber)]);
    // Whole numbers written with a fraction or an exponent are whole numbers.
    check(set("/usage/cached_tokens", json!(100.0)), &[]);
    check(set("/usage/cached_tokens", json!(1e2)), &[]);
    check(set("/usage/cached_tokens", json!(100.5)), &[("usage.cached_tokens", ErrorCode::NotAnInteger)]);
    // An explicit null is an absent optional field, request_id included.
    check(set("/request_id", json!(null)), &[]);
    check(set("/usage/cached_tokens", json!(null)), &[]);
}

#[test]
fn whole_numbers_are_read_exactly_from_the_text() {
    use crate::decode::whole_number;
    for (text, expected) in [
        ("7990.0", Some(Some(7990))),
        ("1e3", Some(Some(1000))),
        ("2.50E2", Some(Some(250))),
        ("25000e-2", Some(Some(250))),
        ("0.0", Some(Some(0))),
        ("-0.0", Some(Some(0))),
        ("0e-999999999999999999999", Some(Some(0))),
        ("9007199254740993.0", Some(Some(9_007_199_254_740_993))), // not a float on the way
        ("18446744073709551615.0", Some(Some(u64::MAX))),
        ("18446744073709551616.0", Some(None)),
        ("1e20", Some(None)),
        ("1e999999999999999999999", Some(None)),
        ("1.5", None),
        ("2.5e-1", None),
        ("1e-1", None),
        ("100.000001", None),
        ("1e-999999999999999999999", None),
        ("1E+2", Some(Some(100))),
        // Not JSON numbers: never mistaken for one.
        ("", None),
        (".", None),
        ("e5", None),
        ("1e", None),
        ("1.2.3", None),
    ] {
        assert_eq!(whole_number(text), expected, "{text}");
    }
}

#[test]
fn business_rules() {
    check(set("/usage/total_tokens", json!(999)), &[("usage.total_tokens", ErrorCode::TokenSumMismatch)]);
    check(set("/usage/cached_tokens", json!(101)), &[("usage.cached_tokens", ErrorCode::CachedExceedsPrompt)]);
    check(set("/usage/cached_tokens", json!(100)), &[]);
    // The valid record has 100 prompt tokens, 20 of them cached.
    let write = |n: Value, cached: u64| {
        move |v: &mut Value| {
            v["usage"]["cache_write_tokens"] = n;
            v["usage"]["cached_tokens"] = json!(cached);
        }
    };
    check(write(json!(80), 20), &[]);
    check(write(json!(81), 20), &[("usage.cache_write_tokens", ErrorCode::CacheExceedsPrompt)]);
    check(write(json!(u64::MAX >> 1), 20), &[("usage.cache_write_tokens", ErrorCode::CacheExceedsPrompt)]);
    check(write(json!(5), 101), &[("usage.cached_tokens", ErrorCode::CachedExceedsPrompt)]);
    check(
        set("/usage/reasoning_tokens", json!(51)),
        &[("usage.reasoning_tokens", ErrorCode::ReasoningExceedsCompletion)],
    );
    check(
        set("/performance/time_to_first_token_ms", json!(1300)),
        &[("performance.time_to_first_token_ms", ErrorCode::TtftExceedsLatency)],
    );
    check(set("/timestamp", json!("2026-01-01T12:05:00Z")), &[]);
    check(set("/timestamp", json!("2026-01-01T12:05:01Z")), &[("timestamp", ErrorCode::TimestampInFuture)]);
    check(set("/timestamp", json!("1999-01-01T00:00:00Z")), &[]);
}

#[test]
fn token_sum_message_names_the_numbers() {
    let mut v = valid();
    v["usage"]["total_tokens"] = json!(999);
    let e = decode_value(&v).unwrap_err();
    assert_eq!(e.errors[0].message, "total_tokens (999) must equal prompt_tokens (100) + completion_tokens (50)");
    assert_eq!(e.request_id, Some("0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e".parse().unwrap()));
}

#[test]
fn lengths_and_characters() {
    check(set("/provider", json!("   ")), &[("provider", ErrorCode::TooShort)]);
    check(set("/provider", json!("x".repeat(65))), &[("provider", ErrorCode::TooLong)]);
    check(set("/provider", json!("é".repeat(64))), &[]);
    // Counted as sent (trimmed): 64 × `İ` lower-cases to 128 characters.
    check(set("/provider", json!(format!(" {} ", "İ".repeat(64)))), &[]);
    check(set("/provider", json!("İ".repeat(65))), &[("provider", ErrorCode::TooLong)]);
    check(set("/model/name", json!("")), &[("model.name", ErrorCode::TooShort)]);
    check(set("/model/name", json!("m".repeat(257))), &[("model.name", ErrorCode::TooLong)]);
    check(set("/model/version", json!("v".repeat(129))), &[("model.version", ErrorCode::TooLong)]);
    check(set("/organization_id", json!("")), &[("organization_id", ErrorCode::TooShort)]);
    check(set("/organization_id", json!("org\u{7}")), &[("organization_id", ErrorCode::ControlCharacters)]);
    check(set("/project_id", json!("p\n")), &[("project_id", ErrorCode::ControlCharacters)]);
    check(set("/user_id", json!("u".repeat(257))), &[("user_id", ErrorCode::TooLong)]);
    check(set("/tags", json!(vec!["t"; 64])), &[]);
    check(set("/tags", json!(vec!["t"; 65])), &[("tags", ErrorCode::TooManyItems)]);
    check(set("/tags", json!(["ok", ""])), &[("tags[1]", ErrorCode::TooShort)]);
    check(set("/tags", json!(["x".repeat(129)])), &[("tags[0]", ErrorCode::TooLong)]);
}

#[test]
fn metadata_size_is_measured_serialized() {
    // {"k":"…"} is 8 bytes of framing.
    check(set("/metadata", json!({ "k": "x".repeat(16 * 1024 - 8) })), &[]);
    check(set("/metadata", json!({ "k": "x".repeat(16 * 1024 - 7) })), &[("metadata", ErrorCode::TooLarge)]);
}

#[test]
fn every_problem_is_reported_at_once() {
    check(
        |v| {
            v.as_object_mut().unwrap().remove("timestamp");
            v["provider"] = json!("");
            v["usage"]["cached_tokens"] = json!(500);
            v["usage"]["reasoning_tokens"] = json!(-1);
            v["tags"] = json!([1, ""]);
        },
        &[
            ("timestamp", ErrorCode::MissingField),
            ("provider", ErrorCode::TooShort),
            ("usage.reasoning_tokens", ErrorCode::NegativeNumber),
            ("tags[0]", ErrorCode::InvalidType),
            ("tags[1]", ErrorCode::TooShort),
            ("usage.cached_tokens", ErrorCode::CachedExceedsPrompt),
        ],
    );
}

#[test]
fn rules_on_fields_that_failed_to_decode_are_not_reported() {
    // prompt_tokens failed, so neither the sum nor cached ≤ prompt can be judged.
    check(set("/usage/prompt_tokens", json!("x")), &[("usage.prompt_tokens", ErrorCode::InvalidType)]);
    check(set("/performance/latency_ms", json!("x")), &[("performance.latency_ms", ErrorCode::InvalidType)]);
}

#[test]
fn record_level_errors() {
    let raw: &RawValue = serde_json::from_str("[1,2]").unwrap();
    let e = decode::record(raw, &ctx(), Uuid::nil).unwrap_err();
    assert_eq!((e.errors[0].field.as_str(), e.errors[0].code), ("", ErrorCode::InvalidType));
    let raw: &RawValue = serde_json::from_str(r#"{"provider":"a","provider":"b"}"#).unwrap();
    let e = decode::record(raw, &ctx(), Uuid::nil).unwrap_err();
    assert_eq!(e.errors[0].code, ErrorCode::InvalidRecord);
    assert!(e.errors[0].message.contains("duplicate field"), "{}", e.errors[0].message);
}

#[test]
fn syntax_errors_name_line_and_column() {
    match decode::single(b"{\n  \"a\": 1,\n  oops\n}") {
        Err(DocumentError::Syntax { line, column, .. }) => assert_eq!((line, column), (3, 3)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(decode::single(b""), Err(DocumentError::Syntax { line: 1, .. })));
    let deep = "[".repeat(100_000);
    assert!(matches!(decode::single(deep.as_bytes()), Err(DocumentError::Syntax { .. })));
}

#[test]
fn batch_envelope() {
    let b = decode::batch(
        br#"{"batch_id":"0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e","source":"gw","records":[{"a":1},2]}"#,
        10,
    )
    .unwrap();
    assert_eq!(b.records.len(), 2);
    assert_eq!(b.source.as_deref(), Some("gw"));
    let shape = |body: &[u8]| matches!(decode::batch(body, 10), Err(BatchError::Document(DocumentError::Shape { .. })));
    assert!(shape(br#"{"records":{}}"#));
    assert!(shape(br#"{"batch_id":"x","records":[]}"#));
    assert!(shape(br#"{}"#));
    assert!(shape(br#"[1, 2]"#));
    assert!(shape(br#"{"records":[],"records":[]}"#));
    assert!(matches!(
        decode::batch(br#"{"records":[1] x"#, 10),
        Err(BatchError::Document(DocumentError::Syntax { .. }))
    ));
    let unknown = decode::batch(br#"{"extra":{"a":[1]},"batch_id":null,"records":[1]}"#, 10).unwrap();
    assert_eq!((unknown.records.len(), unknown.batch_id), (1, None));
}

/// Records are counted while the body is parsed: record `max + 1` ends the
/// parse, even when what follows it is not JSON at all.
#[test]
fn batch_size_is_enforced_while_parsing() {
    let exactly = format!(r#"{{"records":[{}]}}"#, ["{}"; 3].join(","));
    assert_eq!(decode::batch(exactly.as_bytes(), 3).unwrap().records.len(), 3);
    let over = format!(r#"{{"records":[{}]}}"#, ["{}"; 4].join(","));
    assert!(matches!(decode::batch(over.as_bytes(), 3), Err(BatchError::TooMany { max: 3 })));
    // Parsing stops at the fourth record: the rest is never read.
    let truncated = br#"{"records":[{},{},{},{}, this is not JSON"#;
    assert!(matches!(decode::batch(truncated, 3), Err(BatchError::TooMany { max: 3 })));
    assert_eq!(BatchError::TooMany { max: 1000 }.to_string(), "batch has more than 1000 records; the maximum is 1000");
}

#[test]
fn stream_message_shapes() {
    let count = |s: &str| decode::stream_message(s.as_bytes()).map(|v| v.len());
    assert_eq!(count(r#"{"organization_id":"o"}"#).unwrap(), 1);
    assert_eq!(count(r#"{"records":[{},{},{}]}"#).unwrap(), 3);
    assert_eq!(count(r#"{"message_id":"m","event_type":"usage","payload":{}}"#).unwrap(), 1);
    assert_eq!(count(r#"{"message_id":"m","event_type":"batch","payload":{"records":[{},{}]}}"#).unwrap(), 2);
    assert_eq!(count(r#"{"event_type":"batch","payload":[{}]}"#).unwrap(), 1);
    assert!(matches!(count(r#"{"event_type":"delete","payload":{}}"#), Err(DocumentError::Shape { .. })));
    assert!(matches!(count(r#"{"event_type":"batch","payload":5}"#), Err(DocumentError::Shape { .. })));
    assert!(matches!(count(r#"[1]"#), Err(DocumentError::Shape { .. })));
    assert!(matches!(count("{"), Err(DocumentError::Syntax { .. })));
}

/// SPEC §5: `usage` makes a record whatever else it holds; then `payload`
/// makes an envelope; then `records` a batch; anything else is a record.
#[test]
fn stream_message_shape_order() {
    let record = valid();
    let first = |s: &Value| {
        let text = s.to_string();
        decode::stream_message(text.as_bytes()).map(|v| v.iter().map(|r| r.get().to_owned()).collect::<Vec<_>>())
    };
    for member in ["records", "payload", "event_type"] {
        let mut v = record.clone();
        v[member] = json!([{"x": 1}]);
        let got = first(&v).unwrap();
        assert_eq!(got.len(), 1, "{member}");
        let decoded: Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(decoded["usage"], record["usage"], "a record with a {member} member is still the record");
        let raw: &RawValue = serde_json::from_str(&got[0]).unwrap();
        assert!(decode::record(raw, &ctx(), Uuid::nil).is_ok(), "{member} is an unknown field of the record");
    }
    let mut v = record.clone();
    v["usage"] = Value::Null;
    v["records"] = json!([{}, {}]);
    assert_eq!(first(&v).unwrap().len(), 1, "usage: null is a usage member too");
    // payload before records
    let both = json!({"event_type": "batch", "payload": [{}, {}, {}], "records": [{}]});
    assert_eq!(first(&both).unwrap().len(), 3);
    // records with an event_type but no payload: a batch
    assert_eq!(first(&json!({"event_type": "usage", "records": [{}, {}]})).unwrap().len(), 2);
    assert!(matches!(first(&json!({"records": 5})), Err(DocumentError::Shape { .. })));
    assert_eq!(first(&json!({"event_type": "usage"})).unwrap().len(), 1, "no shape member: a record");
}

/// SPEC §1: a timestamp whose UTC form leaves years 0001–9999 is
/// `invalid_timestamp`, alone; before, `9999-12-31T23:59:59-01:00` panicked.
#[test]
fn timestamps_outside_the_years_every_backend_stores() {
    for (ts, ok) in [
        ("9999-12-31T23:59:59-01:00", false),
        ("9999-12-31T23:59:59+00:00", false), // in range, but far in the future
        ("0001-01-01T00:00:00+00:01", false),
        ("0000-06-01T00:00:00Z", false),
        ("0001-01-01T00:00:00Z", true),
        ("0001-01-01T00:00:00-23:59", true),
    ] {
        let mut v = valid();
        v["timestamp"] = json!(ts);
        match decode_value(&v) {
            Ok(_) => assert!(ok, "{ts} accepted"),
            Err(r) => {
                assert!(!ok, "{ts} refused: {:?}", r.errors);
                assert_eq!(r.errors.len(), 1, "{ts}: {:?}", r.errors);
                let expected = if ts.starts_with("9999-12-31T23:59:59+") {
                    ErrorCode::TimestampInFuture
                } else {
                    ErrorCode::InvalidTimestamp
                };
                assert_eq!((r.errors[0].field.as_str(), r.errors[0].code), ("timestamp", expected), "{ts}");
            }
        }
    }
    // A skew past the end of time allows everything rather than panicking.
    let far = Context { now: datetime!(2026-01-01 12:00 UTC), max_future_skew: Duration::seconds(i64::MAX) };
    let raw = valid().to_string();
    let raw: &RawValue = serde_json::from_str(&raw).unwrap();
    assert!(decode::record(raw, &far, Uuid::nil).is_ok());
}

/// SPEC §1: no control characters in any string that reaches a text column
/// (`provider` as sent, before trimming), no U+0000 anywhere in metadata.
#[test]
fn strings_the_databases_refuse_are_rejected() {
    let cases: &[(&str, Value, &str, ErrorCode)] = &[
        ("/provider", json!("open\u{0}ai"), "provider", ErrorCode::ControlCharacters),
        ("/provider", json!("openai\n"), "provider", ErrorCode::ControlCharacters),
        ("/provider", json!("\u{85}openai"), "provider", ErrorCode::ControlCharacters),
        ("/model/name", json!("gpt\u{0}"), "model.name", ErrorCode::ControlCharacters),
        ("/model/version", json!("v\u{1f}1"), "model.version", ErrorCode::ControlCharacters),
        ("/tags", json!(["ok", "b\u{7f}ad"]), "tags[1]", ErrorCode::ControlCharacters),
        ("/organization_id", json!("o\u{0}"), "organization_id", ErrorCode::ControlCharacters),
        ("/metadata", json!({"a": "x\u{0}y"}), "metadata.a", ErrorCode::NulCharacter),
        ("/metadata", json!({"k\u{0}": 1}), "metadata.k\u{0}", ErrorCode::NulCharacter),
        ("/metadata", json!({"a": {"b": [1, "ok", "\u{0}"]}}), "metadata.a.b[2]", ErrorCode::NulCharacter),
    ];
    for (pointer, value, field, code) in cases {
        let mut v = valid();
        *v.pointer_mut(pointer).unwrap() = value.clone();
        let r = decode_value(&v).unwrap_err();
        assert_eq!(r.errors.len(), 1, "{pointer}: {:?}", r.errors);
        assert_eq!((r.errors[0].field.as_str(), r.errors[0].code), (*field, *code), "{pointer} = {value}");
    }
    // Other control characters in metadata are stored as sent; U+0000 as text is fine.
    let mut v = valid();
    v["metadata"] = json!({"a": "tab\there", "b": "\\u0000 is six characters"});
    assert!(decode_value(&v).is_ok());
}

#[test]
fn error_codes_round_trip_and_are_snake_case() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_code(code.as_str()), Some(*code));
        assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        assert!(code.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    }
}

#[test]
fn error_codes_are_documented() {
    let doc = include_str!("../../../docs/errors.md");
    for code in ErrorCode::ALL {
        assert!(doc.contains(&format!("`{}`", code.as_str())), "docs/errors.md does not list {code}");
    }
}

const MAX: u64 = i64::MAX as u64;

proptest! {
    #[test]
    fn token_sum_is_checked_without_overflow(p in 0..=MAX, c in 0..=MAX, t in 0..=MAX) {
        let mut v = valid();
        v["usage"] = json!({ "prompt_tokens": p, "completion_tokens": c, "total_tokens": t });
        let errors = decode_value(&v).err().map(|r| r.errors).unwrap_or_default();
        let mismatch = errors.iter().any(|e| e.code == ErrorCode::TokenSumMismatch);
        prop_assert_eq!(mismatch, p.checked_add(c) != Some(t));
    }

    #[test]
    fn sub_counts_are_bounded(p in 0..1000u64, c in 0..1000u64, cached in 0..2000u64, reasoning in 0..2000u64) {
        let mut v = valid();
        v["usage"] = json!({ "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                             "cached_tokens": cached, "reasoning_tokens": reasoning });
        let codes: Vec<ErrorCode> = decode_value(&v).err().map(|r| r.errors).unwrap_or_default()
            .into_iter().map(|e| e.code).collect();
        prop_assert_eq!(codes.contains(&ErrorCode::CachedExceedsPrompt), cached > p);
        prop_assert_eq!(codes.contains(&ErrorCode::ReasoningExceedsCompletion), reasoning > c);
    }

    /// Any field of a valid record (or the record itself) replaced by any
    /// JSON value: accepted, or rejected with at least one coded field error
    /// naming a field of the record, never a panic. Also inside a batch.
    #[test]
    fn any_json_in_any_field_is_accepted_or_rejected_with_field_errors(
        path in proptest::sample::select(FIELD_PATHS),
        value in any_json(),
    ) {
        let mut v = valid();
        if path.is_empty() {
            v = value;
        } else {
            let (parent, leaf) = match path.rsplit_once('.') {
                Some((p, l)) => (v.pointer_mut(&format!("/{}", p.replace('.', "/"))), l),
                None => (Some(&mut v), path),
            };
            if let Some(Value::Object(map)) = parent {
                map.insert(leaf.to_owned(), value);
            }
        }
        match decode_value(&v) {
            Ok(record) => prop_assert!(!record.organization_id.is_empty()),
            Err(rejected) => {
                prop_assert!(!rejected.errors.is_empty());
                for e in &rejected.errors {
                    prop_assert_eq!(ErrorCode::from_code(e.code.as_str()), Some(e.code));
                    let top = e.field.split(['.', '[']).next().unwrap_or("");
                    prop_assert!(top.is_empty() || valid().get(top).is_some(), "unknown field {:?}", e.field);
                }
            }
        }
        let batch = serde_json::to_vec(&json!({ "records": [v.clone(), valid()] })).unwrap();
        let envelope = decode::batch(&batch, 1000).unwrap();
        prop_assert_eq!(envelope.records.len(), 2);
        prop_assert!(decode::record(envelope.records[1], &ctx(), Uuid::nil).is_ok());
    }

    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(raw) = decode::single(&bytes)
            && let Err(r) = decode::record(raw, &ctx(), Uuid::nil)
        {
            prop_assert!(!r.errors.is_empty());
        }
        let _ = decode::stream_message(&bytes);
    }

    #[test]
    fn arbitrary_json_records_are_accepted_or_explained(v in arb_json(3)) {
        let text = v.to_string();
        let raw: &RawValue = serde_json::from_str(&text).unwrap();
        match decode::record(raw, &ctx(), Uuid::nil) {
            Ok(_) => {}
            Err(r) => prop_assert!(!r.errors.is_empty()),
        }
    }
}

fn arb_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 32, 6, |inner| {
        let keys = prop_oneof![
            Just("timestamp".to_owned()),
            Just("provider".to_owned()),
            Just("model".to_owned()),
            Just("usage".to_owned()),
            Just("organization_id".to_owned()),
            Just("tags".to_owned()),
            Just("prompt_tokens".to_owned()),
            Just("name".to_owned()),
            "[a-z]{1,4}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(keys, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn mask_url_hides_every_secret_of_the_user_info() {
    use crate::mask_url;
    assert_eq!(mask_url("postgres://u:pw@db:5432/x"), "postgres://u:***@db:5432/x");
    // A token alone is a secret (NATS token auth, Redis `requirepass`).
    assert_eq!(mask_url("nats://s3cr3t@127.0.0.1:4222"), "nats://***@127.0.0.1:4222");
    assert_eq!(mask_url("redis://:pw@127.0.0.1:6379/0"), "redis://***@127.0.0.1:6379/0");
    // A password holding `@`, and an `@` in the path that is not user info.
    assert_eq!(mask_url("postgres://u:p@ss@db/x"), "postgres://u:***@db/x");
    assert_eq!(mask_url("postgres://u:pa/ss@db/x"), "postgres://u:***@db/x");
    assert_eq!(mask_url("postgres://u:pa?s#s@db/x"), "postgres://u:***@db/x");
    // Server lists: every URL masked.
    assert_eq!(mask_url("nats://tok@a:4222,nats://tok@b:4222"), "nats://***@a:4222,nats://***@b:4222");
    assert_eq!(mask_url("postgres://u:pw@h1,h2/db"), "postgres://u:***@h1,h2/db");
    assert_eq!(mask_url("sqlite:///tmp/a@b.db"), "sqlite:///tmp/a@b.db");
    assert_eq!(mask_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    assert_eq!(mask_url("sqlite:ingestd.db"), "sqlite:ingestd.db");
}
