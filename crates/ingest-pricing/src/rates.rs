//! A price (USD per token for each kind of token, with prompt-size tiers)
//! and the exact cost of a record's tokens under it (SPEC §9, "Arithmetic").
//!
//! Rates are exact decimals; the cost is computed in integers at the
//! rates' own decimal scale and rounded once, half to even, to nano-USD.
//! Nothing passes through a float, and an overflow is an error, never a
//! wrapped or saturated value.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Nano-USD per USD.
const NANO: u32 = 9;

/// The token counts of one record (SPEC §1): `cached` and `cache_write` are
/// part of `prompt`, `reasoning` is part of `completion`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

/// USD per token for each kind. `None` falls back as SPEC §9 says: cache
/// read and cache write to `input`, reasoning to `output`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindRates {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub input: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub output: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub cache_read: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub cache_write: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub reasoning: Option<Decimal>,
}

impl KindRates {
    /// `self` with the kinds `over` sets replaced by its rates.
    fn overlaid(&self, over: &KindRates) -> KindRates {
        KindRates {
            input: over.input.or(self.input),
            output: over.output.or(self.output),
            cache_read: over.cache_read.or(self.cache_read),
            cache_write: over.cache_write.or(self.cache_write),
            reasoning: over.reasoning.or(self.reasoning),
        }
    }
}

/// Rates for records whose prompt is larger than `above_tokens`
/// (LiteLLM's `…_above_<N>k_tokens`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub above_tokens: u64,
    #[serde(flatten)]
    pub rates: KindRates,
}

/// Rates for records whose prompt size is in `[from_tokens, to_tokens)`
/// (LiteLLM's `tiered_pricing` list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub from_tokens: u64,
    pub to_tokens: u64,
    #[serde(flatten)]
    pub rates: KindRates,
}

/// One price: base rates, and the prompt-size tiers or ranges that replace
/// them for larger prompts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    #[serde(flatten)]
    pub base: KindRates,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
}

/// Why a cost could not be computed; the record is then stored unpriced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    #[error("the price has no input rate")]
    NoInputRate,
    #[error("the price has no output rate and the record has completion tokens")]
    NoOutputRate,
    #[error("the cost does not fit in 64-bit nano-USD")]
    Overflow,
    #[error("the token counts are inconsistent (cached + cache-write > prompt, or reasoning > completion)")]
    Inconsistent,
}

impl Rates {
    /// Whether the price can price anything (it has an input rate somewhere).
    pub fn is_usable(&self) -> bool {
        self.base.input.is_some() || self.ranges.iter().any(|r| r.rates.input.is_some())
    }

    /// The rates that apply to a prompt of `prompt` tokens: the range that
    /// contains it (the last range when it is above them all), else the
    /// largest tier it is above, else the base; kinds the range or tier
    /// does not set keep their base rate.
    pub fn effective(&self, prompt: u64) -> KindRates {
        if let Some(range) = self
            .ranges
            .iter()
            .find(|r| r.from_tokens <= prompt && prompt < r.to_tokens)
            .or_else(|| self.ranges.iter().filter(|r| prompt >= r.to_tokens).max_by_key(|r| r.to_tokens))
        {
            return self.base.overlaid(&range.rates);
        }
        match self.tiers.iter().filter(|t| prompt > t.above_tokens).max_by_key(|t| t.above_tokens) {
            Some(tier) => self.base.overlaid(&tier.rates),
            None => self.base.clone(),
        }
    }

    /// The exact cost of `tokens` in nano-USD, rounded half to even once.
    pub fn cost_nano_usd(&self, tokens: &Tokens) -> Result<i64, CostError> {
        let r = self.effective(tokens.prompt);
        let input = r.input.ok_or(CostError::NoInputRate)?;
        let uncached = tokens
            .prompt
            .checked_sub(tokens.cached)
            .and_then(|p| p.checked_sub(tokens.cache_write))
            .ok_or(CostError::Inconsistent)?;
        let plain_completion = tokens.completion.checked_sub(tokens.reasoning).ok_or(CostError::Inconsistent)?;
        let output = match r.output {
            Some(output) => output,
            None if tokens.completion == 0 => Decimal::ZERO,
            None => return Err(CostError::NoOutputRate),
        };
        let terms = [
            (uncached, input),
            (tokens.cached, r.cache_read.unwrap_or(input)),
            (tokens.cache_write, r.cache_write.unwrap_or(input)),
            (plain_completion, output),
            (tokens.reasoning, r.reasoning.unwrap_or(output)),
        ];
        exact_sum_nano(&terms)
    }
}

