//! Project automation: `cargo xtask <command>`.
//!
//! - `test [ARGS…]`: the whole test suite, with PostgreSQL, Redis and NATS found
//!   or started (see `services.rs`); extra arguments go to the test runner.
//! - `ci`: `cargo fmt --check`, `cargo clippy -D warnings`, then `test`.
//! - `bench [writer|http|all]`: benchmarks (see `docs/benchmarks.md`).
//! - `migrate`: applies migrations to `DATABASE_URL` (same as `ingestd migrate`).

// A command-line tool: printing is its job.
#![allow(clippy::print_stdout)]

mod bench;
mod services;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    std::env::set_current_dir(project_root()).context("cd to the project root")?;
    match command.as_str() {
        "test" => test(&rest),
        "ci" => {
            cargo(&["fmt", "--all", "--", "--check"]).context("cargo fmt --check (run `cargo fmt --all`)")?;
            cargo(&["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"])?;
            test(&rest)
        }
        "bench" => bench::run(&rest),
        "migrate" => cargo(&["run", "--release", "-p", "ingestd", "--", "migrate"]),
        _ => bail!("usage: cargo xtask <test|ci|bench|migrate> [args…]"),
    }
}

/// Runs the workspace's tests with every service they need.
fn test(extra: &[String]) -> Result<()> {
    let services = services::Services::ensure()?;
    let nextest = Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if nextest {
        // nextest does not run doc tests; run them first so the summary of
        // the main run is the last thing printed.
        cargo(&["test", "--workspace", "--all-features", "--doc"])?;
    }
    let mut cmd = Command::new("cargo");
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--all-features", "--profile", "ci"]);
    } else {
        eprintln!("xtask: cargo-nextest not found; using cargo test (install it with `cargo install cargo-nextest`)");
        cmd.args(["test", "--workspace", "--all-features"]);
    }
    cmd.args(extra);
    services.apply(&mut cmd);
    let status = cmd.status().context("run cargo")?;
    drop(services);
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new("cargo").args(args).status().context("run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
