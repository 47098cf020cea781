//! `cargo xtask api-fuzz [--seed N] [--examples N]`: schemathesis against the
//! release binary's own `/openapi.json`, negative data included, every check
//! on (`tests/api/schemathesis.toml` adds, per operation, the answers SPEC
//! requires that JSON Schema cannot express).
//! Fails on any 5xx and on any response the spec does not allow.
//!
//! schemathesis comes from a virtualenv under `target/tools/` that this
//! installs from PyPI (a pinned version: its checks change between releases)
//! with the machine's `python3`, or from `$SCHEMATHESIS` when set.
//!
//! Two passes: the rate-limit admin operations set policies on whatever
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
    crate::cargo(&crate::RELEASE_BUILD)?;
    let work = target.join("api-fuzz");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let server = Server::start(&target.join("release/ingestd"), &work)?;
    let config = root.join("tests/api/schemathesis.toml");
    let schema = format!("{}/openapi.json", server.base);
    let auth = format!("Authorization: Bearer {}", server.admin_key);
    let mut failed = Vec::new();
    for (pass, filter) in [("ingestion and keys", "--exclude-path-regex"), ("rate-limit admin", "--include-path-regex")]
    {
        println!("api-fuzz: schemathesis {VERSION}, {pass} operations, seed {seed}, {examples} examples each");
        let status = Command::new(&st)
            .arg("--config-file")
            .arg(&config)
            .args(["run", &schema, "-H", &auth, "--checks", "all", "--mode", "all"])
            .args(["--max-examples", &examples, "--seed", &seed, filter, RATE_LIMIT_PATH])
            .args(["--generation-database", "none", "--no-color", "--suppress-health-check", "too_slow"])
            .current_dir(&work)
            .status()
            .with_context(|| format!("run {}", st.display()))?;
        if !status.success() {
            failed.push(pass);
        }
    }
    drop(server);
    if !failed.is_empty() {
        bail!(
            "schemathesis found problems in the {} operations (reproduce: cargo xtask api-fuzz --seed {seed}; the service's log is {})",
            failed.join(" and "),
            work.join("ingestd.log").display()
        );
    }
    Ok(())
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

/// A release `ingestd` on a free port with a SQLite database of its own and
/// an admin key, so the admin API is fuzzed too. Killed when dropped.
struct Server {
    child: Child,
    base: String,
    admin_key: String,
}

impl Server {
    fn start(ingestd: &Path, work: &Path) -> Result<Self> {
        let port = free_port()?;
        let env = |cmd: &mut Command| {
            // Nothing from the caller's shell (REDIS_URL, NATS_URL, INGESTD_*…).
            cmd.current_dir(work)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("INGESTD_DATABASE__URL", "sqlite://api-fuzz.db?mode=rwc")
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
