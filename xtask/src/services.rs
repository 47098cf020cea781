//! The services the tests talk to: PostgreSQL, Redis, NATS with JetStream.
//!
//! For each, in order: the `INGESTD_TEST_*_URL` variable when set; the
//! standard local port when something answers there; a throwaway server
//! started from installed binaries on a free port (stopped again when the
//! tests end); otherwise a failure naming the package to install.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Services {
    env: Vec<(&'static str, String)>,
    children: Vec<Child>,
    /// Run before the children are killed (a server started through
    /// `runuser` must be stopped itself: killing `runuser` would orphan it).
    stop_commands: Vec<Command>,
    _dirs: Vec<TempDir>,
}

impl Services {
    pub fn ensure() -> Result<Self> {
        let mut s = Services { env: Vec::new(), children: Vec::new(), stop_commands: Vec::new(), _dirs: Vec::new() };
        s.postgres()?;
        s.redis()?;
        s.nats()?;
        for (k, v) in &s.env {
            eprintln!("xtask: {k}={v}");
        }
        Ok(s)
    }

    /// PostgreSQL alone (`cargo xtask api-fuzz`): its admin URL, and what
    /// must live while it is used.
    pub fn postgres_only() -> Result<(Self, String)> {
        let mut s = Services { env: Vec::new(), children: Vec::new(), stop_commands: Vec::new(), _dirs: Vec::new() };
        s.postgres()?;
        let url = s.env.iter().find(|(k, _)| *k == "INGESTD_TEST_POSTGRES_URL").map(|(_, v)| v.clone());
        let url = url.context("no PostgreSQL URL")?;
        Ok((s, url))
    }

    /// Services started elsewhere (`cargo xtask test --compose`), named by their URLs.
    pub fn given(env: Vec<(&'static str, String)>) -> Self {
        for (k, v) in &env {
            eprintln!("xtask: {k}={v}");
        }
        Services { env, children: Vec::new(), stop_commands: Vec::new(), _dirs: Vec::new() }
    }

    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }

    fn postgres(&mut self) -> Result<()> {
        const VAR: &str = "INGESTD_TEST_POSTGRES_URL";
        if self.reuse(VAR, 5432, "postgres://postgres@127.0.0.1:5432/postgres") {
            return Ok(());
        }
        let Some(bin) = postgres_bin_dir() else {
            bail!(
                "PostgreSQL is needed: nothing answers on 127.0.0.1:5432 and no initdb/postgres binaries were found. \
                 Install it (Debian/Ubuntu: `apt-get install postgresql`) or set {VAR}"
            );
        };
        let dir = TempDir::new("pg")?;
        let data = dir.0.join("data");
        let port = free_port()?;
        // PostgreSQL refuses to run as root.
        let as_user = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &as_user {
            run(Command::new("chown").args(["-R", user]).arg(&dir.0))?;
        }
        let sudo = |program: PathBuf| -> Command {
            match &as_user {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", user, "--"]).arg(program);
                    c
                }
                None => Command::new(program),
            }
        };
        run(sudo(bin.join("initdb")).args(["-A", "trust", "-U", "postgres", "-D"]).arg(&data))?;
        let child = sudo(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir.0)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start postgres")?;
        self.started("postgres", child, port)?;
        let mut stop = sudo(bin.join("pg_ctl"));
        stop.args(["stop", "-m", "immediate", "-D"]).arg(&data).stdout(Stdio::null()).stderr(Stdio::null());
        self.stop_commands.push(stop);
        self._dirs.push(dir);
        self.env.push((VAR, format!("postgres://postgres@127.0.0.1:{port}/postgres")));
        Ok(())
    }

    fn redis(&mut self) -> Result<()> {
        const VAR: &str = "INGESTD_TEST_REDIS_URL";
        if self.reuse(VAR, 6379, "redis://127.0.0.1:6379") {
            return Ok(());
        }
        let Some(bin) = which("redis-server") else {
            bail!(
                "Redis is needed: nothing answers on 127.0.0.1:6379 and redis-server is not installed. Install it (Debian/Ubuntu: `apt-get install redis-server`) or set {VAR}"
            );
        };
        let port = free_port()?;
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        self.started("redis-server", child, port)?;
        self.env.push((VAR, format!("redis://127.0.0.1:{port}")));
        Ok(())
    }

    fn nats(&mut self) -> Result<()> {
        const VAR: &str = "INGESTD_TEST_NATS_URL";
        if self.reuse(VAR, 4222, "nats://127.0.0.1:4222") {
            return Ok(());
        }
        let Some(bin) = which("nats-server") else {
            bail!(
                "NATS is needed: nothing answers on 127.0.0.1:4222 and nats-server is not installed. Install it (Debian/Ubuntu: `apt-get install nats-server`) or set {VAR}"
            );
        };
        let dir = TempDir::new("nats")?;
        let port = free_port()?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nats-server")?;
        self.started("nats-server", child, port)?;
        self._dirs.push(dir);
        self.env.push((VAR, format!("nats://127.0.0.1:{port}")));
        Ok(())
    }

    /// Uses the server named by `var`, else the one on the standard `port`.
    fn reuse(&mut self, var: &'static str, port: u16, url: &str) -> bool {
        if let Ok(url) = std::env::var(var) {
            self.env.push((var, url));
            return true;
        }
        if !throwaway_only() && answers(port) {
            self.env.push((var, url.to_owned()));
            return true;
        }
        false
    }

    fn started(&mut self, name: &str, mut child: Child, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(port) {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}) before listening on port {port}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{name} did not listen on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("xtask: started a throwaway {name} on port {port}");
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for stop in &mut self.stop_commands {
            let _ = stop.status();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ingestd-xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `INGESTD_TEST_THROWAWAY=1` ignores the standard ports, to exercise the
/// fresh-machine path on a machine that has the services running.
fn throwaway_only() -> bool {
    std::env::var_os("INGESTD_TEST_THROWAWAY").is_some_and(|v| v == "1")
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(initdb) = which("initdb") {
        let dir = initdb.parent()?.to_path_buf();
        if dir.join("postgres").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path()).collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin"))
        .find(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
