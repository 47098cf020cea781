//! Structure-aware: records built field by field from arbitrary strings and
//! numbers, written as JSON text by hand so that what `serde_json` would
//! never produce is reachable — lone surrogates escaped (`"\ud800"`),
//! integers past 2^64, exponents, years 0000/9999 with offsets — while the
//! rest of the record stays valid enough for the decoder to get that far.
//! Beyond the common contract, an accepted record must keep the rules
//! between its fields.
#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};

#[derive(Arbitrary, Debug)]
enum Text {
    Valid,
    Any(String),
    /// Raw JSON string content, escapes and all.
    Escaped(Vec<Escape>),
    Repeat(char, u16),
}

#[derive(Arbitrary, Debug)]
enum Escape {
    Char(char),
    Nul,
    LoneHigh,
    LoneLow,
    Pair,
    Control(u8),
}

#[derive(Arbitrary, Debug)]
enum Number {
    Small(u16),
    Any(u64),
    Signed(i64),
    Float(f64),
    Boundary(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Timestamp {
    Valid,
    Parts { year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8, nanos: u32, offset_minutes: i16 },
    Any(String),
}

#[derive(Arbitrary, Debug)]
struct Record {
    request_id: Option<Text>,
    timestamp: Timestamp,
    provider: Text,
    model_name: Text,
    model_version: Option<Text>,
    context_window: Option<Number>,
    organization_id: Text,
    project_id: Option<Text>,
    tags: Vec<Text>,
    prompt: Number,
    completion: Number,
    total: Option<Number>,
    cached: Option<Number>,
    reasoning: Option<Number>,
    latency: Option<Number>,
    ttft: Option<Number>,
    metadata: Vec<(Text, Text)>,
}

fn text(t: &Text, valid: &str) -> String {
    match t {
        Text::Valid => serde_json::to_string(valid).unwrap(),
        Text::Any(s) => serde_json::to_string(s).unwrap(),
        Text::Repeat(c, n) => serde_json::to_string(&c.to_string().repeat(usize::from(*n % 300))).unwrap(),
        Text::Escaped(parts) => {
            let mut out = String::from("\"");
            for p in parts.iter().take(64) {
                match p {
                    Escape::Char(c) => {
                        let quoted = serde_json::to_string(&c.to_string()).unwrap();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    }
                    Escape::Nul => out.push_str("\\u0000"),
                    Escape::LoneHigh => out.push_str("\\ud800"),
                    Escape::LoneLow => out.push_str("\\udfff"),
                    Escape::Pair => out.push_str("\\ud83e\\udd80"),
                    Escape::Control(b) => out.push_str(&format!("\\u{:04x}", 0x80 + u16::from(*b % 0x20))),
                }
            }
            out.push('"');
            out
        }
    }
}

fn number(n: &Number) -> String {
    match n {
        Number::Small(v) => v.to_string(),
        Number::Any(v) => v.to_string(),
        Number::Signed(v) => v.to_string(),
        Number::Float(f) if f.is_finite() => format!("{f:?}"),
        Number::Float(_) => "1.5".to_owned(),
        Number::Boundary(b) => [
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "9007199254740993",
            "9007199254740993.0",
            "1e3",
            "1E+2",
            "-0",
            "-0.0",
            "0.0",
            "1e400",
            "5e-324",
            "100.0000000000000000001",
        ][usize::from(*b) % 14]
            .to_owned(),
        Number::Text(s) => serde_json::to_string(s).unwrap(),
    }
}

fn timestamp(t: &Timestamp) -> String {
    match t {
        Timestamp::Valid => "\"2024-06-01T12:00:00Z\"".to_owned(),
        Timestamp::Parts { year, month, day, hour, minute, second, nanos, offset_minutes } => {
            let offset = match offset_minutes % 1441 {
                0 => "Z".to_owned(),
                m => format!("{}{:02}:{:02}", if m < 0 { '-' } else { '+' }, m.abs() / 60, m.abs() % 60),
            };
            let year = [0, 1, 9999, 1970, 2024][usize::from(*year % 5)].max(if *year > 4 { year % 10_000 } else { 0 });
            format!(
                "\"{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}{offset}\"",
                month % 14,
                day % 33,
                hour % 25,
                minute % 61,
                second % 62,
                nanos % 1_000_000_000
            )
        }
        Timestamp::Any(s) => serde_json::to_string(s).unwrap(),
    }
}

impl Record {
    fn json(&self) -> String {
        let mut fields = vec![
            format!("\"timestamp\":{}", timestamp(&self.timestamp)),
            format!("\"provider\":{}", text(&self.provider, "OpenAI")),
            format!("\"organization_id\":{}", text(&self.organization_id, "org-1")),
        ];
        if let Some(id) = &self.request_id {
            fields.push(format!("\"request_id\":{}", text(id, "0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e")));
        }
        if let Some(p) = &self.project_id {
            fields.push(format!("\"project_id\":{}", text(p, "proj")));
        }
        let mut model = vec![format!("\"name\":{}", text(&self.model_name, "gpt-4o"))];
        if let Some(v) = &self.model_version {
            model.push(format!("\"version\":{}", text(v, "2024-08-06")));
        }
        if let Some(w) = &self.context_window {
            model.push(format!("\"context_window\":{}", number(w)));
        }
        fields.push(format!("\"model\":{{{}}}", model.join(",")));
        let (prompt, completion) = (number(&self.prompt), number(&self.completion));
        // Without a total of its own, the right sum where there is one, so
        // the other rules are reached.
        let total = match &self.total {
            Some(t) => number(t),
            None => match (prompt.parse::<u64>(), completion.parse::<u64>()) {
                (Ok(p), Ok(c)) => p.checked_add(c).map_or_else(|| "0".to_owned(), |t| t.to_string()),
                _ => "0".to_owned(),
            },
        };
        let mut usage = vec![
            format!("\"prompt_tokens\":{prompt}"),
            format!("\"completion_tokens\":{completion}"),
            format!("\"total_tokens\":{total}"),
        ];
        if let Some(c) = &self.cached {
            usage.push(format!("\"cached_tokens\":{}", number(c)));
        }
        if let Some(r) = &self.reasoning {
            usage.push(format!("\"reasoning_tokens\":{}", number(r)));
        }
        fields.push(format!("\"usage\":{{{}}}", usage.join(",")));
        let mut performance = Vec::new();
        if let Some(l) = &self.latency {
            performance.push(format!("\"latency_ms\":{}", number(l)));
        }
        if let Some(t) = &self.ttft {
            performance.push(format!("\"time_to_first_token_ms\":{}", number(t)));
        }
        fields.push(format!("\"performance\":{{{}}}", performance.join(",")));
        let tags: Vec<String> = self.tags.iter().take(70).map(|t| text(t, "prod")).collect();
        fields.push(format!("\"tags\":[{}]", tags.join(",")));
        let metadata: Vec<String> =
            self.metadata.iter().take(16).map(|(k, v)| format!("{}:{}", text(k, "k"), text(v, "v"))).collect();
        fields.push(format!("\"metadata\":{{{}}}", metadata.join(",")));
        format!("{{{}}}", fields.join(","))
    }
}

libfuzzer_sys::fuzz_target!(|record: Record| {
    let json = record.json();
    let Ok(raw) = model::decode::single(json.as_bytes()) else { return };
    common::check(raw);
    if let Some(r) = common::accepted(raw) {
        let u = &r.usage;
        assert_eq!(u.prompt_tokens.checked_add(u.completion_tokens), Some(u.total_tokens), "{json}");
        assert!(u.total_tokens <= i64::MAX as u64, "{json}");
        assert!(u.cached_tokens.is_none_or(|c| c <= u.prompt_tokens), "{json}");
        assert!(u.reasoning_tokens.is_none_or(|c| c <= u.completion_tokens), "{json}");
        assert!((1..=9999).contains(&r.timestamp.year()), "{json}");
        assert!(!r.provider.is_empty() && r.provider == r.provider.trim().to_lowercase(), "{json}");
        for s in [&r.provider, &r.model.name, &r.organization_id].into_iter().chain(&r.tags) {
            assert!(!s.chars().any(char::is_control), "{json}");
        }
        let nul = |s: &str| s.contains('\0');
        let no_nul = r.metadata.iter().flatten().all(|(k, v)| !nul(k) && v.as_str().is_none_or(|s| !nul(s)));
        assert!(no_nul, "{json}");
    }
});
