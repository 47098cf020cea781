//! The price catalog in LiteLLM's format (`model_prices_and_context_window.json`),
//! read exactly: every price is parsed from its JSON text as a decimal.
//!
//! Only the modes a usage record can describe are read (`chat`,
//! `completion`, `responses`, `embedding`), and of each entry only the
//! standard-tier token prices: input, output, cache read, cache creation
//! (write), reasoning, the `…_above_<N>k_tokens` tiers of those, and
//! `tiered_pricing`. Service tiers (`_batches`, `_priority`, `_flex`), the
//! one-hour cache-write rate, and per-image, per-audio or per-second prices
//! are not read: a usage record does not say which of them applied.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::value::RawValue;

use crate::rates::{KindRates, Range, Rates, Tier};

/// The catalog version of the snapshot, loaded on first start
/// (`litellm-<package version>`).
pub const SNAPSHOT_VERSION: &str = include_str!("../data/catalog-version");

/// The curated snapshot (`cargo xtask prices-snapshot FILE VERSION` writes
/// it and `data/catalog-version`): gzip-compressed LiteLLM JSON holding only
/// what [`parse`] reads. LiteLLM's licence (MIT) is `data/LICENSE-litellm`,
/// shipped with it.
static SNAPSHOT_GZ: &[u8] = include_bytes!("../data/catalog.json.gz");

/// The modes whose entries are read.
pub const MODES: [&str; 4] = ["chat", "completion", "responses", "embedding"];

/// One priced catalog entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The catalog key, e.g. `gpt-4o` or `gemini/gemini-2.5-pro`.
    pub key: String,
    /// LiteLLM's `litellm_provider`, e.g. `openai` or `vertex_ai-language-models`.
    pub provider: String,
    pub mode: String,
    pub rates: Rates,
}

/// What a catalog file held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    /// Entries of a priced mode that were left out, with why (no input
    /// price, a price that is not a non-negative decimal, …).
    pub skipped: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("not a LiteLLM price file (a JSON object of model entries): {0}")]
    Format(String),
    #[error("the embedded snapshot cannot be read: {0}")]
    Snapshot(String),
}

/// The embedded snapshot's JSON text.
pub fn snapshot_json() -> Result<String, CatalogError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(SNAPSHOT_GZ)
        .read_to_string(&mut text)
        .map_err(|e| CatalogError::Snapshot(e.to_string()))?;
    Ok(text)
}

/// The embedded snapshot, parsed.
pub fn snapshot() -> Result<Parsed, CatalogError> {
    parse(&snapshot_json()?)
}

type Object<'a> = BTreeMap<String, &'a RawValue>;

/// Reads a LiteLLM price file.
pub fn parse(text: &str) -> Result<Parsed, CatalogError> {
    let all: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| CatalogError::Format(e.to_string()))?;
    let mut parsed = Parsed::default();
    for (key, raw) in all {
        let Ok(fields) = serde_json::from_str::<Object<'_>>(raw.get()) else { continue };
        let mode = string(&fields, "mode");
        if key == "sample_spec" || !MODES.contains(&mode.as_deref().unwrap_or("")) {
            continue;
        }
        match entry_rates(&fields) {
            Ok(rates) if rates.is_usable() => parsed.entries.push(Entry {
                key,
                provider: string(&fields, "litellm_provider").unwrap_or_default(),
                mode: mode.unwrap_or_default(),
                rates,
            }),
            Ok(_) => parsed.skipped.push((key, "no input price".into())),
            Err(why) => parsed.skipped.push((key, why)),
        }
    }
    Ok(parsed)
}

/// The subset of a LiteLLM price file that [`parse`] reads, as JSON with
/// every number's text kept as it was (for the embedded snapshot).
pub fn curate(text: &str) -> Result<String, CatalogError> {
    let all: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| CatalogError::Format(e.to_string()))?;
    let mut kept: BTreeMap<String, Object<'_>> = BTreeMap::new();
    for (key, raw) in all {
        let Ok(fields) = serde_json::from_str::<Object<'_>>(raw.get()) else { continue };
        if key == "sample_spec" || !MODES.contains(&string(&fields, "mode").as_deref().unwrap_or("")) {
            continue;
        }
        let fields: Object<'_> = fields
            .into_iter()
            .filter(|(name, _)| {
                matches!(name.as_str(), "litellm_provider" | "mode" | "tiered_pricing") || kind_of(name).is_some()
            })
            .collect();
        kept.insert(key, fields);
    }
    serde_json::to_string(&kept).map_err(|e| CatalogError::Format(e.to_string()))
}

