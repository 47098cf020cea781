//! Child processes: ingestd (the release binary) and a throwaway PostgreSQL.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub fn free_port() -> Result<u16> {
    Ok(ingest_throwaway::free_port()?)
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

/// A PostgreSQL of our own (the one launcher, `ingest-throwaway`), so a
/// scenario may stop and start it.
pub struct Postgres {
    server: ingest_throwaway::Server,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let server = ingest_throwaway::postgres(&["max_connections=200"])
            .context("the storage-outage scenario starts its own PostgreSQL")?;
        Ok(Postgres { port: server.port, server })
    }

    pub fn url(&self) -> String {
        ingest_throwaway::postgres_url(self.port)
    }

    /// A fast shutdown (`pg_ctl stop -m fast`): connections are cut at once.
    pub fn stop(&mut self) -> Result<()> {
        self.server.stop_with("fast");
        Ok(())
    }

    pub fn start_again(&mut self) -> Result<()> {
        self.server.restart()?;
        // Listening comes a moment before accepting logins.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }
}

/// A redis-server of our own (no persistence), so a scenario may kill it and
/// start it again on the same port.
pub struct Redis {
    server: ingest_throwaway::Server,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        let server = ingest_throwaway::redis()?;
        Ok(Redis { port: server.port, server })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> Result<()> {
        self.server.kill();
        Ok(())
    }

    pub fn start_again(&mut self) -> Result<()> {
        Ok(self.server.restart()?)
    }
}
