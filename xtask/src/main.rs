//! Project automation: `cargo xtask <command>`.
//!
//! - `test [--compose] [ARGS…]`: the whole test suite, with PostgreSQL, Redis
//!   and NATS found or started (see `services.rs`); with `--compose`, started
//!   in Docker from `deploy/compose.test.yml` instead (needs a running Docker
//!   engine). Extra arguments go to the test runner.
//! - `ci`: `cargo fmt --check`, `cargo clippy -D warnings` (the workspace and
//!   `tools/`), `test`, then
//!   `fuzz all 60`, then `chaos --quick`, then `api-fuzz`.
//! - `bench [writer|http|all]`: benchmarks (see `docs/benchmarks.md`).
//! - `chaos [--quick] [--only 1,3]`: fault scenarios against the release
//!   binary (`tools/chaos`, its own workspace; results in `docs/reliability.md`).
//! - `api-fuzz [--seed N] [--examples N]`: schemathesis (from PyPI) against
//!   the release binary's `/openapi.json` on SQLite and on PostgreSQL,
//!   negative data included, positive data required to pass (`api_fuzz.rs`).
//! - `fuzz [TARGET|all] [SECONDS]`: the cargo-fuzz targets of `fuzz/` on the
//!   stable toolchain (cargo-fuzz from crates.io; see `fuzz.rs`).
//! - `prices-snapshot FILE VERSION`: the price catalog snapshot shipped in
//!   `crates/ingest-pricing/data/`, curated from a LiteLLM price file.
//! - `migrate`: applies migrations to `DATABASE_URL` (same as `ingestd migrate`).
//! - `dist`: a stripped release build packed as
//!   `target/dist/ingestd-<version>-<target>.tar.gz` + `.sha256` (see `dist.rs`).
//! - `release <version>`: bumps the version, moves `## Unreleased` in the
//!   CHANGELOG under it, commits and tags. Publishes nothing.

// A command-line tool: printing is its job.
#![allow(clippy::print_stdout)]

mod api_fuzz;
mod bench;
#[cfg(test)]
mod deploy_checks;
mod deps;
mod dist;
mod fuzz;
mod prices;
mod services;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail, ensure};

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
            let root = project_root();
            stage("fmt", || {
                cargo(&["fmt", "--all", "--", "--check"]).context("cargo fmt --check (run `cargo fmt --all`)")?;
                cargo(&["fmt", "--all", "--manifest-path", "tools/Cargo.toml", "--", "--check"])
                    .context("cargo fmt --check in tools/ (run `cargo fmt --all` there)")
            })?;
            stage("clippy", || {
                cargo(&["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"])?;
                let tools = root.join("tools/Cargo.toml");
                let target = dist::target_dir(&root)?;
                let mut cmd = Command::new("cargo");
                cmd.args(["clippy", "--workspace", "--all-targets", "--locked", "--manifest-path"])
                    .arg(&tools)
                    .arg("--target-dir")
                    .arg(&target)
                    .args(["--", "-D", "warnings"]);
                ensure!(cmd.status().context("run cargo")?.success(), "cargo clippy in tools/ failed");
                Ok(())
            })?;
            stage("test", || test(&rest))?;
            stage("fuzz", || fuzz::run(&root, &["all".to_owned(), "60".to_owned()]))?;
            stage("chaos --quick", || chaos(&["--quick".to_owned()]))?;
            stage("api-fuzz", || api_fuzz::run(&root, &[]))
        }
        "bench" => bench::run(&rest),
        "chaos" => chaos(&rest),
        "api-fuzz" => api_fuzz::run(&project_root(), &rest),
        "fuzz" => fuzz::run(&project_root(), &rest),
        "migrate" => cargo(&["run", "--release", "-p", "ingestd", "--", "migrate"]),
        "dist" => dist::dist(&project_root()),
        "prices-snapshot" => prices::snapshot(&project_root(), &rest),
        "release" => match rest.as_slice() {
            [version] => dist::release(&project_root(), version.trim_start_matches('v'), &dist::today()),
            _ => bail!("usage: cargo xtask release <version>"),
        },
        _ => {
            bail!("usage: cargo xtask <test|ci|bench|chaos|api-fuzz|fuzz|migrate|dist|release|prices-snapshot> [args…]")
        }
    }
}

