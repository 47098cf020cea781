//! `ingestd rollups rebuild` (SPEC §10): the rollups summaries are
//! answered from, recomputed from the stored rows.

use anyhow::{Result, bail};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Config;

/// `ingestd rollups rebuild [--from] [--to] [--json]`.
pub async fn rebuild_rollups(
    config: &Config,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    json: bool,
) -> Result<String> {
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        bail!("--from must be before --to");
    }
    let store = crate::open_migrated(config).await?;
    let r = store.rebuild_rollups(from, to).await?;
    if json {
        return Ok(serde_json::to_string(&r)?);
    }
    let bound = |t: Option<OffsetDateTime>, none: &str| t.map_or_else(|| none.to_owned(), rfc3339);
    Ok(format!(
        "rollups of the hours in [{}, {}) rebuilt from the rows: {} removed, {} written",
        bound(r.from, "the first"),
        bound(r.to, "the last"),
        r.removed,
        r.written
    ))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
