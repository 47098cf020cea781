//! Validation against an independent oracle: SPEC §1's rules written out
//! again here, plainly, over `serde_json::Value`, sharing none of the
//! decoder's own code (only the libraries both stand on: `time`'s RFC 3339
//! parser, `uuid`, `serde_json`'s numbers, so a disagreement inside those is
//! out of its reach). For generated records — every field replaced by values
//! chosen near the rules' edges — the decoder must accept exactly the
//! records the oracle calls valid, and reject the others naming exactly the
//! fields the oracle names. A property that only checked "no panic" could
//! not tell a decoder that accepts everything from a correct one; this can.
//! (`usage.cache_write_tokens`, SPEC §9, arrives with cost; the oracle gets
//! its rule then.)

use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-01-01 12:00 UTC);
const SKEW_SECS: i64 = 300;
const MAX_COUNT: u64 = (1 << 63) - 1;

/// The fields SPEC §1's rules find wrong in `v`, as the decoder names them
/// at the depth compared here: `usage.total_tokens`, `model.name`, `tags`,
/// `metadata` (an element's index and a metadata key's path are cut).
fn oracle(v: &Value) -> BTreeSet<String> {
    let mut bad = BTreeSet::new();
    let Value::Object(r) = v else {
        bad.insert(String::new());
        return bad;
    };
    let mut flag = |field: &str, ok: bool| {
        if !ok {
            bad.insert(field.to_owned());
        }
    };
    let present = |o: &serde_json::Map<String, Value>, k: &str| o.get(k).filter(|v| !v.is_null()).cloned();

    // request_id: optional UUID.
    if let Some(id) = present(r, "request_id") {
        flag("request_id", id.as_str().is_some_and(|s| uuid::Uuid::try_parse(s).is_ok()));
    }
    // timestamp: required RFC 3339, UTC year 1..=9999, at most 300 s ahead.
    let ts = present(r, "timestamp");
    flag(
        "timestamp",
        ts.as_ref().and_then(Value::as_str).and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok()).is_some_and(|t| {
            t.checked_to_offset(time::UtcOffset::UTC)
                .is_some_and(|utc| (1..=9999).contains(&utc.year()) && utc <= NOW + Duration::seconds(SKEW_SECS))
        }),
    );
    // provider: required; no control characters as sent; 1..=64 characters
    // once trimmed (lower-casing may lengthen what is stored).
    flag(
        "provider",
        present(r, "provider")
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| no_control(s) && (1..=64).contains(&s.trim().chars().count())),
    );
    // model: required object.
    match present(r, "model") {
        Some(Value::Object(m)) => {
            flag("model.name", present(&m, "name").as_ref().is_some_and(|n| text(n, 1, 256)));
            if let Some(version) = present(&m, "version") {
                flag("model.version", text(&version, 0, 128));
            }
            if let Some(window) = present(&m, "context_window") {
                flag("model.context_window", count(&window).is_some_and(|n| n >= 1));
            }
        }
        _ => flag("model", false),
    }
    flag("organization_id", present(r, "organization_id").as_ref().is_some_and(|o| text(o, 1, 256)));
    for field in ["project_id", "user_id"] {
        if let Some(value) = present(r, field) {
            flag(field, text(&value, 0, 256));
        }
    }
    // usage: required object of counts, with the rules between them (each
    // checked only when the counts it reads are themselves valid).
    match present(r, "usage") {
        Some(Value::Object(u)) => {
            let mut get = |k: &str, required: bool| {
                let field = format!("usage.{k}");
                match present(&u, k) {
                    None => {
                        flag(&field, !required);
                        (None, !required)
                    }
                    Some(v) => {
                        let n = count(&v);
                        flag(&field, n.is_some());
                        (n, n.is_some())
                    }
                }
            };
            let (prompt, prompt_ok) = get("prompt_tokens", true);
            let (completion, completion_ok) = get("completion_tokens", true);
            let (total, _) = get("total_tokens", true);
            let (cached, cached_ok) = get("cached_tokens", false);
            let (cache_write, _) = get("cache_write_tokens", false);
            let (reasoning, _) = get("reasoning_tokens", false);
            if let (Some(p), Some(c), Some(t)) = (prompt, completion, total) {
                flag("usage.total_tokens", p.checked_add(c) == Some(t));
            }
            if let (true, Some(p), Some(c)) = (prompt_ok, prompt, cached) {
                flag("usage.cached_tokens", c <= p);
            }
            // Cache writes: cached + cache_write <= prompt, unless the
            // cached count alone already fails.
            if let (true, true, Some(p), Some(w)) = (prompt_ok, cached_ok, prompt, cache_write)
                && cached.is_none_or(|c| c <= p)
            {
                flag("usage.cache_write_tokens", cached.unwrap_or(0).checked_add(w).is_some_and(|s| s <= p));
            }
            if let (true, Some(c), Some(r)) = (completion_ok, completion, reasoning) {
                flag("usage.reasoning_tokens", r <= c);
            }
        }
        _ => flag("usage", false),
    }
    // performance: optional object of non-negative numbers; TTFT ≤ latency.
    match present(r, "performance") {
        None => {}
        Some(Value::Object(p)) => {
            let mut get = |k: &str| {
                present(&p, k).map(|v| {
                    let n = v.as_f64().filter(|n| *n >= 0.0);
                    flag(&format!("performance.{k}"), n.is_some());
                    n
                })
            };
            let latency = get("latency_ms");
            let ttft = get("time_to_first_token_ms");
            if let (Some(Some(l)), Some(Some(t))) = (latency, ttft) {
                flag("performance.time_to_first_token_ms", t <= l);
            }
        }
        Some(_) => flag("performance", false),
    }
    // tags: optional array of ≤ 64 strings of 1..=128 characters.
    match present(r, "tags") {
        None => {}
        Some(Value::Array(tags)) => flag("tags", tags.len() <= 64 && tags.iter().all(|t| text(t, 1, 128))),
        Some(_) => flag("tags", false),
    }
    // metadata: optional object, ≤ 16 KiB serialized, no U+0000 anywhere.
    match present(r, "metadata") {
        None => {}
        Some(m @ Value::Object(_)) => {
            flag("metadata", serde_json::to_string(&m).unwrap().len() <= 16 * 1024 && !has_nul(&m))
        }
        Some(_) => flag("metadata", false),
    }
    bad
}