/// Runs one stage of `ci` and says how long it took (the stages' times are
/// what keeps CI inside its limit).
fn stage(name: &str, run: impl FnOnce() -> Result<()>) -> Result<()> {
    let started = std::time::Instant::now();
    let result = run();
    let verdict = if result.is_ok() { "ok" } else { "FAILED" };
    println!("ci: {name} {verdict} in {:.0} s", started.elapsed().as_secs_f64());
    result
}

/// Runs the workspace's tests with every service they need.
fn test(extra: &[String]) -> Result<()> {
    let (compose, extra) = match extra.split_first() {
        Some((first, rest)) if first == "--compose" => (Some(Compose::up()?), rest),
        _ => (None, extra),
    };
    let services = match &compose {
        Some(_) => services::Services::given(Compose::ENV.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()),
        None => services::Services::ensure().map_err(|e| {
            if docker_works() {
                e.context("a Docker engine runs here: `cargo xtask test --compose` starts the services in containers")
            } else {
                e
            }
        })?,
    };
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
    drop(compose);
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

/// Builds the release binaries and runs the fault scenarios; fails when any
/// acknowledged record was lost, duplicated, or a scenario's check failed.
fn chaos(args: &[String]) -> Result<()> {
    build_ingestd()?;
    build_tools(&["ingest-chaos"])?;
    // The ledger must be able to fail before its verdicts count.
    test_tools(&services::Services::ensure()?)?;
    let bin = dist::target_dir(&project_root())?.join("release");
    let status = Command::new(bin.join("ingest-chaos"))
        .arg("--ingestd")
        .arg(bin.join("ingestd"))
        .args(args)
        .status()
        .context("run ingest-chaos")?;
    if !status.success() {
        bail!("chaos scenarios failed");
    }
    Ok(())
}

/// `docker info` succeeds: a Docker engine answers (the client alone is not enough).
fn docker_works() -> bool {
    Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success())
}

/// The services of `deploy/compose.test.yml`, removed again when dropped.
struct Compose;

impl Compose {
    const FILE: &str = "deploy/compose.test.yml";

    fn up() -> Result<Self> {
        if !docker_works() {
            bail!("--compose needs a running Docker engine, and `docker info` failed");
        }
        let status = Command::new("docker")
            .args(["compose", "-f", Self::FILE, "up", "--detach", "--wait"])
            .status()
            .context("run docker compose")?;
        let compose = Compose;
        if !status.success() {
            bail!("`docker compose -f {} up --wait` failed", Self::FILE);
        }
        Ok(compose)
    }

    /// The URLs of the host ports published by `compose.test.yml`.
    const ENV: &[(&str, &str)] = &[
        ("INGESTD_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:55432/postgres"),
        ("INGESTD_TEST_REDIS_URL", "redis://127.0.0.1:56379"),
        ("INGESTD_TEST_NATS_URL", "nats://127.0.0.1:54222"),
    ];
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["compose", "-f", Self::FILE, "down", "--volumes"]).status();
    }
}

/// The release `ingestd` that `chaos`, `api-fuzz` and `bench http` test:
/// the main workspace's build of it alone, as `cargo xtask dist` builds it
/// (no tooling crate is built with it, so no feature of theirs is unified
/// into it).
pub(crate) fn build_ingestd() -> Result<()> {
    cargo(&["build", "--release", "--locked", "-p", "ingestd"])
}

/// A release build of `packages` of the tooling workspace `tools/`, into
/// the main target directory (dependencies built with the same features are
/// shared); its binaries land in `<target>/release/`.
pub(crate) fn build_tools(packages: &[&str]) -> Result<()> {
    let root = project_root();
    let (manifest, target) = (root.join("tools/Cargo.toml"), dist::target_dir(&root)?);
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--release", "--locked", "--manifest-path"]).arg(&manifest).arg("--target-dir").arg(&target);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !cmd.status().context("run cargo")?.success() {
        bail!("building {packages:?} of tools/ failed");
    }
    Ok(())
}

/// The chaos ledger's planted faults (`tools/chaos/tests/ledger.rs`), in
/// release like the tools themselves, with the test services.
fn test_tools(services: &services::Services) -> Result<()> {
    let root = project_root();
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--release", "--locked", "--manifest-path"])
        .arg(root.join("tools/Cargo.toml"))
        .arg("--target-dir")
        .arg(dist::target_dir(&root)?)
        .args(["-p", "ingest-chaos", "--test", "ledger"]);
    services.apply(&mut cmd);
    if !cmd.status().context("run cargo")?.success() {
        bail!("the tests of tools/ failed");
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

pub(crate) fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}
