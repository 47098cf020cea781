//! Cost arithmetic (SPEC §9) against the shipped snapshot: hand-computed
//! examples, every catalog price read exactly, and properties against an
//! independent big-decimal computation.

use std::str::FromStr;

use bigdecimal::{BigDecimal, RoundingMode};
use ingest_pricing::{Index, Providers, Rates, Tokens};
use proptest::prelude::*;

fn index() -> Index<Rates> {
    Index::new(Providers::builtin(), entries().iter().map(|e| (e.key.clone(), e.provider.clone(), e.rates.clone())))
}

/// The snapshot's entries, read once.
fn entries() -> &'static [ingest_pricing::Entry] {
    static ENTRIES: std::sync::OnceLock<Vec<ingest_pricing::Entry>> = std::sync::OnceLock::new();
    ENTRIES.get_or_init(|| ingest_pricing::catalog::snapshot().unwrap().entries)
}

fn cost(index: &Index<Rates>, key: &str, t: Tokens) -> i64 {
    index.get(key).unwrap_or_else(|| panic!("{key} is in the snapshot")).cost_nano_usd(&t).unwrap()
}

fn t(prompt: u64, cached: u64, cache_write: u64, completion: u64, reasoning: u64) -> Tokens {
    Tokens { prompt, completion, cached, cache_write, reasoning }
}

/// Each figure is worked out by hand in the comment above it (USD).
#[test]
fn hand_computed_examples() {
    let index = index();
    // GPT-4o, 1024 of 1234 prompt tokens from the cache: 210 × 2.5e-6
    // + 1024 × 1.25e-6 + 56 × 1e-5 = 0.000525 + 0.00128 + 0.00056 = 0.002365
    assert_eq!(cost(&index, "gpt-4o", t(1234, 1024, 0, 56, 0)), 2_365_000);
    // Claude Sonnet 4.5 writing 3000 tokens to the cache, reading 1500:
    // 500 × 3e-6 + 1500 × 3e-7 + 3000 × 3.75e-6 + 800 × 1.5e-5
    // = 0.0015 + 0.00045 + 0.01125 + 0.012 = 0.0252
    assert_eq!(cost(&index, "claude-sonnet-4-5", t(5000, 1500, 3000, 800, 0)), 25_200_000);
    // Gemini 2.5 Pro at its 200k threshold (not above it): base rates,
    // 200000 × 1.25e-6 + 1000 × 1e-5 = 0.25 + 0.01 = 0.26
    assert_eq!(cost(&index, "gemini/gemini-2.5-pro", t(200_000, 0, 0, 1000, 0)), 260_000_000);
    // One token above: the whole record at the tier's rates,
    // 200001 × 2.5e-6 + 1000 × 1.5e-5 = 0.5000025 + 0.015 = 0.5150025
    assert_eq!(cost(&index, "gemini/gemini-2.5-pro", t(200_001, 0, 0, 1000, 0)), 515_002_500);
    // ... and its cache-read tier: 1000 × 2.5e-7 of the 200001 from the cache,
    // 199001 × 2.5e-6 + 1000 × 2.5e-7 + 1000 × 1.5e-5
    // = 0.4975025 + 0.00025 + 0.015 = 0.5127525
    assert_eq!(cost(&index, "gemini/gemini-2.5-pro", t(200_001, 1000, 0, 1000, 0)), 512_752_500);
    // qwen-flash's `tiered_pricing`: [0, 256000) at 5e-8 / 4e-7,
    // 255999 × 5e-8 + 100 × 4e-7 = 0.01279995 + 0.00004 = 0.01283995
    assert_eq!(cost(&index, "dashscope/qwen-flash", t(255_999, 0, 0, 100, 0)), 12_839_950);
    // [256000, 1000000) at 2.5e-7 / 2e-6 (lower bound inclusive):
    // 256000 × 2.5e-7 + 100 × 2e-6 = 0.064 + 0.0002 = 0.0642
    assert_eq!(cost(&index, "dashscope/qwen-flash", t(256_000, 0, 0, 100, 0)), 64_200_000);
    // qwen-turbo, whose reasoning rate (5e-7) is not its output rate (2e-7):
    // 100 × 5e-8 + 400 × 2e-7 + 600 × 5e-7 = 0.000005 + 0.00008 + 0.0003 = 0.000385
    assert_eq!(cost(&index, "dashscope/qwen-turbo", t(100, 0, 0, 1000, 600)), 385_000);
    // GPT-4o has no reasoning rate: reasoning tokens at the output rate,
    // 10 × 2.5e-6 + 10 × 1e-5 = 0.000125
    assert_eq!(cost(&index, "gpt-4o", t(10, 0, 0, 10, 7)), 125_000);
}

