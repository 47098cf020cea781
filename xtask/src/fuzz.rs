//! `cargo xtask fuzz [TARGET|all] [SECONDS]`: the cargo-fuzz targets of
//! `fuzz/` (record, batch and stream-message decoding and validation, and a
//! structure-aware record builder), each for SECONDS (default 60). Part of
//! `cargo xtask ci`.
//!
//! Runs on the machine's one stable toolchain: cargo-fuzz is installed from
//! crates.io into `target/tools/` when absent (or taken from `$CARGO_FUZZ`),
//! and the unstable flags it needs are allowed with `RUSTC_BOOTSTRAP=1` —
//! for this build only, the product never sees it. No sanitizer (`-s none`):
//! the code under test is safe Rust, so AddressSanitizer would find nothing
//! the panics and assertions do not, at several times the cost per input.
//!
//! Each target starts from its seeds in `fuzz/corpus/TARGET/` (kept in the
//! repository; add an input there when it found something) and writes what
//! it discovers to `target/fuzz-corpus/TARGET/`, so runs build on each other
//! locally and the repository stays clean.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

const TARGETS: &[&str] = &["decode_record", "decode_batch", "stream_message", "structured_record", "otlp_traces"];
/// The cargo-fuzz release this is pinned to.
const CARGO_FUZZ: &str = "0.13.2";

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
    let target_dir = crate::dist::target_dir(root)?;
    let cargo_fuzz = cargo_fuzz(&target_dir)?;
    let fuzz = |args: &[&str]| {
        let mut cmd = Command::new(&cargo_fuzz);
        cmd.arg("fuzz").args(args).current_dir(root.join("fuzz")).env("RUSTC_BOOTSTRAP", "1");
        cmd
    };
    // One build for every target, then each run finds it built.
    let built = fuzz(&["build", "-s", "none", "--release"]).status().context("run cargo fuzz build")?;
    if !built.success() {
        bail!("cargo fuzz build failed");
    }
    for t in targets {
        let (seeds, found) = (root.join("fuzz/corpus").join(t), target_dir.join("fuzz-corpus").join(t));
        std::fs::create_dir_all(&seeds)?;
        std::fs::create_dir_all(&found)?;
        println!("fuzz: {t} for {seconds} s (seeds {}, findings {})", seeds.display(), found.display());
        let status = fuzz(&["run", "-s", "none", "--release", t])
            .arg(&found)
            .arg(&seeds)
            .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1"])
            .status()
            .context("run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {t} failed; the crashing input is under fuzz/artifacts/{t}/");
        }
    }
    Ok(())
}

/// The `cargo-fuzz` executable, installed into `target/tools/` when absent.
fn cargo_fuzz(target: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CARGO_FUZZ") {
        return Ok(path.into());
    }
    let root = target.join(format!("tools/cargo-fuzz-{CARGO_FUZZ}"));
    let bin = root.join("bin/cargo-fuzz");
    if bin.is_file() {
        return Ok(bin);
    }
    println!("fuzz: installing cargo-fuzz {CARGO_FUZZ} from crates.io into {}", root.display());
    let status = Command::new("cargo")
        .args(["install", "--locked", "--quiet", "cargo-fuzz", "--version", CARGO_FUZZ, "--root"])
        .arg(&root)
        .status()
        .context("run cargo install")?;
    if !status.success() {
        bail!("`cargo install cargo-fuzz --version {CARGO_FUZZ}` failed (crates.io must be reachable)");
    }
    Ok(bin)
}