fn string(fields: &Object<'_>, name: &str) -> Option<String> {
    fields.get(name).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// The kind of token a LiteLLM price field prices, and the tier (prompt
/// tokens above which it applies), if any.
fn kind_of(field: &str) -> Option<(Kind, Option<u64>)> {
    let (base, tier) = match field.split_once("_above_") {
        Some((base, rest)) => {
            let k = rest.strip_suffix("k_tokens")?;
            (base, Some(k.parse::<u64>().ok()?.checked_mul(1000)?))
        }
        None => (field, None),
    };
    let kind = match base {
        "input_cost_per_token" => Kind::Input,
        "output_cost_per_token" => Kind::Output,
        "cache_read_input_token_cost" => Kind::CacheRead,
        "cache_creation_input_token_cost" => Kind::CacheWrite,
        "output_cost_per_reasoning_token" => Kind::Reasoning,
        _ => return None,
    };
    Some((kind, tier))
}

#[derive(Clone, Copy)]
enum Kind {
    Input,
    Output,
    CacheRead,
    CacheWrite,
    Reasoning,
}

fn set(rates: &mut KindRates, kind: Kind, value: rust_decimal::Decimal) {
    let slot = match kind {
        Kind::Input => &mut rates.input,
        Kind::Output => &mut rates.output,
        Kind::CacheRead => &mut rates.cache_read,
        Kind::CacheWrite => &mut rates.cache_write,
        Kind::Reasoning => &mut rates.reasoning,
    };
    *slot = Some(value);
}

fn entry_rates(fields: &Object<'_>) -> Result<Rates, String> {
    let mut rates = Rates::default();
    let mut tiers: BTreeMap<u64, KindRates> = BTreeMap::new();
    for (name, raw) in fields {
        let Some((kind, tier)) = kind_of(name) else { continue };
        let value = number(raw).map_err(|e| format!("{name}: {e}"))?;
        match tier {
            Some(above) => set(tiers.entry(above).or_default(), kind, value),
            None => set(&mut rates.base, kind, value),
        }
    }
    rates.tiers = tiers.into_iter().map(|(above_tokens, rates)| Tier { above_tokens, rates }).collect();
    if let Some(raw) = fields.get("tiered_pricing") {
        let list: Vec<Object<'_>> =
            serde_json::from_str(raw.get()).map_err(|e| format!("tiered_pricing: not a list of objects: {e}"))?;
        for item in list {
            let bounds: Vec<&RawValue> = item
                .get("range")
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .filter(|b: &Vec<&RawValue>| b.len() == 2)
                .ok_or("tiered_pricing: a tier without a [from, to] range")?;
            let bound = |raw: &RawValue| -> Result<u64, String> {
                let d = number(raw)?;
                u64::try_from(d.trunc()).ok().filter(|_| d.fract().is_zero()).ok_or(format!("range bound {d}"))
            };
            let (from_tokens, to_tokens) = (bound(bounds[0])?, bound(bounds[1])?);
            let mut tier = KindRates::default();
            for (name, raw) in &item {
                if let Some((kind, None)) = kind_of(name) {
                    set(&mut tier, kind, number(raw).map_err(|e| format!("tiered_pricing.{name}: {e}"))?);
                }
            }
            rates.ranges.push(Range { from_tokens, to_tokens, rates: tier });
        }
        rates.ranges.sort_by_key(|r| r.from_tokens);
    }
    Ok(rates)
}

/// A JSON number's text as an exact non-negative decimal.
fn number(raw: &RawValue) -> Result<rust_decimal::Decimal, String> {
    let text = raw.get().trim();
    if text.starts_with('"') {
        return Err(format!("{text} is a string, not a number"));
    }
    crate::parse_rate(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "sample_spec": {"mode": "chat", "input_cost_per_token": 0.0},
        "m1": {"litellm_provider": "p", "mode": "chat", "input_cost_per_token": 3.75e-08,
               "output_cost_per_token": 1.5e-7, "input_cost_per_token_batches": 1e-9,
               "input_cost_per_token_above_200k_tokens": 7.5e-08, "max_tokens": 8192},
        "img": {"litellm_provider": "p", "mode": "image_generation", "input_cost_per_token": 1e-6},
        "bad": {"litellm_provider": "p", "mode": "chat", "input_cost_per_token": "1e-6"},
        "free": {"litellm_provider": "p", "mode": "chat"},
        "tiered": {"litellm_provider": "p", "mode": "chat", "tiered_pricing": [
            {"range": [256000.0, 1000000.0], "input_cost_per_token": 2.5e-07, "output_cost_per_token": 2e-06},
            {"range": [0, 256000.0], "input_cost_per_token": 5e-08, "output_cost_per_token": 4e-07}]}
    }"#;

    #[test]
    fn reads_the_priced_modes_exactly() {
        let parsed = parse(SAMPLE).unwrap();
        let keys: Vec<&str> = parsed.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["m1", "tiered"]);
        let m1 = &parsed.entries[0].rates;
        assert_eq!(m1.base.input.unwrap().to_string(), "0.0000000375");
        assert_eq!(m1.base.output.unwrap().to_string(), "0.00000015");
        assert_eq!(m1.tiers.len(), 1);
        assert_eq!(m1.tiers[0].above_tokens, 200_000);
        let tiered = &parsed.entries[1].rates;
        assert_eq!((tiered.ranges[0].from_tokens, tiered.ranges[0].to_tokens), (0, 256_000));
        let skipped: Vec<&str> = parsed.skipped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(skipped, ["bad", "free"]);
    }

    #[test]
    fn curating_keeps_what_is_read_and_the_numbers_text() {
        let curated = curate(SAMPLE).unwrap();
        assert!(curated.contains(r#""input_cost_per_token":3.75e-08"#), "{curated}");
        assert!(!curated.contains("batches") && !curated.contains("max_tokens") && !curated.contains("img"));
        let (a, b) = (parse(SAMPLE).unwrap().entries, parse(&curated).unwrap().entries);
        assert_eq!(a, b);
    }
}