/// Σ count × rate, computed exactly in integers at the largest scale of
/// the rates, then rounded half to even to nano-USD.
fn exact_sum_nano(terms: &[(u64, Decimal)]) -> Result<i64, CostError> {
    let terms: Vec<(u64, Decimal)> =
        terms.iter().filter(|(n, _)| *n > 0).map(|(n, rate)| (*n, rate.normalize())).collect();
    let scale = terms.iter().map(|(_, rate)| rate.scale()).max().unwrap_or(0);
    let mut sum: i128 = 0;
    for (count, rate) in &terms {
        let widen = pow10(scale - rate.scale()).ok_or(CostError::Overflow)?;
        let term = rate
            .mantissa()
            .checked_mul(widen)
            .and_then(|m| m.checked_mul(i128::from(*count)))
            .ok_or(CostError::Overflow)?;
        sum = sum.checked_add(term).ok_or(CostError::Overflow)?;
    }
    let nano = if scale <= NANO {
        sum.checked_mul(pow10(NANO - scale).ok_or(CostError::Overflow)?).ok_or(CostError::Overflow)?
    } else {
        div_half_even(sum, pow10(scale - NANO).ok_or(CostError::Overflow)?)
    };
    i64::try_from(nano).map_err(|_| CostError::Overflow)
}

fn pow10(exp: u32) -> Option<i128> {
    10i128.checked_pow(exp)
}

/// `n / d` rounded half to even (`d > 0`).
fn div_half_even(n: i128, d: i128) -> i128 {
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

/// Decimals as JSON strings (SPEC §9: rates are never JSON numbers).
mod opt_decimal {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&d.normalize().to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => crate::parse_rate(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        crate::parse_rate(s).unwrap()
    }

    #[test]
    fn half_to_even() {
        assert_eq!(div_half_even(25, 10), 2);
        assert_eq!(div_half_even(35, 10), 4);
        assert_eq!(div_half_even(26, 10), 3);
        assert_eq!(div_half_even(24, 10), 2);
        assert_eq!(div_half_even(5, 10), 0);
        assert_eq!(div_half_even(15, 10), 2);
    }

    #[test]
    fn rounding_happens_once_per_record() {
        // 0.6 nano-USD per token: 1 token rounds to 1, but 3 input + 3
        // output tokens are 3.6 nano-USD, 4 — not 1 + 1 + … per kind.
        let rates = Rates {
            base: KindRates { input: Some(d("6e-10")), output: Some(d("6e-10")), ..KindRates::default() },
            ..Rates::default()
        };
        let t = |prompt, completion| Tokens { prompt, completion, ..Tokens::default() };
        assert_eq!(rates.cost_nano_usd(&t(1, 0)), Ok(1));
        assert_eq!(rates.cost_nano_usd(&t(3, 3)), Ok(4));
        // 2.5 → 2 (even), 7.5 → 8 (even).
        let half = Rates { base: KindRates { input: Some(d("5e-10")), ..rates.base.clone() }, ..Rates::default() };
        assert_eq!(half.cost_nano_usd(&t(5, 0)), Ok(2));
        assert_eq!(half.cost_nano_usd(&t(15, 0)), Ok(8));
    }

    #[test]
    fn overflow_is_reported() {
        let rates = Rates {
            base: KindRates { input: Some(d("1000")), output: Some(d("1e-28")), ..KindRates::default() },
            ..Rates::default()
        };
        let t = Tokens { prompt: u64::MAX / 2, completion: 1, ..Tokens::default() };
        assert_eq!(rates.cost_nano_usd(&t), Err(CostError::Overflow));
        let small = Tokens { prompt: 1, completion: 0, ..Tokens::default() };
        assert_eq!(rates.cost_nano_usd(&small), Ok(1_000_000_000_000));
    }

    #[test]
    fn missing_rates() {
        let no_output =
            Rates { base: KindRates { input: Some(d("1e-9")), ..KindRates::default() }, ..Rates::default() };
        assert_eq!(no_output.cost_nano_usd(&Tokens { prompt: 7, ..Tokens::default() }), Ok(7));
        assert_eq!(
            no_output.cost_nano_usd(&Tokens { prompt: 7, completion: 1, ..Tokens::default() }),
            Err(CostError::NoOutputRate)
        );
        assert_eq!(Rates::default().cost_nano_usd(&Tokens::default()), Err(CostError::NoInputRate));
    }

    #[test]
    fn rates_round_trip_as_decimal_strings() {
        let rates = Rates {
            base: KindRates { input: Some(d("3.75e-08")), output: Some(d("0.0000015")), ..KindRates::default() },
            tiers: vec![Tier {
                above_tokens: 200_000,
                rates: KindRates { input: Some(d("7.5e-08")), ..KindRates::default() },
            }],
            ranges: Vec::new(),
        };
        let json = serde_json::to_string(&rates).unwrap();
        assert_eq!(
            json,
            r#"{"input":"0.0000000375","output":"0.0000015","tiers":[{"above_tokens":200000,"input":"0.000000075"}]}"#
        );
        assert_eq!(serde_json::from_str::<Rates>(&json).unwrap(), rates);
        assert!(serde_json::from_str::<Rates>(r#"{"input":0.1}"#).is_err(), "a JSON number is refused");
    }
}
