//! Scenarios 13 and 14 of the `ingest-chaos` binary: a Redis Cluster (three
//! masters, each with a replica, node timeout 1 s) loses a master under
//! load, SIGKILLed; its replica takes over. Scenario 12 (the NATS cluster)
//! lives in `stream_scenarios.rs`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use fred::prelude::{ClientLike as _, Config as FredConfig, ReconnectPolicy};
use fred::types::{ClusterHash, CustomCommand, Value};
use ingest_chaos::procs::free_port;
use ingest_chaos::{Ingestd, Ledger, Load, Producers, ledger};
use testkit::redis::RedisCluster;
use uuid::Uuid;

use crate::stream_scenarios::{DRAIN, await_resumed};
use crate::{Args, Row, limiter_env, metric, sqlite_url};

/// Starts a cluster of 3 masters with a replica each, off the runtime.
async fn cluster() -> Result<RedisCluster> {
    Ok(tokio::task::spawn_blocking(|| RedisCluster::start(3, 1)).await?)
}

/// Kills (SIGKILL) the master of `key`'s slot: (the cluster, the node, when).
async fn kill_master_of(cluster: RedisCluster, key: &str) -> Result<(RedisCluster, usize, Instant)> {
    let key = key.to_owned();
    let (cluster, master) = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let master = cluster.master_of(&key);
        cluster.kill(master);
        (cluster, master)
    })
    .await?;
    Ok((cluster, master, Instant::now()))
}

/// Waits (30 s at most) until a replica has taken over `key`'s slot from
/// `master`: (the cluster, the new master, when it was seen).
fn failover(
    cluster: RedisCluster,
    key: &str,
    master: usize,
) -> tokio::task::JoinHandle<(RedisCluster, usize, Instant)> {
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let promoted = cluster.wait_for_failover(&key, master, Duration::from_secs(30));
        (cluster, promoted, Instant::now())
    })
}

/// The markers of every entry of the stream `key`, read from its master now.
async fn markers_in_stream(url: &str, key: &str) -> Result<HashSet<Uuid>> {
    let client =
        fred::clients::Client::new(FredConfig::from_url(url)?, None, None, Some(ReconnectPolicy::new_constant(0, 100)));
    client.init().await.context("connect to the Redis Cluster")?;
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let mut markers = HashSet::new();
    let mut from = "-".to_owned();
    loop {
        let args: Vec<Value> = vec![key.into(), from.as_str().into(), "+".into(), "COUNT".into(), 5_000.into()];
        let command = CustomCommand::new_static("XRANGE", ClusterHash::Custom(slot), false);
        let Value::Array(entries) = client.custom::<Value, Value>(command, args).await? else {
            anyhow::bail!("XRANGE answered something else than an array")
        };
        let Some(Value::Array(last)) = entries.last() else { break };
        let last_id = last.first().and_then(Value::as_string).context("an entry id")?;
        for entry in &entries {
            let Value::Array(parts) = entry else { continue };
            let Some(Value::Array(fields)) = parts.get(1) else { continue };
            for pair in fields.chunks(2) {
                if pair[0].as_str().as_deref() == Some("payload")
                    && let Some(payload) = pair.get(1).and_then(Value::as_string)
                    && let Ok(record) = serde_json::from_str::<serde_json::Value>(&payload)
                    && let Some(marker) = ledger::marker_of(&record)
                {
                    markers.insert(marker);
                }
            }
        }
        if entries.len() < 5_000 {
            break;
        }
        from = format!("({last_id}");
    }
    let _ = client.quit().await;
    Ok(markers)
}

