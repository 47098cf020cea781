//! The services the tests talk to: PostgreSQL, Redis, NATS with JetStream.
//!
//! For each, in order: the `INGESTD_TEST_*_URL` variable when set; the
//! standard local port when something answers there; a throwaway server
//! started from installed binaries on a free port by the one launcher,
//! `ingest-throwaway` (stopped again when the tests end); otherwise a failure naming the package to install.

use std::process::Command;

use anyhow::{Context, Result};
use ingest_throwaway::{Server, answers};

pub struct Services {
    env: Vec<(&'static str, String)>,
    /// Throwaway servers started here; stopped when dropped.
    servers: Vec<Server>,
}

impl Services {
    pub fn ensure() -> Result<Self> {
        let mut s = Services { env: Vec::new(), servers: Vec::new() };
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
        let mut s = Services { env: Vec::new(), servers: Vec::new() };
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
        Services { env, servers: Vec::new() }
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
        let server = ingest_throwaway::postgres(&["fsync=off", "max_connections=300"]).with_context(|| {
            format!("PostgreSQL is needed: nothing answers on 127.0.0.1:5432 and none could be started; set {VAR}")
        })?;
        self.env.push((VAR, ingest_throwaway::postgres_url(server.port)));
        self.started(server);
        Ok(())
    }

    fn redis(&mut self) -> Result<()> {
        const VAR: &str = "INGESTD_TEST_REDIS_URL";
        if self.reuse(VAR, 6379, "redis://127.0.0.1:6379") {
            return Ok(());
        }
        let server = ingest_throwaway::redis().with_context(|| {
            format!("Redis is needed: nothing answers on 127.0.0.1:6379 and none could be started; set {VAR}")
        })?;
        self.env.push((VAR, format!("redis://127.0.0.1:{}", server.port)));
        self.started(server);
        Ok(())
    }

    fn nats(&mut self) -> Result<()> {
        const VAR: &str = "INGESTD_TEST_NATS_URL";
        if self.reuse(VAR, 4222, "nats://127.0.0.1:4222") {
            return Ok(());
        }
        let server = ingest_throwaway::nats().with_context(|| {
            format!("NATS is needed: nothing answers on 127.0.0.1:4222 and none could be started; set {VAR}")
        })?;
        self.env.push((VAR, format!("nats://127.0.0.1:{}", server.port)));
        self.started(server);
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

    fn started(&mut self, server: Server) {
        eprintln!("xtask: started a throwaway {server:?}");
        self.servers.push(server);
    }
}

/// `INGESTD_TEST_THROWAWAY=1` ignores the standard ports, to exercise the
/// fresh-machine path on a machine that has the services running.
fn throwaway_only() -> bool {
    std::env::var_os("INGESTD_TEST_THROWAWAY").is_some_and(|v| v == "1")
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(ingest_throwaway::free_port()?)
}
