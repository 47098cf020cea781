//! `cargo xtask api-fuzz [--seed N] [--examples N]`: schemathesis against the
//! release binary's own `/openapi.json`, negative data included, every check
//! on, once on SQLite and once on PostgreSQL (a database of its own on the
//! server `cargo xtask test` would use). Positive data must be accepted
//! (2xx): `tests/api/hooks.py` repairs generated records the rules between
//! fields would refuse, and `tests/api/schemathesis.toml` adds, per
//! operation, only the answers SPEC requires that JSON Schema cannot express.
//! Fails on any 5xx and on any response the spec does not allow.
//!
//! schemathesis comes from a virtualenv under `target/tools/` that this
//! installs from PyPI (a pinned version: its checks change between releases)
//! with the machine's `python3`, or from `$SCHEMATHESIS` when set.
//!
//! Two passes: the organization admin operations (rate limits, prices) set policies on whatever
//! organization the generator picks, which would leave the ingestion
//! operations of the same run mostly answering 429; they run second.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::services::free_port;

/// The schemathesis release this is pinned to (its checks change between releases).
const VERSION: &str = "4.32.5";
const RATE_LIMIT_PATH: &str = "^/admin/v1/orgs/";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut seed = "1".to_owned();
    let mut examples = "100".to_owned();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => seed = it.next().context("--seed needs a number")?.clone(),
            "--examples" => examples = it.next().context("--examples needs a number")?.clone(),
            other => bail!("api-fuzz: unknown argument {other:?} (expected --seed N, --examples N)"),
        }
    }
    let target = crate::dist::target_dir(root)?;
    let st = schemathesis(&target)?;
    crate::build_ingestd()?;
    let (services, admin_url) = crate::services::Services::postgres_only()?;
    let pg = PgDatabase::create(&admin_url)?;
    let mut failed = Vec::new();
    for (backend, url) in [("SQLite", "sqlite://api-fuzz.db?mode=rwc".to_owned()), ("PostgreSQL", pg.url.clone())] {
        let work = target.join("api-fuzz").join(backend.to_lowercase());
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let server = Server::start(&target.join("release/ingestd"), &work, &url)?;
        let config = root.join("tests/api/schemathesis.toml");
        let schema = format!("{}/openapi.json", server.base);
        let auth = format!("Authorization: Bearer {}", server.admin_key);
        for (pass, filter) in [
            ("ingestion and keys", "--exclude-path-regex"),
            ("organization admin (rate limits, prices)", "--include-path-regex"),
        ] {
            println!(
                "api-fuzz: schemathesis {VERSION} on {backend}, {pass} operations, seed {seed}, {examples} examples each"
            );
            let status = Command::new(&st)
                .arg("--config-file")
                .arg(&config)
                .args(["run", &schema, "-H", &auth, "--checks", "all", "--mode", "all"])
                .args(["--max-examples", &examples, "--seed", &seed, filter, RATE_LIMIT_PATH])
                .args(["--generation-database", "none", "--no-color", "--suppress-health-check", "too_slow"])
                // Repairs generated positive bodies the rules between
                // fields would refuse (tests/api/hooks.py).
                .env("SCHEMATHESIS_HOOKS", root.join("tests/api/hooks.py"))
                .current_dir(&work)
                .status()
                .with_context(|| format!("run {}", st.display()))?;
            if !status.success() {
                failed
                    .push(format!("{pass} on {backend} (the service's log is {})", work.join("ingestd.log").display()));
            }
        }
    }
    drop(pg);
    drop(services);
    if !failed.is_empty() {
        bail!(
            "schemathesis found problems in the {} operations (reproduce: cargo xtask api-fuzz --seed {seed})",
            failed.join("; ")
        );
    }
    Ok(())
}

/// A database of its own on the PostgreSQL server, dropped when done.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(admin_url: &str) -> Result<Self> {
        let name = format!("ingestd_api_fuzz_{}", std::process::id());
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
        let db = PgDatabase { admin_url: admin_url.to_owned(), url: format!("{base}/{name}"), name };
        db.psql(&format!("DROP DATABASE IF EXISTS {}", db.name))?;
        db.psql(&format!("CREATE DATABASE {}", db.name))?;
        Ok(db)
    }

    fn psql(&self, sql: &str) -> Result<()> {
        let out = Command::new("psql")
            .args([&self.admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .output()
            .context("run psql (Debian/Ubuntu: apt-get install postgresql-client)")?;
        if !out.status.success() {
            bail!("psql -c {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = self.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// The schemathesis executable, installed into `target/tools/` when absent.
fn schemathesis(target: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return Ok(path.into());
    }
    let venv = target.join(format!("tools/schemathesis-{VERSION}"));
    let bin = venv.join("bin/schemathesis");
    if bin.is_file() {
        return Ok(bin);
    }
    println!("api-fuzz: installing schemathesis {VERSION} from PyPI into {}", venv.display());
    let created = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
    if !created.is_ok_and(|s| s.success()) {
        bail!(
            "api-fuzz needs python3 with venv to install schemathesis \
             (Debian/Ubuntu: apt-get install python3-venv; or `pip install schemathesis=={VERSION}`)"
        );
    }
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", &format!("schemathesis=={VERSION}")])
        .status()
        .context("run pip")?;
    if !pip.success() {
        let _ = std::fs::remove_dir_all(&venv);
        bail!("`pip install schemathesis=={VERSION}` failed (PyPI must be reachable)");
    }
    Ok(bin)
}

/// A release `ingestd` on a free port with the database at `database_url`
/// and an admin key, so the admin API is fuzzed too. Killed when dropped.
struct Server {
    child: Child,
    base: String,
    admin_key: String,
}

impl Server {
    fn start(ingestd: &Path, work: &Path, database_url: &str) -> Result<Self> {
        let port = free_port()?;
        let env = |cmd: &mut Command| {
            // Nothing from the caller's shell (REDIS_URL, NATS_URL, INGESTD_*…).
            cmd.current_dir(work)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("INGESTD_DATABASE__URL", database_url)
                .env("INGESTD_SERVER__BIND", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn");
        };
        let mut migrate = Command::new(ingestd);
        env(&mut migrate);
        let out = migrate.arg("migrate").output().context("run ingestd migrate")?;
        if !out.status.success() {
            bail!("ingestd migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut create = Command::new(ingestd);
        env(&mut create);
        let out = create.args(["keys", "create", "--admin", "--label", "api-fuzz"]).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(admin_key) = stdout.lines().last().filter(|_| out.status.success()).map(str::to_owned) else {
            bail!("ingestd keys create failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let log = std::fs::File::create(work.join("ingestd.log"))?;
        let mut serve = Command::new(ingestd);
        env(&mut serve);
        let child = serve.arg("serve").stdout(log.try_clone()?).stderr(log).stdin(Stdio::null()).spawn()?;
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), admin_key };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(port) {
            if Instant::now() > deadline {
                bail!("ingestd did not answer /health within 30 s; see {}", work.join("ingestd.log").display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}
