//! NATS with JetStream for the stream-source tests.
//!
//! [`url`] is the shared test server (`INGESTD_TEST_NATS_URL`, else the
//! standard local port); tests isolate themselves with [`unique`] stream,
//! subject and consumer names. A test that kills or restarts the server
//! starts its own [`ThrowawayNats`] from the installed binary instead, so the
//! shared server is never touched.

use std::net::TcpStream;
use std::time::Duration;

use uuid::Uuid;

use crate::throwaway::Throwaway;

pub const NATS_ENV: &str = "INGESTD_TEST_NATS_URL";
const NATS_DEFAULT: &str = "nats://127.0.0.1:4222";

/// The URL of the shared test NATS server (JetStream enabled). Panics, naming
/// what to start, when nothing answers there.
pub fn url() -> String {
    let url = std::env::var(NATS_ENV).unwrap_or_else(|_| NATS_DEFAULT.to_owned());
    let addr = url.trim_start_matches("nats://").rsplit('@').next().unwrap_or_default().to_owned();
    if TcpStream::connect_timeout(&addr.parse().unwrap_or_else(|_| panic!("{NATS_ENV}={url}: not host:port")), SECOND)
        .is_err()
    {
        panic!(
            "cannot reach NATS at {url}; start `nats-server -js` (Debian/Ubuntu: `apt-get install nats-server`), \
             set {NATS_ENV}, or run the suite with `cargo xtask test`"
        );
    }
    url
}

/// `prefix` plus a fresh suffix, valid as a stream, consumer or subject token.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::now_v7().simple().to_string()[16..])
}

const SECOND: Duration = Duration::from_secs(1);

/// A `nats-server -js` of the test's own, on a free port with its store in a
/// temporary directory; killed when dropped.
pub struct ThrowawayNats {
    pub port: u16,
    server: Throwaway,
}

impl ThrowawayNats {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> Self {
        let server = crate::throwaway::started(ingest_throwaway::nats());
        ThrowawayNats { port: server.port, server }
    }

    /// A server started with further arguments: authentication
    /// (`--auth`, `--user`/`--pass`), TLS (`--tls`, `--tlscert`, …) or `-c FILE`.
    pub fn start_with(args: &[&std::ffi::OsStr]) -> Self {
        let args = args.iter().map(|a| a.to_os_string()).collect();
        let server = crate::throwaway::started(ingest_throwaway::nats_with(args));
        ThrowawayNats { port: server.port, server }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no clean shutdown).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port with the same store directory, so
    /// streams, consumers and their positions survive.
    pub fn restart(&mut self) {
        self.server.restart().unwrap_or_else(|e| panic!("cannot restart the throwaway server: {e}"));
    }
}

/// Three (or `nodes`) `nats-server -js` routed into one JetStream cluster, of
/// the test's own; killed when dropped.
pub struct NatsCluster {
    nodes: Vec<Throwaway>,
}

impl NatsCluster {
    /// Starts the nodes; each accepts connections on return. JetStream
    /// elects its meta leader a few seconds later: until then creating a
    /// stream fails (ingestd's setup retries until it succeeds).
    pub fn start(nodes: usize) -> Self {
        let nodes = ingest_throwaway::nats_cluster(nodes)
            .unwrap_or_else(|e| panic!("cannot start a throwaway NATS cluster: {e}"));
        NatsCluster { nodes }
    }

    /// Each node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect()
    }

    /// Every node's URL, comma-separated, as `nats.url` takes them.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again with its store: it rejoins the cluster.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart().unwrap_or_else(|e| panic!("cannot restart NATS node {i}: {e}"));
    }
}
