//! `ingestd prices import|list|show|rerate` (SPEC §9; docs/pricing.md):
//! catalog versions in, what is in force out, and stored rows priced again.
//! Each returns what to print on stdout; progress goes to stderr.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use storage::StoredPrice;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Config;

/// A time as the command line spells it: RFC 3339 (`2026-03-01T00:00:00Z`)
/// or a UTC date (`2026-03-01`, its midnight).
pub fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    let t = match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => t,
        Err(_) => time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
            .map_err(|_| format!("{s:?}: expected an RFC 3339 time (2026-03-01T00:00:00Z) or a date (2026-03-01)"))?
            .midnight()
            .assume_utc(),
    };
    // The years every backend stores, as records' timestamps.
    t.checked_to_offset(time::UtcOffset::UTC)
        .filter(|utc| (1..=9999).contains(&utc.year()))
        .ok_or_else(|| format!("{s:?} is outside the years 1 to 9999 (UTC)"))
}

/// nano-USD as an exact USD decimal: `-2365000` → `-0.002365`.
pub fn usd(nano: i128) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let (whole, fraction) = (nano.unsigned_abs() / 1_000_000_000, nano.unsigned_abs() % 1_000_000_000);
    let fraction = format!("{fraction:09}");
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{fraction}") }
}

/// In UTC to the second: prices start and end on whole seconds.
fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `prices import FILE [--effective-from T] [--version V]`.
pub async fn import(
    config: &Config,
    file: &Path,
    effective_from: Option<OffsetDateTime>,
    version: Option<String>,
    json: bool,
) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed = pricing::catalog::parse(&text).with_context(|| file.display().to_string())?;
    if parsed.entries.is_empty() {
        bail!("{} has no priced entry of the modes {:?}", file.display(), pricing::catalog::MODES);
    }
    let effective_from = effective_from.unwrap_or_else(OffsetDateTime::now_utc);
    let version = version.unwrap_or_else(|| format!("import-{}", rfc3339(effective_from)));
    let store = crate::open_migrated(config).await?;
    if !json {
        eprintln!(
            "ingestd prices import: {} priced entries read from {}; storing them as catalog version {version}",
            parsed.entries.len(),
            file.display()
        );
    }
    let report = store.import_catalog(&version, effective_from, &parsed.entries).await?;
    if !json {
        for (key, why) in parsed.skipped.iter().take(5) {
            eprintln!("ingestd prices import: skipped {key:?}: {why}");
        }
        if parsed.skipped.len() > 5 {
            eprintln!("ingestd prices import: … and {} more skipped", parsed.skipped.len() - 5);
        }
    }
    if json {
        return Ok(serde_json::to_string(&report)?);
    }
    Ok(format!(
        "catalog version {} in force from {}: {} prices added, {} changed, {} unchanged; {} stored prices not in \
         the file stay in force; {} entries skipped. Records already stored keep their cost: `ingestd prices rerate` \
         re-prices them.",
        report.version,
        rfc3339(report.effective_from),
        report.added,
        report.changed,
        report.unchanged,
        report.kept,
        parsed.skipped.len()
    ))
}

fn rates_columns(p: &StoredPrice) -> String {
    let rate = |r: Option<pricing::Decimal>| r.map_or_else(|| "-".to_owned(), |d| d.normalize().to_string());
    let b = &p.rates.base;
    let mut out = format!(
        "{:<14}  {:<14}  {:<14}  {:<14}  {:<14}",
        rate(b.input),
        rate(b.output),
        rate(b.cache_read),
        rate(b.cache_write),
        rate(b.reasoning)
    );
    match (p.rates.tiers.len(), p.rates.ranges.len()) {
        (0, 0) => {}
        (0, n) => {
            let _ = write!(out, "  +{n} prompt-size range(s)");
        }
        (n, _) => {
            let _ = write!(out, "  +{n} prompt-size tier(s)");
        }
    }
    out.trim_end().to_owned()
}

fn source(p: &StoredPrice) -> String {
    match (&p.organization_id, &p.version) {
        (Some(org), _) => format!("org:{org}"),
        (None, Some(version)) => version.clone(),
        (None, None) => "-".into(),
    }
}

const HEADER: &str = "INPUT           OUTPUT          CACHE_READ      CACHE_WRITE     REASONING";

/// `prices list [--at T] [--provider P] [--org ORG] [--json]`: the prices
/// in force at `at`, the catalog's or one organization's.
pub async fn list(
    config: &Config,
    at: Option<OffsetDateTime>,
    provider: Option<&str>,
    org: Option<&str>,
    json: bool,
) -> Result<String> {
    let store = crate::open_migrated(config).await?;
    let at = at.unwrap_or_else(OffsetDateTime::now_utc);
    let prices: Vec<StoredPrice> = store
        .stored_prices(org, None)
        .await?
        .into_iter()
        .filter(|p| p.organization_id.is_some() == org.is_some())
        .filter(|p| p.in_force_at(at) && provider.is_none_or(|want| p.provider == want))
        .collect();
    let mut out = String::new();
    if json {
        for p in &prices {
            let _ = writeln!(out, "{}", serde_json::to_string(p)?);
        }
        return Ok(out.trim_end().to_owned());
    }
    for v in store.catalog_versions().await? {
        let _ = writeln!(
            out,
            "# catalog version {}: in force from {}, {} prices, stored {}",
            v.version,
            rfc3339(v.effective_from),
            v.entries,
            rfc3339(v.loaded_at)
        );
    }
    let _ = writeln!(out, "# prices in force at {} (USD per token)", rfc3339(at));
    let _ = writeln!(out, "{:<48}  {:<26}  {:<20}  {:<20}  {HEADER}", "MODEL", "PROVIDER", "SOURCE", "SINCE");
    for p in &prices {
        let _ = writeln!(
            out,
            "{:<48}  {:<26}  {:<20}  {:<20}  {}",
            p.model,
            p.provider,
            source(p),
            rfc3339(p.effective_from),
            rates_columns(p)
        );
    }
    let _ = write!(out, "# {} prices", prices.len());
    Ok(out)
}

