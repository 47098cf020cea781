//! `cargo xtask bench [floor|writer|price|read|otlp|http|redis|nats|all]`; see docs/benchmarks.md.
//!
//! `http` builds the release binaries, then for each scenario starts a fresh
//! `ingestd` (new SQLite file, `synchronous=FULL`) and, in the same run, the
//! bare hyper + serde_json server as the ceiling, drives both with the same
//! load generator and prints records/s, latency and the server's peak RSS.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn run(args: &[String]) -> Result<()> {
    let what = args.first().map(String::as_str).unwrap_or("all");
    match what {
        "floor" => storage_bench("floor"),
        "writer" => storage_bench("writer"),
        "price" => price(),
        "read" => read(),
        // `POST /v1/traces` against the JSON batch endpoint, same run.
        "otlp" => cargo_bench("ingestd", "otlp"),
        "http" => http(),
        "redis" => redis(),
        "nats" => nats(&args[1..]),
        "all" => {
            http()?;
            redis()?;
            nats(&[])?;
            storage_bench("floor")?;
            read()?;
            cargo_bench("ingestd", "otlp")?;
            price()?;
            storage_bench("writer")
        }
        other => {
            bail!("unknown benchmark {other:?}; expected floor, writer, price, read, otlp, http, redis, nats or all")
        }
    }
}

/// A bench of ingest-storage: `writer` (criterion, the writer's shapes) or
/// `floor` (the writer against each database's own bulk path).
fn storage_bench(name: &str) -> Result<()> {
    cargo_bench("ingest-storage", name)
}

/// `cargo bench -p PACKAGE --bench NAME` with the services the tests use.
fn cargo_bench(package: &str, name: &str) -> Result<()> {
    let services = crate::services::Services::ensure()?;
    let mut cmd = Command::new("cargo");
    cmd.args(["bench", "-p", package, "--bench", name]);
    services.apply(&mut cmd);
    if !cmd.status()?.success() {
        bail!("{name} benchmark failed");
    }
    Ok(())
}

/// The read path (`ingestd`'s `read` bench): the writer with and without
/// rollups, summary latency over 10M rows, export rows/s.
fn read() -> Result<()> {
    cargo_bench("ingestd", "read")
}

/// What pricing one record costs (criterion, `ingest-pricing`'s `price`).
fn price() -> Result<()> {
    if !Command::new("cargo").args(["bench", "-p", "ingest-pricing", "--bench", "price"]).status()?.success() {
        bail!("price benchmark failed");
    }
    Ok(())
}

/// The Redis Streams source: drain of a 200k-entry backlog (by one source,
/// then by four consumers of the group in one process) against the
/// writer alone on the same records, then p50/p99 add-to-commit at a steady
/// 20k entries/s (`ingest-bench redis-drain`).
fn redis() -> Result<()> {
    let services = crate::services::Services::ensure()?;
    crate::build_tools(&["ingest-bench"])?;
    let target = crate::dist::target_dir(&crate::project_root())?;
    let mut cmd = Command::new(Path::new(&target).join("release").join("redis-drain"));
    services.apply(&mut cmd);
    cmd.env("RUST_LOG", "warn");
    let out = cmd.stderr(Stdio::inherit()).output().context("run redis-drain")?;
    if !out.status.success() {
        bail!("redis-drain failed");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("redis-drain output")?;
    let get = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!("\nRedis Streams source, SQLite synchronous=FULL, {} entries of one record each", v["entries"]);
    println!(
        "{:<44} {:>12}",
        "writer alone, 1000-record submissions, 1 in flight",
        format!("{:.0} rows/s", get("writer_alone_1_in_flight"))
    );
    println!(
        "{:<44} {:>12}",
        "writer alone, 1000-record submissions, 4 in flight",
        format!("{:.0} rows/s", get("writer_alone_4_in_flight"))
    );
    println!(
        "{:<44} {:>12}",
        "drain of the backlog (XREADGROUP → commit → XACK)",
        format!("{:.0} entries/s", get("drain_per_sec"))
    );
    println!(
        "{:<44} {:>12.3} / {:.3}",
        "drain ÷ writer alone (1 / 4 in flight)",
        get("drain_vs_writer_1"),
        get("drain_vs_writer_4")
    );
    println!(
        "{:<44} {:>12}",
        format!("the same drained by {} consumers of the group", v["consumers"]),
        format!("{:.0} entries/s", get("drain_n_consumers_per_sec"))
    );
    println!(
        "{:<44} {:>12.3} / {:.3}",
        format!("{} consumers ÷ writer alone (1 / 4 in flight)", v["consumers"]),
        get("drain_n_consumers_vs_writer_1"),
        get("drain_n_consumers_vs_writer_4")
    );
    println!(
        "{:<44} {:>12}",
        "XADD of the backlog (pipelines of 5000)",
        format!("{:.0} entries/s", get("xadd_per_sec"))
    );
    println!(
        "steady {:.0} entries/s: add-to-commit p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} records)",
        get("steady_rate"),
        get("p50_ms"),
        get("p99_ms"),
        get("max_ms"),
        v["steady_records"]
    );
    Ok(())
}

/// `nats [messages] [steady-secs]`: the NATS source draining a backlog,
/// against the writer alone in the same run, then publish-to-commit latency
/// at a steady rate (`ingest-bench`'s `nats-backlog`).
fn nats(args: &[String]) -> Result<()> {
    crate::build_tools(&["ingest-bench"])?;
    let services = crate::services::Services::ensure()?;
    let target = crate::dist::target_dir(&crate::project_root())?;
    let mut cmd = Command::new(Path::new(&target).join("release").join("nats-backlog"));
    cmd.args(args).env("RUST_LOG", "warn");
    services.apply(&mut cmd);
    if !cmd.status().context("run nats-backlog")?.success() {
        bail!("NATS benchmark failed");
    }
    Ok(())
}

struct Scenario {
    name: &'static str,
    connections: usize,
    records: usize,
    /// Run ingestd with the in-memory rate limiter (a limit no run reaches,
    /// so every check is paid and none refuses).
    limiter: bool,
    /// Open loop at this many requests/s (latency without coordinated
    /// omission); `None`: closed loop, each connection back to back.
    rate: Option<u32>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "single records, 64 connections", connections: 64, records: 1, limiter: true, rate: None },
    Scenario { name: "single records, 64 conns, no limiter", connections: 64, records: 1, limiter: false, rate: None },
    Scenario { name: "100-record batches, 16 connections", connections: 16, records: 100, limiter: true, rate: None },
    Scenario { name: "1000-record batches, 4 connections", connections: 4, records: 1000, limiter: true, rate: None },
    Scenario {
        name: "single records, open loop 10k/s, 64 conns",
        connections: 64,
        records: 1,
        limiter: true,
        rate: Some(10_000),
    },
];

