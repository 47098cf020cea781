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

/// A Redis Cluster of the test's own (`masters` masters, each with
/// `replicas` replicas), formed and `cluster_state:ok` on return; every
/// node is killed when dropped.
pub struct RedisCluster {
    cluster: ingest_throwaway::RedisCluster,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        let cluster = ingest_throwaway::redis_cluster(masters, replicas)
            .unwrap_or_else(|e| panic!("cannot start a throwaway Redis Cluster: {e}"));
        RedisCluster { cluster }
    }

    /// `redis-cluster://…?node=…`, as `redis.url` takes it.
    pub fn url(&self) -> String {
        self.cluster.url()
    }

    /// The single-server URL of node `i` (for a client that must not follow
    /// redirections, like `redis-cli -c` does).
    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.cluster.ports()[i])
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.cluster.ports()
    }

    /// `redis-cli -c -p <node i> args…` (follows redirections): its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.cluster.cli(i, &all).unwrap_or_else(|e| panic!("redis-cli {args:?}: {e}"))
    }

    /// The node that is master of `key`'s slot.
    pub fn master_of(&self, key: &str) -> usize {
        self.cluster.master_of(key).unwrap_or_else(|e| panic!("master of {key:?}: {e}"))
    }

    /// Waits (`within`) until another node has taken over `key`'s slot from
    /// `old`; returns it.
    pub fn wait_for_failover(&self, key: &str, old: usize, within: Duration) -> usize {
        self.cluster.wait_for_failover(key, old, within).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.cluster.kill(i);
    }

    /// Starts node `i` again: it rejoins the cluster.
    pub fn restart(&mut self, i: usize) {
        self.cluster.restart(i).unwrap_or_else(|e| panic!("cannot restart Redis node {i}: {e}"));
    }
}
