//! `cargo xtask fuzz [TARGET|all] [SECONDS]`: the cargo-fuzz targets of
//! `fuzz/` (record, batch and stream-message decoding and validation), each
//! for SECONDS (default 60). Needs a nightly toolchain and cargo-fuzz; the
//! stable property tests over the same code run in `cargo xtask test`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

const TARGETS: &[&str] = &["decode_record", "decode_batch", "stream_message"];

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let target = args.first().map_or("all", String::as_str);
    let seconds: u64 = match args.get(1) {
        Some(s) => s.parse().with_context(|| format!("{s:?} is not a number of seconds"))?,
        None => 60,
    };
    let targets: Vec<&str> = match target {
        "all" => TARGETS.to_vec(),
        t if TARGETS.contains(&t) => vec![t],
        t => bail!("unknown fuzz target {t:?}; one of {TARGETS:?} or all"),
    };
    let works = |args: &[&str]| Command::new("cargo").args(args).output().is_ok_and(|o| o.status.success());
    if !works(&["+nightly", "--version"]) {
        bail!("fuzzing needs a nightly toolchain: `rustup toolchain install nightly`");
    }
    if !works(&["+nightly", "fuzz", "--version"]) {
        bail!("fuzzing needs cargo-fuzz: `cargo install cargo-fuzz`");
    }
    for t in targets {
        println!("fuzz: {t} for {seconds} s");
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", t, "--", &format!("-max_total_time={seconds}")])
            .current_dir(root.join("fuzz"))
            .status()
            .context("run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {t} failed; the crashing input is under fuzz/artifacts/{t}/");
        }
    }
    Ok(())
}
