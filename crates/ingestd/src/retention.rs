//! `ingestd retention --older-than 400d [--execute] [--with-rollups] [--json]`:
//! removes usage records that occurred before now − the age
//! (`storage::Store::retention` says how on each backend). Without
//! `--execute` it is a dry run that only counts.
//!
//! Rollups (SPEC §10) are kept unless `--with-rollups`, so summaries of
//! removed ranges keep working; with it, the rollups of the hours up to the
//! cutoff's are rebuilt from the rows left.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use storage::RetentionReport;

use crate::Config;

/// An age as the command line spells it: a whole number and a unit,
/// `d` (days), `h`, `m` or `s`: `400d`, `36h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Age(pub Duration);

impl std::str::FromStr for Age {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let unit_at = s.find(|c: char| !c.is_ascii_digit()).ok_or("a unit is needed: d, h, m or s (400d)")?;
        let (number, unit) = s.split_at(unit_at);
        let n: u64 = number.parse().map_err(|_| format!("{s:?}: expected a whole number and a unit (400d)"))?;
        let secs = match unit {
            "d" => n.checked_mul(86_400),
            "h" => n.checked_mul(3_600),
            "m" => n.checked_mul(60),
            "s" => Some(n),
            _ => return Err(format!("{s:?}: the unit must be d, h, m or s")),
        }
        .filter(|&secs| secs <= 100 * 366 * 86_400)
        .ok_or_else(|| format!("{s:?}: at most 100 years"))?;
        if secs == 0 {
            return Err("the age must be more than zero".to_owned());
        }
        Ok(Age(Duration::from_secs(secs)))
    }
}

/// Runs retention; returns the summary to print (progress goes to stderr).
pub async fn run(config: &Config, older_than: Age, execute: bool, with_rollups: bool, json: bool) -> Result<String> {
    let store = crate::open_migrated(config).await?;
    let cutoff = time::OffsetDateTime::now_utc() - older_than.0;
    let mut progress = |line: &str| {
        if !json {
            eprintln!("ingestd retention: {line}");
        }
    };
    let report = store.retention(cutoff, execute, with_rollups, &mut progress).await?;
    Ok(if json { serde_json::to_string(&report)? } else { summary(&report, with_rollups) })
}

fn summary(r: &RetentionReport, with_rollups: bool) -> String {
    let cutoff = r.cutoff.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let mut out = String::new();
    let verb = if r.executed { "removed" } else { "dry run: would remove" };
    let _ = write!(out, "{verb} {} rows that occurred before {cutoff}", r.rows);
    if !r.partitions.is_empty() {
        let names: Vec<&str> = r.partitions.iter().map(|p| p.name.as_str()).collect();
        let _ = write!(out, "; partitions dropped whole: {}", names.join(", "));
    }
    if r.executed && r.keys > 0 {
        let _ = write!(out, "; {} idempotency keys removed", r.keys);
    }
    match (&r.rollups, with_rollups) {
        (Some(rollups), _) => {
            let _ = write!(
                out,
                "; rollups up to the cutoff's hour rebuilt from the rows left ({} removed, {} written)",
                rollups.removed, rollups.written
            );
        }
        (None, true) => out.push_str("; rollups up to the cutoff's hour would be rebuilt from the rows left"),
        (None, false) => out.push_str("; rollups kept (summaries of the removed range keep working)"),
    }
    if !r.executed {
        out.push_str("; run again with --execute to remove them");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_a_unit_and_refuse_nonsense() {
        assert_eq!("400d".parse::<Age>(), Ok(Age(Duration::from_secs(400 * 86_400))));
        assert_eq!("36h".parse::<Age>(), Ok(Age(Duration::from_secs(36 * 3_600))));
        assert_eq!("90m".parse::<Age>(), Ok(Age(Duration::from_secs(5_400))));
        assert_eq!("10s".parse::<Age>(), Ok(Age(Duration::from_secs(10))));
        for bad in ["", "400", "d", "0d", "-1d", "1.5d", "400 d", "400days", "99999999999999999999d", "40000d"] {
            assert!(bad.parse::<Age>().is_err(), "{bad:?}");
        }
    }
}