/// 13: the Redis Streams source on a Redis Cluster; the master owning the
/// stream's slot is SIGKILLed under 4 producers. After the failover nothing
/// acknowledged by the cluster and still in the stream is missing from the
/// database, nothing is stored twice, and records are stored again within
/// 10 s of the cluster taking writes again. Entries the killed master
/// acknowledged but had not replicated are the broker's loss (Redis
/// replication is asynchronous): reported separately, never hidden, and
/// not counted as ingestd's.
pub async fn redis_cluster_stream_master_killed(args: &Args, dir: &Path) -> Result<Row> {
    const RESUME_LIMIT: Duration = Duration::from_secs(10);
    const WORKERS: u64 = 4;
    let (key, group, org) = ("{chaos}:usage", "chaos", "org-redis-cluster");
    let cluster = cluster().await?;
    let url = cluster.url();
    let (db, mut env) = sqlite_url(dir);
    env.extend([
        ("REDIS_URL", url.clone()),
        ("INGESTD_REDIS__CONSUMER__STREAM_KEY", key.to_owned()),
        ("INGESTD_REDIS__CONSUMER__GROUP", group.to_owned()),
        ("INGESTD_REDIS__CONSUMER__CLAIM_IDLE_SECS", "2".to_owned()),
        ("INGESTD_REDIS__CONSUMER__BLOCK_MS", "200".to_owned()),
        ("INGESTD_REDIS__CONSUMER__READ_BATCH", "200".to_owned()),
    ]);
    let ingestd = Ingestd::start(&args.ingestd, free_port()?, &env, &dir.join("ingestd.log"))?;
    let ledger = Arc::new(Ledger::default());
    let producers = Producers::redis(&url, key, org, WORKERS as usize, ledger.clone(), Duration::ZERO);
    let started = Instant::now();
    while ledger::rows_of(&db, org).await? == 0 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "nothing was stored within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(if args.quick { 2 } else { 5 })).await;

    let (cluster, master, killed) = kill_master_of(cluster, key).await?;
    // Read once the master is dead (not before: the source keeps pace with
    // the producers, so rows overtake a count read earlier): nothing
    // acknowledged after this was written before the kill, bar the replies
    // in flight, at most one per producer.
    let acked_before = ledger.acknowledged_markers();
    let acked_at_kill = acked_before.len() as u64;
    let waiting = failover(cluster, key, master);
    let (written_again, resumed) = await_resumed(&ledger, &db, org, acked_at_kill, WORKERS, killed).await?;
    let (mut cluster, promoted, promoted_at) = waiting.await?;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed())).await;
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(master);
        cluster
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(if args.quick { 3 } else { 10 })).await;
    let produced = producers.stop().await;
    let mut verdict = ledger.verify_settled(&db, DRAIN, Duration::from_secs(5)).await?;

    // Lost: by the broker (acknowledged, not in the stream after the
    // failover) or by ingestd (in the stream, not stored). The stream is
    // read back whatever was lost, and must hold every record written after
    // the kill (bar replies in flight at it, one per producer): a read that
    // found less could pass ingestd's losses off as the broker's.
    let lost = ledger.lost(&db).await?;
    let in_stream = markers_in_stream(&url, key).await?;
    let by_broker = lost.iter().filter(|m| !in_stream.contains(m)).count();
    verdict.lost -= by_broker;
    let written_after = ledger.acknowledged_markers();
    let missing_after = written_after.iter().filter(|m| !acked_before.contains(m) && !in_stream.contains(m)).count();
    drop(ingestd);
    drop(cluster);
    let mut failures = Vec::new();
    if verdict.acknowledged == 0 {
        failures.push("nothing was produced".to_owned());
    }
    if in_stream.is_empty() || missing_after as u64 > WORKERS {
        failures.push(format!(
            "the stream read back holds {} records and lacks {missing_after} written after the kill: broker losses cannot be told apart",
            in_stream.len()
        ));
    }
    match resumed {
        Some(after) if after.saturating_sub(written_again) <= RESUME_LIMIT => {}
        Some(after) => failures.push(format!(
            "stored again {:.1} s after the kill, {:.1} s after the cluster took writes again",
            after.as_secs_f64(),
            after.saturating_sub(written_again).as_secs_f64()
        )),
        None => failures.push("nothing acknowledged after the kill was stored within 60 s".to_owned()),
    }
    Ok(Row {
        scenario: "13 Redis Cluster: stream's master killed",
        verdict,
        figures: format!(
            "3 masters + 3 replicas; master n{master} SIGKILLed with {acked_at_kill} entries acknowledged, n{promoted} promoted {:.1} s later, n{master} back after 5 s as a replica; writes acknowledged again {:.1} s after the kill; a record written after the kill stored {}; lost by the broker (acknowledged, not replicated before the failover): {by_broker} ({} records read back from the stream); {} XADDs retried",
            (promoted_at - killed).as_secs_f64(),
            written_again.as_secs_f64(),
            resumed.map_or("never".to_owned(), |d| format!("{:.1} s after it", d.as_secs_f64())),
            in_stream.len(),
            produced.errors
        ),
        failures,
    })
}

