//! Child processes: ingestd (the release binary) and a throwaway PostgreSQL.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(child: &mut Child, port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until ingestd answers `GET /health` with 200: it listens before it
/// has migrated and started, so an open port is not enough.
fn wait_healthy(child: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("ingestd exited at start ({status})");
        }
        if health_answers(port) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ingestd did not answer /health on {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn health_answers(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}

/// One ingestd process. Authentication and rate limiting are off unless
/// `env` turns them on: the scenarios are about durability.
pub struct Ingestd {
    child: Child,
    pub addr: SocketAddr,
}

impl Ingestd {
    pub fn start(bin: &Path, port: u16, env: &[(&str, String)], log: &Path) -> Result<Ingestd> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut child = Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("INGESTD_AUTH__MODE", "none")
            .env("INGESTD_RATE_LIMIT__ENABLED", "false")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        wait_healthy(&mut child, port)?;
        Ok(Ingestd { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) })
    }

    /// SIGKILL: no chance to flush or answer.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGSTOP: the process holds whatever it holds, doing nothing, until
    /// [`resume`](Self::resume) or a kill.
    pub fn pause(&self) -> Result<()> {
        signal(self.child.id(), "-STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) -> Result<()> {
        signal(self.child.id(), "-CONT")
    }

    /// SIGTERM, then waits for the exit; how long it took.
    pub fn terminate(mut self, limit: Duration) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        signal(self.child.id(), "-TERM")?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                bail!("ingestd did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Ingestd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL of our own (initdb in a temporary directory), so a scenario
/// may stop and start it.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    as_user: Option<String>,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let bin = postgres_bin_dir().context(
            "the storage-outage scenario starts its own PostgreSQL: install it (Debian/Ubuntu: `apt-get install postgresql`)",
        )?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let as_user = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &as_user {
            run(Command::new("chown").args(["-R", user]).arg(dir.path()))?;
        }
        let mut pg = Postgres { bin, data, port: free_port()?, child: None, as_user, _dir: dir };
        run(pg.command("initdb").args(["-A", "trust", "-U", "postgres", "-D"]).arg(&pg.data))?;
        pg.launch()?;
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(self.bin.join(program));
                c
            }
            None => Command::new(self.bin.join(program)),
        }
    }

    fn launch(&mut self) -> Result<()> {
        let socket_dir = self.data.parent().unwrap_or(Path::new("/tmp")).to_path_buf();
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start postgres")?;
        wait_listening(&mut child, self.port, "postgres")?;
        // Listening comes a moment before accepting logins.
        std::thread::sleep(Duration::from_millis(300));
        self.child = Some(child);
        Ok(())
    }

    /// A fast shutdown (`pg_ctl stop -m fast`): connections are cut at once.
    /// (Through `runuser` the child is not postgres itself, so signals go
    /// through pg_ctl.)
    pub fn stop(&mut self) -> Result<()> {
        self.pg_ctl("fast")
    }

    fn pg_ctl(&mut self, mode: &str) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let data = self.data.clone();
            run(self.command("pg_ctl").args(["stop", "-m", mode, "-D"]).arg(&data))?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.launch()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl("immediate");
    }
}

fn postgres_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file());
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
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

/// A redis-server of our own (no persistence), so a scenario may kill it and
/// start it again on the same port.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        let mut redis = Redis { port: free_port()?, child: None };
        redis.launch()?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) -> Result<()> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (Debian/Ubuntu: `apt-get install redis-server`)")?;
        wait_listening(&mut child, self.port, "redis-server")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.launch()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
