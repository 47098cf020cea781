//! `prices-snapshot FILE VERSION`: the price catalog snapshot ingestd ships
//! (`crates/ingest-pricing/data/`), curated from a LiteLLM
//! `model_prices_and_context_window.json` (docs/pricing.md, "Catalog").

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

pub fn snapshot(root: &Path, args: &[String]) -> Result<()> {
    let [file, version] = args else {
        bail!("usage: cargo xtask prices-snapshot FILE VERSION (e.g. litellm-1.110.2)");
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
    let curated = pricing::catalog::curate(&text)?;
    let parsed = pricing::catalog::parse(&curated)?;
    let data = root.join("crates/ingest-pricing/data");
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
    gz.write_all(curated.as_bytes())?;
    std::fs::write(data.join("catalog.json.gz"), gz.finish()?)?;
    std::fs::write(data.join("catalog-version"), version)?;
    println!(
        "{} priced entries ({} left out), {} bytes of JSON → crates/ingest-pricing/data/catalog.json.gz, version {version}",
        parsed.entries.len(),
        parsed.skipped.len(),
        curated.len()
    );
    println!("keep data/LICENSE-litellm in step with the source's licence");
    Ok(())
}