/// 14: the shared rate limiter on a Redis Cluster; the master holding the
/// organization's key is SIGKILLed under load. Only 200s (the budget is far
/// above the load): the limiter decides locally until the failover (the
/// fallback gauge says so; fred waits for every master, so this holds for
/// any master's death, docs/deploy.md) and is back on the cluster within
/// 10 s of the replica's promotion.
pub async fn redis_cluster_limiter_master_killed(args: &Args, dir: &Path) -> Result<Row> {
    const BACK_LIMIT: Duration = Duration::from_secs(10);
    let cluster = cluster().await?;
    let (db, env) = limiter_env(dir, cluster.url());
    let ingestd = Ingestd::start(&args.ingestd, free_port()?, &env, &dir.join("ingestd.log"))?;
    let addr = ingestd.addr;
    let fallback = "ingestd_rate_limit_fallback_active{backend=\"redis\"}";
    let ledger = Arc::new(Ledger::default());
    // `Load` sends as one organization; its key is where the limiter's state is.
    let load = Load::start(addr, 8, ledger.clone(), Duration::from_millis(2));
    tokio::time::sleep(Duration::from_secs(if args.quick { 2 } else { 5 })).await;
    let before = metric(addr, fallback).await;
    let key = format!("ratelimit:{{{}}}", ingest_chaos::load::ORGANIZATION);
    let (cluster, master, killed) = kill_master_of(cluster, &key).await?;
    let waiting = failover(cluster, &key, master);
    // Sampled from the kill on: falling back (1) until the failover, then
    // back on the cluster (0) once the replica serves the slot.
    let (mut during, mut back_at) = (false, None);
    while killed.elapsed() < Duration::from_secs(45) {
        match metric(addr, fallback).await {
            Some(1.0) => during = true,
            Some(0.0) if during => {
                back_at = Some(Instant::now());
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut cluster, promoted, promoted_at) = waiting.await?;
    let back = back_at.map(|at| at.saturating_duration_since(promoted_at));
    let fallbacks = metric(addr, "ingestd_rate_limit_fallbacks_total").await;
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(master);
        cluster
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;
    drop(ingestd);
    drop(cluster);
    let statuses = report.by_status();
    let others: usize = statuses.iter().filter(|(c, _)| **c != 200).map(|(_, n)| n).sum();
    let verdict = ledger.verify(&db).await?;
    let mut failures = Vec::new();
    if others > 0 {
        failures.push(format!("statuses {statuses:?}"));
    }
    if before != Some(0.0) || !during {
        failures.push(format!("fallback gauge before the kill {before:?}; seen at 1 during the failover: {during}"));
    }
    match back {
        Some(after) if after <= BACK_LIMIT => {}
        Some(after) => failures.push(format!("back on the cluster {:.1} s after the promotion", after.as_secs_f64())),
        None => failures.push("never back on the cluster".to_owned()),
    }
    Ok(Row {
        scenario: "14 Redis Cluster: limiter's master killed",
        verdict,
        figures: format!(
            "3 masters + 3 replicas; master n{master} SIGKILLed, n{promoted} promoted {:.1} s later; statuses {statuses:?}; fallbacks counted {fallbacks:?}; back on the cluster {} after the promotion was seen",
            (promoted_at - killed).as_secs_f64(),
            back.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        ),
        failures,
    })
}