/// Every rate of the snapshot is the exact decimal its JSON text says
/// (compared with the text itself: a value read through `f64` and printed
/// back, `2.99999e-06` for `2.9999900000000002e-06`, would fail this).
#[test]
fn every_snapshot_price_is_exact() {
    use serde_json::value::RawValue;
    let text = ingest_pricing::catalog::snapshot_json().unwrap();
    let raw: std::collections::BTreeMap<String, std::collections::BTreeMap<String, &RawValue>> =
        serde_json::from_str(&text).unwrap();
    let index = index();
    let mut checked = 0;
    for (key, fields) in &raw {
        let Some(rates) = index.get(key) else { continue };
        for (field, parsed) in [
            ("input_cost_per_token", rates.base.input),
            ("output_cost_per_token", rates.base.output),
            ("cache_read_input_token_cost", rates.base.cache_read),
            ("cache_creation_input_token_cost", rates.base.cache_write),
            ("output_cost_per_reasoning_token", rates.base.reasoning),
        ] {
            let Some(json) = fields.get(field) else { continue };
            let expected = BigDecimal::from_str(json.get()).unwrap();
            let got = BigDecimal::from_str(&parsed.unwrap().to_string()).unwrap();
            assert_eq!(got, expected, "{key}.{field}: {}", json.get());
            checked += 1;
        }
    }
    assert!(checked > 7000, "{checked} prices checked");
}

/// The cost as an independent big-decimal computation, rounded half to even.
fn reference(rates: &Rates, t: &Tokens) -> i64 {
    let r = rates.effective(t.prompt);
    let big = |d: ingest_pricing::Decimal| BigDecimal::from_str(&d.to_string()).unwrap();
    let input = big(r.input.unwrap());
    let output = r.output.map(big).unwrap_or_default();
    let n = |v: u64| BigDecimal::from(v);
    let usd = n(t.prompt - t.cached - t.cache_write) * &input
        + n(t.cached) * r.cache_read.map(big).unwrap_or(input.clone())
        + n(t.cache_write) * r.cache_write.map(big).unwrap_or(input.clone())
        + n(t.completion - t.reasoning) * &output
        + n(t.reasoning) * r.reasoning.map(big).unwrap_or(output.clone());
    let nano = (usd * BigDecimal::from(1_000_000_000)).with_scale_round(0, RoundingMode::HalfEven);
    nano.to_string().parse().unwrap()
}

fn tokens() -> impl Strategy<Value = Tokens> {
    (0u64..3_000_000, 0u64..3_000_000, 0u64..=100, 0u64..=100, 0u64..=100).prop_map(|(p, c, cr, cw, rs)| {
        let cached = p * cr / 100;
        let cache_write = (p - cached) * cw / 100;
        Tokens { prompt: p, completion: c, cached, cache_write, reasoning: c * rs / 100 }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Equal to the big-decimal computation, for any catalog entry.
    #[test]
    fn equals_an_independent_big_decimal_computation(pick in 0usize..100_000, t in tokens()) {
        let entry = &entries()[pick % entries().len()];
        if t.completion > 0 && entry.rates.effective(t.prompt).output.is_none() {
            return Ok(());
        }
        prop_assert_eq!(entry.rates.cost_nano_usd(&t).unwrap(), reference(&entry.rates, &t), "{}", entry.key);
    }

    /// More of any kind of token never costs less (within one tier: a
    /// larger prompt may cross into a tier with other rates).
    #[test]
    fn monotone_in_every_token_count(pick in 0usize..100_000, t in tokens(), kind in 0usize..5, more in 1u64..10_000) {
        let rates = &entries()[pick % entries().len()].rates;
        let mut bigger = t;
        match kind {
            0 => bigger.prompt += more,
            1 => { bigger.prompt += more; bigger.cached += more }
            2 => { bigger.prompt += more; bigger.cache_write += more }
            3 => bigger.completion += more,
            _ => { bigger.completion += more; bigger.reasoning += more }
        }
        if rates.effective(t.prompt) != rates.effective(bigger.prompt)
            || (bigger.completion > 0 && rates.effective(t.prompt).output.is_none())
        {
            return Ok(());
        }
        prop_assert!(rates.cost_nano_usd(&bigger).unwrap() >= rates.cost_nano_usd(&t).unwrap());
    }
}