/// A string of `min..=max` characters without control characters.
fn text(v: &Value, min: usize, max: usize) -> bool {
    v.as_str().is_some_and(|s| (min..=max).contains(&s.chars().count()) && no_control(s))
}

/// U+0000–U+001F and U+007F–U+009F, spelled out rather than `is_control`.
fn no_control(s: &str) -> bool {
    !s.chars().any(|c| matches!(c as u32, 0x00..=0x1f | 0x7f..=0x9f))
}

/// A token count: a JSON integer (or a number with no fraction) in 0..=2^63−1.
fn count(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return (n <= MAX_COUNT).then_some(n);
    }
    let f = v.as_f64()?;
    // Every f64 here is an integer or has a fraction; 2^63 is the first out of range.
    (v.is_f64() && f.fract() == 0.0 && (0.0..9_223_372_036_854_775_808.0).contains(&f)).then_some(f as u64)
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// What the decoder reported, at the oracle's depth.
fn decoded(v: &Value) -> Result<(), BTreeSet<String>> {
    let text = serde_json::to_string(v).unwrap();
    let raw: &RawValue = serde_json::from_str(&text).unwrap();
    let ctx = ingest_model::validate::Context { now: NOW, max_future_skew: Duration::seconds(SKEW_SECS) };
    match ingest_model::decode::record(raw, &ctx, uuid::Uuid::nil) {
        Ok(_) => Ok(()),
        Err(rejected) => Err(rejected
            .errors
            .iter()
            .map(|e| {
                let field = e.field.split('[').next().unwrap_or("");
                let depth = if field.starts_with("metadata") { 1 } else { 2 };
                field.split('.').take(depth).collect::<Vec<_>>().join(".")
            })
            .collect()),
    }
}