struct Measured {
    records_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    peak_rss_mib: f64,
}

fn http() -> Result<()> {
    crate::build_ingestd()?;
    crate::build_tools(&["ingest-bench"])?;
    let target = crate::dist::target_dir(&crate::project_root())?;
    let bin = Path::new(&target).join("release");
    let secs: u64 = std::env::var("XTASK_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    // XTASK_BENCH_HTTP_ONLY=open runs the scenarios whose name contains "open".
    let only = std::env::var("XTASK_BENCH_HTTP_ONLY").unwrap_or_default();
    let mut rows = Vec::new();
    for s in SCENARIOS.iter().filter(|s| s.name.contains(only.as_str())) {
        let dir = std::env::temp_dir().join(format!("ingestd-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let port = crate::services::free_port()?;
        let mut ingestd = Command::new(bin.join("ingestd"));
        ingestd
            .current_dir(&dir)
            .env("DATABASE_URL", format!("sqlite://{}/bench.db?mode=rwc", dir.display()))
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("INGESTD_DATABASE__SQLITE_SYNCHRONOUS", "full")
            .env("INGESTD_RATE_LIMIT__ENABLED", s.limiter.to_string())
            .env("INGESTD_AUTH__MODE", "none")
            .env("INGESTD_RATE_LIMIT__DEFAULT__PER_MINUTE", "60000000")
            .env("RUST_LOG", "warn");
        let ours = measure(&bin, ingestd, port, s, secs).context("ingestd")?;
        let port = crate::services::free_port()?;
        let mut bare = Command::new(bin.join("bare-server"));
        bare.arg(format!("127.0.0.1:{port}"));
        let ceiling = measure(&bin, bare, port, s, secs).context("bare server")?;
        let _ = std::fs::remove_dir_all(&dir);
        rows.push((s, ours, ceiling));
    }
    println!(
        "\nHTTP ingestion, {secs} s per run, SQLite synchronous=FULL; ceiling = bare hyper + serde_json, same load generator"
    );
    println!(
        "{:<38} {:>12} {:>12} {:>7} {:>16} {:>16} {:>9} {:>7}",
        "scenario", "ingestd r/s", "ceiling r/s", "ratio", "ingestd p50/p99", "ceiling p50/p99", "RSS MiB", "errors"
    );
    for (s, ours, ceiling) in &rows {
        println!(
            "{:<38} {:>12.0} {:>12.0} {:>7.3} {:>7.2}/{:<8.2} {:>7.2}/{:<8.2} {:>9.1} {:>7}",
            s.name,
            ours.records_per_sec,
            ceiling.records_per_sec,
            ours.records_per_sec / ceiling.records_per_sec,
            ours.p50_ms,
            ours.p99_ms,
            ceiling.p50_ms,
            ceiling.p99_ms,
            ours.peak_rss_mib,
            ours.errors
        );
    }
    Ok(())
}

fn measure(bin: &Path, mut server: Command, port: u16, s: &Scenario, secs: u64) -> Result<Measured> {
    let mut child = server.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().context("start server")?;
    let result = (|| {
        wait_for(&mut child, port)?;
        let mut loadgen = Command::new(bin.join("loadgen"));
        loadgen.args([format!("127.0.0.1:{port}"), s.connections.to_string(), s.records.to_string(), secs.to_string()]);
        if let Some(rate) = s.rate {
            loadgen.arg(rate.to_string());
        }
        let out = loadgen.output().context("run loadgen")?;
        if !out.status.success() {
            bail!("loadgen failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("loadgen output")?;
        let get = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(Measured {
            records_per_sec: get("records_per_sec"),
            p50_ms: get("p50_ms"),
            p99_ms: get("p99_ms"),
            errors: get("errors") as u64,
            peak_rss_mib: peak_rss_kib(child.id()).unwrap_or(0) as f64 / 1024.0,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn wait_for(child: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("server exited early: {status}");
        }
        if Instant::now() > deadline {
            bail!("server did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// VmHWM: the process's peak resident set.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
