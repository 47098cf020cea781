//! The cost of a usage record (SPEC §9), without IO:
//!
//! - [`catalog`]: LiteLLM's price file read exactly (every price a decimal
//!   parsed from its JSON text), and the curated snapshot ingestd ships;
//! - [`matching`]: which catalog key prices a record (provider, model name
//!   and version), with provider aliases as data (`data/providers.toml`);
//! - [`rates`]: a price (per-kind rates, prompt-size tiers) and the exact
//!   cost of a record's tokens in integer nano-USD, rounded half to even once.
//!
//! Storage keeps prices effective-dated and decides which one was in force;
//! this crate only reads, matches and computes.

pub mod catalog;
pub mod matching;
pub mod rates;

pub use catalog::{Entry, SNAPSHOT_VERSION};
pub use matching::{Index, Match, Providers};
pub use rates::{CostError, KindRates, Rates, Tokens};
pub use rust_decimal::Decimal;

/// A rate as an exact non-negative decimal: plain (`0.0000025`) or
/// scientific (`2.5e-06`) notation, at most 28 decimal places. Refuses what
/// cannot be held exactly rather than rounding it.
pub fn parse_rate(text: &str) -> Result<Decimal, String> {
    let text = text.trim();
    let inexact = |e: &dyn std::fmt::Display| format!("{text:?} is not an exact decimal: {e}");
    // The mantissa exactly (rust_decimal's own scientific parser rounds a
    // mantissa of more than 28 digits), then the exponent as a scale.
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i32>().map_err(|e| inexact(&e))?),
        None => (text, 0),
    };
    let mut value = Decimal::from_str_exact(mantissa).map_err(|e| inexact(&e))?;
    let scale = i64::from(value.scale()) - i64::from(exponent);
    if scale >= 0 {
        value.set_scale(u32::try_from(scale).map_err(|e| inexact(&e))?).map_err(|e| inexact(&e))?;
    } else {
        let factor =
            10i128.checked_pow(u32::try_from(-scale).map_err(|e| inexact(&e))?).ok_or_else(|| inexact(&"too large"))?;
        let widened = value.mantissa().checked_mul(factor).ok_or_else(|| inexact(&"too large"))?;
        value = Decimal::try_from_i128_with_scale(widened, 0).map_err(|e| inexact(&e))?;
    }
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{text:?} is negative"));
    }
    Ok(value.normalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_parse_exactly_or_not_at_all() {
        let p = |s| super::parse_rate(s).map(|d| d.to_string());
        assert_eq!(p("3.75e-08").unwrap(), "0.0000000375");
        assert_eq!(p("1.4999999999999999e-06").unwrap(), "0.0000014999999999999999");
        assert_eq!(p("0.0000025").unwrap(), "0.0000025");
        assert_eq!(p("2E-6").unwrap(), "0.000002");
        assert_eq!(p("0").unwrap(), "0");
        assert!(p("-1e-6").is_err());
        assert!(p("1e-40").is_err());
        assert!(p("abc").is_err());
        assert!(p("0.00000000000000000000000000001").is_err(), "29 places cannot be held exactly");
        assert_eq!(p("1.5e3").unwrap(), "1500");
        assert_eq!(p("2.5E+2").unwrap(), "250");
        assert!(p("1.23456789012345678901234567890e-6").is_err(), "30 significant digits are not rounded");
    }
}
