//! `cargo xtask bench`: see docs/benchmarks.md.

use anyhow::{Result, bail};

pub fn run(args: &[String]) -> Result<()> {
    let what = args.first().map(String::as_str).unwrap_or("all");
    let services = crate::services::Services::ensure()?;
    let mut cmd = std::process::Command::new("cargo");
    match what {
        "writer" | "all" => {
            cmd.args(["bench", "-p", "ingest-storage", "--bench", "writer"]);
        }
        other => bail!("unknown benchmark {other:?}; expected writer or all"),
    }
    services.apply(&mut cmd);
    if !cmd.status()?.success() {
        bail!("benchmark failed");
    }
    Ok(())
}
