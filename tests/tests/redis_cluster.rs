//! ingestd on a real Redis Cluster (issue 23), started from the installed
//! `redis-server` for each test: the shared rate limiter admits exactly its
//! capacity across two processes with keys spread over the masters, and the
//! Redis Streams source reads a stream on the cluster and goes on after the
//! master owning the stream's slot is killed and its replica takes over.

use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, Config as FredConfig, ReconnectPolicy};
use fred::types::{ClusterHash, CustomCommand, Value};
use ingestd::Config;
use ingestd::config::{FailMode, PolicyConfig, RateLimitBackend};
use serde_json::Value as Json;
use testkit::http::Client;
use testkit::redis::{RedisCluster, unique};
use testkit::{Kind, record_json};

use common::Server;

mod common;

/// A fred client of the whole cluster (routes each key to its master,
/// follows the cluster through a failover).
async fn cluster_client(url: &str) -> fred::clients::Client {
    let config = FredConfig::from_url(url).unwrap();
    let client = fred::clients::Client::new(config, None, None, Some(ReconnectPolicy::new_constant(0, 100)));
    client.init().await.unwrap_or_else(|e| panic!("cannot reach the Redis Cluster at {url} ({e})"));
    client
}

/// `name key args…`, sent to the master of `key`'s slot.
async fn call(client: &fred::clients::Client, name: &'static str, key: &str, args: &[&str]) -> Result<Value, String> {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let mut all: Vec<Value> = vec![key.into()];
    all.extend(args.iter().map(|a| Value::from(*a)));
    let command = CustomCommand::new_static(name, ClusterHash::Custom(slot), false);
    client.custom::<Value, Value>(command, all).await.map_err(|e| format!("{name}: {e}"))
}

async fn await_ready(c: &mut Client, what: &str, want: impl Fn(u16, &Json) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.get("/health/ready").await;
        let body = r.json();
        if want(r.status.as_u16(), &body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last readiness {} {body}", r.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_redis_cluster_admit_exactly_capacity_together() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await.unwrap();
    let url = cluster.url();
    let limited = |c: &mut Config| {
        c.rate_limit.backend = RateLimitBackend::Redis;
        // A slow answer shows as a 503, never as an extra local 200.
        c.rate_limit.fail_mode = FailMode::Closed;
        c.rate_limit.redis_timeout_ms = 5_000;
        c.rate_limit.default =
            PolicyConfig { max_requests: Some(4), window_secs: Some(3600), ..PolicyConfig::default() };
        c.redis.url = url.clone();
        c.redis.consumer.enabled = false;
    };
    let a = Server::start(Kind::Sqlite, limited).await;
    let b = Server::start(Kind::Sqlite, limited).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for c in [&mut ca, &mut cb] {
        await_ready(c, "redis limiter", |s, b| s == 200 && b["components"]["rate_limiter"]["state"] == "redis").await;
    }
    // One organization per master: each key lives on another node.
    let mut orgs: Vec<(String, usize)> = Vec::new();
    while orgs.len() < 3 {
        let org = unique("org").replace(':', "-");
        let master = cluster.master_of(&format!("ratelimit:{{{org}}}"));
        if !orgs.iter().any(|(_, m)| *m == master) {
            orgs.push((org, master));
        }
    }
    for (org, _) in &orgs {
        let mut statuses = Vec::new();
        for i in 0..5 {
            for (c, n) in [(&mut ca, 2 * i), (&mut cb, 2 * i + 1)] {
                let body = serde_json::to_vec(&record_json(org, n)).unwrap();
                let headers = [("content-type", "application/json"), ("x-organization-id", org.as_str())];
                statuses.push(c.send("POST", "/v1/usage", &headers, body).await.unwrap().status.as_u16());
            }
        }
        assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429, 429, 429], "{org}");
        assert_eq!(a.count(org).await + b.count(org).await, 4, "{org}");
    }
    // The state is in the cluster: each key on the master its slot names,
    // asked directly (no redirection followed).
    let ports = cluster.ports();
    for (org, master) in &orgs {
        let port = ports[*master].to_string();
        let key = format!("ratelimit:{{{org}}}");
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port, "EXISTS", &key])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{key} on node {master}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_source_reads_a_cluster_and_goes_on_after_its_master_fails_over() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1)).await.unwrap();
    let url = cluster.url();
    let (key, group, org) = (unique("cluster:usage"), unique("g"), unique("org"));
    let client = cluster_client(&url).await;
    let server = Server::start(Kind::Sqlite, |c: &mut Config| {
        c.redis.url = url.clone();
        c.redis.consumer.stream_key = key.clone();
        c.redis.consumer.group = group.clone();
        c.redis.consumer.block_ms = 100;
        c.redis.consumer.claim_idle_secs = 2;
    })
    .await;
    let add = async |from: u64, to: u64, replicated: bool| {
        for i in from..to {
            let payload = record_json(&org, i).to_string();
            call(&client, "XADD", &key, &["*", "payload", &payload]).await.unwrap();
        }
        // Replicated before the master is killed: what is tested is
        // ingestd, not what an asynchronous replica may miss. (The promoted
        // replica has none of its own until the killed node rejoins.)
        if !replicated {
            return;
        }
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let wait = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
        let replicas = client.custom::<Value, Value>(wait, vec![Value::from(1), Value::from(5000)]).await;
        assert!(matches!(replicas, Ok(Value::Integer(1))), "WAIT: {replicas:?}");
    };
    let rows_reach = async |want: u64, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let rows = server.count(&org).await;
            if rows == want {
                return;
            }
            assert!(rows < want && Instant::now() < deadline, "{rows} of {want} rows");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    add(0, 100, true).await;
    rows_reach(100, Duration::from_secs(20)).await;

    let master = cluster.master_of(&key);
    cluster.kill(master);
    let killed = Instant::now();
    let promoted = tokio::task::block_in_place(|| cluster.wait_for_failover(&key, master, Duration::from_secs(30)));
    assert_ne!(promoted, master);
    // The test's own client follows the cluster too; retried only on
    // errors, each a refusal (the stream is on one master, which was down).
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(&client, "XLEN", &key, &[]).await.is_err() {
        assert!(Instant::now() < deadline, "the cluster client did not follow the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    add(100, 200, false).await;
    rows_reach(200, Duration::from_secs(20)).await;
    let resumed = killed.elapsed();

    // The killed node rejoins as a replica; the source stays connected.
    tokio::task::block_in_place(|| cluster.restart(master));
    let mut c = server.client().await;
    await_ready(&mut c, "redis source", |s, b| s == 200 && b["components"]["redis"]["status"] == "up").await;
    server.stop().await;
    let Ok(Value::Array(summary)) = call(&client, "XPENDING", &key, &[&group]).await else { panic!("XPENDING") };
    assert_eq!(summary.first(), Some(&Value::Integer(0)), "nothing left pending");
    let Ok(Value::Integer(len)) = call(&client, "XLEN", &key, &[]).await else { panic!("XLEN") };
    assert_eq!(len, 200, "every entry on the promoted master");
    eprintln!("node {master} killed; node {promoted} took over; all 200 stored {resumed:?} after the kill");
}
