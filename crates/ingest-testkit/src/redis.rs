//! Redis for tests: the shared server's URL, unique key names, and a
//! throwaway `redis-server` a test may kill and restart.

use std::net::TcpStream;
use std::time::Duration;

use uuid::Uuid;

use crate::throwaway::Throwaway;

pub const REDIS_ENV: &str = "INGESTD_TEST_REDIS_URL";
const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";

/// The URL of the shared test Redis (`INGESTD_TEST_REDIS_URL`, else the
/// standard local port). Panics, naming what to start, when nothing answers.
pub fn url() -> String {
    let url = std::env::var(REDIS_ENV).unwrap_or_else(|_| REDIS_DEFAULT.to_owned());
    let addr = url.trim_start_matches("redis://").split(['/', '?']).next().unwrap_or_default().to_owned();
    let addr = addr.rsplit_once('@').map(|(_, a)| a.to_owned()).unwrap_or(addr);
    if TcpStream::connect_timeout(
        &addr.parse().unwrap_or_else(|_| ([127, 0, 0, 1], 6379).into()),
        Duration::from_secs(2),
    )
    .is_err()
    {
        panic!(
            "cannot reach Redis at {url}; start it (e.g. `redis-server --daemonize yes`) or set {REDIS_ENV}, \
             or run the suite with `cargo xtask test`, which starts one"
        );
    }
    url
}

/// A key or name no other test uses: `<prefix>:<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}:{}", Uuid::now_v7().simple())
}

/// A `redis-server` of the test's own, on a free port, with an append-only
/// file fsynced on every write in a temporary directory, so [`restart`]
/// keeps the data, even after [`kill`]. Killed when dropped.
///
/// [`restart`]: ThrowawayRedis::restart
/// [`kill`]: ThrowawayRedis::kill
pub struct ThrowawayRedis {
    pub port: u16,
    server: Throwaway,
}

impl ThrowawayRedis {
    pub fn start() -> Self {
        let server = crate::throwaway::started(ingest_throwaway::redis_persistent());
        ThrowawayRedis { port: server.port, server }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and data directory (kills it first if running).
    pub fn restart(&mut self) {
        self.server.restart().unwrap_or_else(|e| panic!("cannot restart the throwaway server: {e}"));
    }
}