fn valid() -> Value {
    json!({
        "request_id": "0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e",
        "timestamp": "2026-01-01T11:59:00Z",
        "provider": "openai",
        "model": { "name": "gpt-4o", "version": "2024-08-06", "context_window": 128000 },
        "organization_id": "org-1",
        "project_id": "proj-1",
        "user_id": "user-1",
        "usage": { "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                   "cached_tokens": 20, "reasoning_tokens": 10 },
        "performance": { "latency_ms": 1200.5, "time_to_first_token_ms": 150 },
        "tags": ["prod", "chat"],
        "metadata": { "team": "search" }
    })
}

/// Strings near the rules: empty, at and past each length limit, with
/// control characters (first, last, C1, DEL), U+0000, whitespace to trim,
/// letters whose lower case is longer, timestamps at the ends of time.
fn edge_string() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => Just(" ".to_owned()),
        1 => "[a-zA-Z0-9 _.-]{1,8}",
        8 => (
            proptest::sample::select(vec![0usize, 1, 63, 64, 65, 127, 128, 129, 255, 256, 257]),
            proptest::sample::select(vec!["x", "é", "İ", " ", "😀"]),
            proptest::sample::select(vec!["", " ", "\t"]),
        )
            .prop_map(|(n, c, pad)| format!("{pad}{}{pad}", c.repeat(n))),
        1 => Just("\u{0}".to_owned()),
        1 => Just("a\u{1f}b".to_owned()),
        1 => Just("a\u{7f}".to_owned()),
        1 => Just("\u{85}a".to_owned()),
        1 => Just("\u{a0}ok\u{a0}".to_owned()),
        1 => Just("\u{9f}".to_owned()),
        1 => Just("é😀".to_owned()),
        1 => Just("2026-01-01T12:05:00Z".to_owned()),
        1 => Just("2026-01-01T12:05:01Z".to_owned()),
        1 => Just("9999-12-31T23:59:59-01:00".to_owned()),
        1 => Just("0001-01-01T00:00:00+00:01".to_owned()),
        1 => Just("0000-12-31T23:00:00-01:00".to_owned()),
        1 => Just("1970-01-01T00:00:00.123456789Z".to_owned()),
        1 => Just("2026-01-01 11:00:00Z".to_owned()),
        1 => Just("0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e".to_owned()),
        1 => Just("0192F8A07B5C7CC49D1E3F2A1B0C9D8E".to_owned()),
        1 => ".{0,20}",
    ]
}

fn edge_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(MAX_COUNT)),
        Just(json!(MAX_COUNT + 1)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1.0)),
        Just(json!(2.5)),
        Just(json!(-0.0)),
        Just(json!(1e300)),
        Just(json!(9.223372036854776e18)),
        (0u64..300).prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
    ]
}

fn edge_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => edge_number(),
        3 => edge_string().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 80, 70, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..70).prop_map(Value::Array),
            proptest::collection::btree_map(edge_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const PATHS: &[&str] = &[
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
    "usage.cache_write_tokens",
    "usage.reasoning_tokens",
    "performance",
    "performance.latency_ms",
    "performance.time_to_first_token_ms",
    "tags",
    "metadata",
];

/// A valid record with up to three fields replaced (or removed).
fn edited() -> impl Strategy<Value = Value> {
    proptest::collection::vec((proptest::sample::select(PATHS), proptest::option::weighted(0.9, edge_value())), 1..4)
        .prop_map(|edits| {
            let mut v = valid();
            for (path, value) in edits {
                let (parent, leaf) = match path.rsplit_once('.') {
                    Some((p, l)) => (v.pointer_mut(&format!("/{p}")), l),
                    None => (Some(&mut v), path),
                };
                if let Some(Value::Object(map)) = parent {
                    match value {
                        Some(value) => map.insert(leaf.to_owned(), value),
                        None => map.remove(leaf),
                    };
                }
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn the_decoder_accepts_exactly_what_the_rules_allow(v in edited()) {
        let expected = oracle(&v);
        match decoded(&v) {
            Ok(()) => prop_assert!(expected.is_empty(), "accepted, but the rules find {expected:?} wrong in {v}"),
            Err(fields) => prop_assert_eq!(&fields, &expected, "{}", v),
        }
    }
}

/// The oracle itself can fail: it finds the planted faults.
#[test]
fn the_oracle_finds_planted_faults() {
    assert!(oracle(&valid()).is_empty());
    let mut v = valid();
    v["usage"]["total_tokens"] = json!(151);
    v["provider"] = json!(" ");
    v["tags"] = json!(["a\u{7f}"]);
    let expected: BTreeSet<String> = ["usage.total_tokens", "provider", "tags"].map(String::from).into();
    assert_eq!(oracle(&v), expected);
    assert_eq!(decoded(&v), Err(expected));
}