/// `prices show MODEL [--provider P [--model-version V]] [--org ORG]`: a
/// model's prices, past and future included. With `--provider`, MODEL is
/// matched as a record's would be (SPEC §9); without, it is a catalog key.
pub async fn show(
    config: &Config,
    model: &str,
    provider: Option<&str>,
    model_version: Option<&str>,
    org: Option<&str>,
    json: bool,
) -> Result<String> {
    let store = crate::open_migrated(config).await?;
    store.refresh_prices().await?;
    let now = OffsetDateTime::now_utc();
    let mut out = String::new();
    let mut key = model.to_owned();
    if let Some(provider) = provider {
        let provider = provider.trim().to_lowercase();
        let book = store.price_book();
        match book.catalog_key(&provider, model, model_version, now) {
            Some(found) => {
                let _ = writeln!(out, "# provider {provider:?}, model {model:?}: catalog key {found:?}");
                key = found.to_owned();
            }
            None => {
                let _ = write!(
                    out,
                    "# provider {provider:?}, model {model:?}: no catalog key matches; its records are unpriced \
                     unless an organization price applies"
                );
                if org.is_none() {
                    return Ok(out);
                }
                out.push('\n');
                key = String::new();
            }
        }
    }
    let mut prices: Vec<StoredPrice> =
        store.stored_prices(None, Some(&key)).await?.into_iter().filter(|p| p.organization_id.is_none()).collect();
    if let Some(org) = org {
        prices.extend(
            store
                .stored_prices(Some(org), Some(model))
                .await?
                .into_iter()
                .filter(|p| provider.is_none_or(|want| p.provider == want.trim().to_lowercase())),
        );
    }
    if prices.is_empty() {
        bail!(
            "no price for {model:?}{}; catalog keys are exact (`ingestd prices list` shows them), or pass --provider to \
             match the model as a record's",
            org.map(|o| format!(" (catalog or organization {o:?})")).unwrap_or_default()
        );
    }
    if json {
        let lines: Result<Vec<String>, _> = prices.iter().map(serde_json::to_string).collect();
        return Ok(lines?.join("\n"));
    }
    let _ = writeln!(
        out,
        "{:<8}  {:<26}  {:<20}  {:<20}  {:<20}  {:<9}  {HEADER}",
        "ID", "PROVIDER", "SOURCE", "FROM", "TO", "IN FORCE"
    );
    for p in &prices {
        let _ = writeln!(
            out,
            "{:<8}  {:<26}  {:<20}  {:<20}  {:<20}  {:<9}  {}",
            p.id,
            p.provider,
            source(p),
            rfc3339(p.effective_from),
            p.effective_to.map_or_else(|| "-".into(), rfc3339),
            if p.in_force_at(now) { "now" } else { "" },
            rates_columns(p)
        );
        for tier in &p.rates.tiers {
            let _ = writeln!(
                out,
                "          above {} prompt tokens: {}",
                tier.above_tokens,
                serde_json::to_string(&tier.rates)?
            );
        }
        for range in &p.rates.ranges {
            let _ = writeln!(
                out,
                "          prompts of [{}, {}) tokens: {}",
                range.from_tokens,
                range.to_tokens,
                serde_json::to_string(&range.rates)?
            );
        }
    }
    Ok(out.trim_end().to_owned())
}

/// `prices rerate --from T --to T [--org ORG] [--batch N] [--json]`.
pub async fn rerate(
    config: &Config,
    from: OffsetDateTime,
    to: OffsetDateTime,
    org: Option<&str>,
    batch: u64,
    json: bool,
) -> Result<String> {
    if from >= to {
        bail!("--from must be before --to");
    }
    let store = crate::open_migrated(config).await?;
    let mut progress = |line: &str| {
        if !json {
            eprintln!("ingestd prices rerate: {line}");
        }
    };
    let r = store.rerate(from, to, org, batch.max(1), &mut progress).await?;
    if json {
        return Ok(serde_json::to_string(&r)?);
    }
    let whom = org.map(|o| format!(" of organization {o}")).unwrap_or_default();
    Ok(format!(
        "rows{whom} that occurred in [{}, {}): {} examined, {} changed ({} newly priced, {} newly unpriced); cost {} \
         USD before, {} USD after, difference {} USD ({} nano-USD)",
        rfc3339(r.from),
        rfc3339(r.to),
        r.examined,
        r.changed,
        r.newly_priced,
        r.newly_unpriced,
        usd(r.cost_before_nano_usd),
        usd(r.cost_after_nano_usd),
        usd(r.cost_after_nano_usd - r.cost_before_nano_usd),
        r.cost_after_nano_usd - r.cost_before_nano_usd
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_is_exact() {
        assert_eq!(usd(750_000), "0.00075");
        assert_eq!(usd(-2_365_000), "-0.002365");
        assert_eq!(usd(0), "0");
        assert_eq!(usd(12_000_000_001), "12.000000001");
        assert_eq!(usd(i128::from(i64::MAX) * 3), "27670116110.564327421");
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(parse_time("2026-03-01"), Ok(time::macros::datetime!(2026-03-01 0:00 UTC)));
        assert_eq!(parse_time("2026-03-01T12:00:00+02:00"), Ok(time::macros::datetime!(2026-03-01 10:00 UTC)));
        assert!(parse_time("March").is_err());
        assert!(parse_time("2026-13-01").is_err());
    }
}
