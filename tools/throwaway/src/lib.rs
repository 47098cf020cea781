//! The one launcher of throwaway servers, shared by `ingest-testkit` (tests
//! that kill a server), `tools/chaos` (fault scenarios) and `xtask` (the
//! services `cargo xtask test` starts when none answers): a free port, a
//! data directory of its own that outlives restarts, SIGKILL on
//! [`Server::kill`] and on drop. Standard library only, so xtask stays light.
//!
//! PostgreSQL refuses to run as root; run as root, [`postgres`] runs it as
//! the `postgres` user through `runuser`. A PostgreSQL is always stopped
//! with `pg_ctl` (bounded; SIGKILL of the postmaster when it fails).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// `name` on `PATH`, or in the system directories Debian puts servers in.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The directory holding `initdb` and `postgres`: on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps them off `PATH`).
pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(initdb) = which("initdb") {
        let dir = initdb.parent()?.to_path_buf();
        if dir.join("postgres").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.into_iter().rev().find(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// A directory of its own under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ingestd-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Launch = Box<dyn Fn(u16, &Path) -> Command + Send + Sync>;

/// A server process of its own on a free port, with a data directory that
/// outlives restarts. Killed (SIGKILL, or its `stop` command) when dropped.
pub struct Server {
    pub port: u16,
    name: &'static str,
    dir: TempDir,
    launch: Launch,
    /// How to stop it (`pg_ctl stop`): SIGKILL to a `runuser` wrapper would
    /// orphan the server.
    stop: Option<Launch>,
    child: Option<Child>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("name", &self.name).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Server {
    /// Starts `launch(port, dir)` on a free port and waits (30 s at most)
    /// until it accepts connections.
    pub fn start(
        name: &'static str,
        launch: impl Fn(u16, &Path) -> Command + Send + Sync + 'static,
    ) -> io::Result<Self> {
        Self::prepared(name, TempDir::new(name)?, Box::new(launch), None)
    }

    fn prepared(name: &'static str, dir: TempDir, launch: Launch, stop: Option<Launch>) -> io::Result<Self> {
        let mut server = Server { port: free_port()?, name, dir, launch, stop, child: None };
        // A free port can be taken between the check and the server's bind
        // (by another test's server, or a client's ephemeral port): try
        // another one before giving up.
        let mut attempts = 0;
        loop {
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) if attempts < 3 && e.to_string().contains("exited at start") => {
                    attempts += 1;
                    server.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it without a clean shutdown (SIGKILL; `pg_ctl stop -m
    /// immediate` for a PostgreSQL) and waits for the exit.
    pub fn kill(&mut self) {
        self.stop_with("immediate");
    }

    /// Stops it; `mode` is `pg_ctl`'s (`fast`, `immediate`) for a server
    /// with a stop command, ignored (SIGKILL) otherwise.
    pub fn stop_with(&mut self, mode: &str) {
        let Some(child) = self.child.take() else { return };
        self.end(child, mode);
    }

    /// Stops `child` (its stop command, else SIGKILL) and reaps it; never
    /// waits more than 30 s: a server its stop command did not stop is
    /// killed, and so is the process its pid file names (a server run
    /// through `runuser` is not the child itself).
    fn end(&self, mut child: Child, mode: &str) {
        let stopped = match &self.stop {
            Some(stop) => {
                let mut cmd = stop(self.port, self.dir.path());
                cmd.args(["-m", mode, "-t", "20"]).stdout(Stdio::null()).stderr(Stdio::null());
                cmd.status().is_ok_and(|s| s.success())
            }
            None => false,
        };
        if !stopped {
            let _ = child.kill();
            if let Some(pid) = self.pid_file_pid() {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The server's own pid from `postmaster.pid`, for a PostgreSQL.
    fn pid_file_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Starts it again on the same port with the same data directory, so
    /// what it stored survives.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }

    fn launch(&mut self) -> io::Result<()> {
        let (name, port) = (self.name, self.port);
        let mut child = (self.launch)(port, self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name} ({e})")))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let exited = |status| io::Error::other(format!("{name} exited at start ({status}); is port {port} taken?"));
        // The port may still be held briefly by the previous process.
        while !answers(port) {
            if let Some(status) = child.try_wait()? {
                return Err(exited(status));
            }
            if Instant::now() > deadline {
                self.end(child, "immediate");
                return Err(io::Error::other(format!("{name} did not listen on port {port} within 30 s")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Something else may hold the port (a free port taken since, the old
        // process): the child must still be running once it answers.
        std::thread::sleep(Duration::from_millis(50));
        if let Some(status) = child.try_wait()? {
            return Err(exited(status));
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn missing(what: &str, package: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{what} is not installed (Debian/Ubuntu: `apt-get install {package}`)"),
    )
}

/// `nats-server -js` with its store in the server's directory.
pub fn nats() -> io::Result<Server> {
    let bin = which("nats-server").ok_or_else(|| missing("nats-server", "nats-server"))?;
    Server::start("nats-server", move |port, dir| {
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(dir);
        cmd
    })
}

/// `nats-server -js` with further arguments (authentication, TLS, `-c FILE`).
pub fn nats_with(args: Vec<std::ffi::OsString>) -> io::Result<Server> {
    let bin = which("nats-server").ok_or_else(|| missing("nats-server", "nats-server"))?;
    Server::start("nats-server", move |port, dir| {
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]).arg(dir).args(&args);
        cmd
    })
}

/// `nodes` `nats-server -js` processes routed into one JetStream cluster
/// (cluster ports chosen up front, so a node restarted with
/// [`Server::restart`] rejoins). JetStream elects its meta leader a few
/// seconds after the nodes start: wait for the cluster to create streams.
pub fn nats_cluster(nodes: usize) -> io::Result<Vec<Server>> {
    let bin = which("nats-server").ok_or_else(|| missing("nats-server", "nats-server"))?;
    let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<io::Result<_>>()?;
    let route_urls = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let cluster = format!("ingestd-test-{}", routes[0]);
    (0..nodes)
        .map(|i| {
            let (bin, route_urls, cluster, route) = (bin.clone(), route_urls.clone(), cluster.clone(), routes[i]);
            Server::start("nats-server", move |port, dir| {
                let mut cmd = Command::new(&bin);
                cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                    .arg(dir)
                    .args(["--server_name", &format!("{cluster}-n{i}"), "--cluster_name", &cluster])
                    .args(["--cluster", &format!("nats://127.0.0.1:{route}"), "--routes", &route_urls]);
                cmd
            })
        })
        .collect()
}

/// `redis-server` without persistence: a restart after [`Server::kill`]
/// starts empty (a rate limiter's Redis, the test services).
pub fn redis() -> io::Result<Server> {
    let bin = which("redis-server").ok_or_else(|| missing("redis-server", "redis-server"))?;
    Server::start("redis-server", move |port, _| {
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        cmd
    })
}

/// `redis-server` without persistence that speaks only TLS on its port, with
/// the given certificate and key; clients are not asked for certificates.
pub fn redis_tls(cert: PathBuf, key: PathBuf) -> io::Result<Server> {
    let bin = which("redis-server").ok_or_else(|| missing("redis-server", "redis-server"))?;
    Server::start("redis-server", move |port, _| {
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        cmd.args(["--appendonly", "no", "--tls-auth-clients", "no", "--tls-cert-file"]).arg(&cert);
        cmd.arg("--tls-key-file").arg(&key);
        cmd
    })
}

/// A Redis Cluster of `redis-server --cluster-enabled yes` processes: the
/// first `masters` nodes own the 16 384 slots, each with `replicas`
/// replicas (`redis-cli --cluster create`). Cluster-bus ports are chosen
/// at each node's first start and kept, with its `nodes.conf`, in its own
/// directory, so a node killed and restarted with [`RedisCluster::restart`]
/// rejoins (as a replica, once its replica has been promoted). Nothing is
/// persisted; a replica holds what its master had replicated to it.
pub struct RedisCluster {
    nodes: Vec<Server>,
    cli: PathBuf,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster").field("ports", &self.ports()).finish_non_exhaustive()
    }
}

/// Marks a cluster node's directory once the node is part of the cluster.
const JOINED: &str = "joined";

/// Starts and forms a Redis Cluster; returns once every node reports
/// `cluster_state:ok` and every replica has synced with its master. Node
/// timeout: 1 s with replicas (a killed master is failed over within a few
/// seconds), 5 s without (nothing to fail over to, and a node a busy machine
/// stalls for a second must not be marked failed). Needs redis-server ≥ 7.0
/// (`--cluster-port`).
pub fn redis_cluster(masters: usize, replicas: usize) -> io::Result<RedisCluster> {
    let bin = which("redis-server").ok_or_else(|| missing("redis-server", "redis-server"))?;
    let cli = which("redis-cli").ok_or_else(|| missing("redis-cli", "redis-tools"))?;
    let version = Command::new(&bin).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let major = version.split("v=").nth(1).and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|m| m < 7) {
        return Err(io::Error::other(format!(
            "a Redis Cluster of throwaway nodes needs redis-server 7.0 or newer (`--cluster-port`); this one says {:?}",
            version.trim()
        )));
    }
    let node_timeout = if replicas == 0 { "5000" } else { "1000" };
    let total = masters * (1 + replicas);
    let nodes = (0..total)
        .map(|_| {
            let bin = bin.clone();
            Server::start("redis-server", move |port, dir| {
                // The cluster-bus port: a fresh one at each first-start
                // attempt (one taken since it was found fails the start, and
                // the launcher tries again), the same once the node joined,
                // so a restarted node is where the others expect it.
                let (joined, bus_file) = (dir.join(JOINED), dir.join("bus-port"));
                let kept = std::fs::read_to_string(&bus_file).ok().and_then(|p| p.trim().parse::<u16>().ok());
                let bus = match kept {
                    Some(bus) if joined.exists() => bus,
                    _ => {
                        let bus = free_port().unwrap_or(0); // 0: Redis's default, port + 10000
                        let _ = std::fs::write(&bus_file, bus.to_string());
                        bus
                    }
                };
                let mut cmd = Command::new(&bin);
                cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(dir);
                cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
                cmd.args(["--cluster-port", &bus.to_string(), "--cluster-node-timeout", node_timeout]);
                // Replicas sync at once (Redis 7 waits 5 s by default for
                // more replicas to share one diskless transfer).
                cmd.args(["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]);
                cmd
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let cluster = RedisCluster { nodes, cli };
    let mut create = Command::new(&cluster.cli);
    create.arg("--cluster").arg("create");
    create.args(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")));
    create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
    let out = create.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    for node in &cluster.nodes {
        std::fs::write(node.dir().join(JOINED), "")?;
    }
    cluster.wait_until_ok(&(0..total).collect::<Vec<_>>(), Duration::from_secs(30))?;
    cluster.wait_until_replicated(Duration::from_secs(30))?;
    Ok(cluster)
}

impl RedisCluster {
    /// Every node's port, in start order (masters first at creation).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// A URL for fred: `redis-cluster://first?node=second&node=…` (every node
    /// as a seed).
    pub fn url(&self) -> String {
        let ports = self.ports();
        let seeds: Vec<String> = ports[1..].iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", ports[0], seeds.join("&"))
    }

    /// `redis-cli -p <node i> args…`: its output, or an error.
    pub fn cli(&self, i: usize, args: &[&str]) -> io::Result<String> {
        let out = Command::new(&self.cli)
            .args(["-h", "127.0.0.1", "-p", &self.nodes[i].port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The node (index) that is master of `key`'s slot, as the first node
    /// that answers sees it.
    pub fn master_of(&self, key: &str) -> io::Result<usize> {
        let mut last = io::Error::other("no node answers");
        for i in 0..self.nodes.len() {
            let asked = self.cli(i, &["CLUSTER", "KEYSLOT", key]).and_then(|slot| {
                let slot: u16 = slot.trim().parse().map_err(|_| io::Error::other(format!("KEYSLOT: {slot}")))?;
                let nodes = self.cli(i, &["CLUSTER", "NODES"])?;
                self.master_in(&nodes, slot)
            });
            match asked {
                Ok(master) => return Ok(master),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The master serving `slot` in a `CLUSTER NODES` reply, by index.
    fn master_in(&self, nodes: &str, slot: u16) -> io::Result<usize> {
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if !serves {
                continue;
            }
            // `127.0.0.1:7000@17000[,hostname]`
            let port = fields[1].split(['@', ',']).next().and_then(|a| a.rsplit_once(':')).map(|(_, p)| p);
            let index = self.nodes.iter().position(|n| Some(n.port.to_string().as_str()) == port);
            return index.ok_or_else(|| io::Error::other(format!("slot {slot}: unknown node {}", fields[1])));
        }
        Err(io::Error::other(format!("slot {slot} has no live master")))
    }

    /// Waits until each node in `alive` reports `cluster_state:ok`.
    pub fn wait_until_ok(&self, alive: &[usize], within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let ok = alive
                .iter()
                .all(|&i| self.cli(i, &["CLUSTER", "INFO"]).is_ok_and(|info| info.contains("cluster_state:ok")));
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("the Redis Cluster was not ok within {within:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every replica's link to its master is up: a replica that
    /// never synced does not take over when its master dies (its data is
    /// too old to be elected).
    fn wait_until_replicated(&self, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        for i in 0..self.nodes.len() {
            loop {
                let info = self.cli(i, &["INFO", "replication"])?;
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!("Redis node {i}'s replica never synced: {info}")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Waits until a live node other than `old` is master of `key`'s slot
    /// and the cluster is ok again; returns the new master.
    pub fn wait_for_failover(&self, key: &str, old: usize, within: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(master) = self.master_of(key)
                && master != old
                && self.nodes[master].child.is_some()
            {
                let alive: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()).collect();
                self.wait_until_ok(&alive, deadline.saturating_duration_since(Instant::now()))?;
                return Ok(master);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("no failover of {key:?}'s slot within {within:?}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports with its `nodes.conf`: it rejoins.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].restart()
    }
}

/// `redis-server` with an append-only file fsynced on every write in the
/// server's directory: what it acknowledged survives [`Server::kill`] and
/// [`Server::restart`] (streams, groups, pending entries).
pub fn redis_persistent() -> io::Result<Server> {
    let bin = which("redis-server").ok_or_else(|| missing("redis-server", "redis-server"))?;
    Server::start("redis-server", move |port, dir| {
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(dir).args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]);
        cmd
    })
}

/// A fresh PostgreSQL cluster (`initdb -A trust -U postgres`) with
/// `settings` (`-c name=value`); its URL is `postgres_url(server.port)`.
/// Returns once it accepts logins.
pub fn postgres(settings: &[&str]) -> io::Result<Server> {
    let bin = postgres_bin_dir().ok_or_else(|| missing("PostgreSQL (initdb, postgres)", "postgresql"))?;
    let dir = TempDir::new("postgres")?;
    let as_user = is_root().then(|| "postgres".to_owned());
    if let Some(user) = &as_user {
        run(Command::new("chown").args(["-R", user]).arg(dir.path()))?;
    }
    let command = move |program: &str| -> Command {
        match &as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(bin.join(program));
                c
            }
            None => Command::new(bin.join(program)),
        }
    };
    let data = dir.path().join("data");
    run(command("initdb").args(["-A", "trust", "-U", "postgres", "-D"]).arg(&data))?;
    let settings: Vec<String> = settings.iter().map(|s| (*s).to_owned()).collect();
    let (launch, stop) = (command.clone(), command);
    let server = Server::prepared(
        "postgres",
        dir,
        Box::new(move |port, dir| {
            let mut cmd = launch("postgres");
            cmd.arg("-D").arg(dir.join("data")).args(["-p", &port.to_string(), "-k"]).arg(dir);
            cmd.args(["-c", "listen_addresses=127.0.0.1"]);
            for s in &settings {
                cmd.args(["-c", s]);
            }
            cmd
        }),
        Some(Box::new(move |_, dir| {
            let mut cmd = stop("pg_ctl");
            cmd.arg("stop").arg("-D").arg(dir.join("data"));
            cmd
        })),
    )?;
    // Listening comes a moment before accepting logins.
    std::thread::sleep(Duration::from_millis(300));
    Ok(server)
}

/// The URL of the `postgres` database of a [`postgres`] server.
pub fn postgres_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}
