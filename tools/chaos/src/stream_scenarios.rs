//! Scenarios 4, 5, 9 and 12 of the `ingest-chaos` binary: the stream sources and
//! several processes under faults. A stream record counts as acknowledged
//! when the broker accepted it; from then on ingestd owes it to the database.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use fred::prelude::{ClientLike as _, Config as FredConfig};
use fred::types::Value;
use ingest_chaos::procs::free_port;
use ingest_chaos::{Ingestd, Ledger, Load, Postgres, Producers, Redis, ledger};
use testkit::nats::{NatsCluster, ThrowawayNats};
use testkit::redis::ThrowawayRedis;

use crate::{Args, Row, jitter, metrics_text, sqlite_url};

/// How long the stream sources get to drain after the producers stop.
pub(crate) const DRAIN: Duration = Duration::from_secs(45);

/// A throwaway server killed (SIGKILL), kept down for 3 s and started again
/// with its data; how long it was down.
async fn outage<S: Send + 'static>(server: S, kill: fn(&mut S), restart: fn(&mut S)) -> Result<(S, Duration)> {
    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        kill(&mut server);
        server
    })
    .await?;
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server = tokio::task::spawn_blocking(move || {
        restart(&mut server);
        server
    })
    .await?;
    Ok((server, down.elapsed()))
}

/// The sum of every series of `name` whose labels contain all of `labels`.
pub(crate) async fn metric_sum(addr: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let Some(text) = metrics_text(addr).await else { return 0.0 };
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|needle| l.contains(needle)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 4: ingestd SIGKILLed again and again while it commits and acks (some
/// kills land between the commit and the ack: those messages come again and
/// must not be stored twice), then NATS killed and restarted under publish load.
pub async fn nats_faults(args: &Args, dir: &Path) -> Result<Row> {
    let kills = if args.quick { 4 } else { 12 };
    let nats = tokio::task::spawn_blocking(ThrowawayNats::start).await?;
    let (url, mut env) = sqlite_url(dir);
    env.extend([
        ("NATS_URL", nats.url()),
        ("INGESTD_NATS__SUBJECT", "chaos.usage".to_owned()),
        ("INGESTD_NATS__STREAM", "CHAOS".to_owned()),
        ("INGESTD_NATS__CONSUMER", "chaos".to_owned()),
        ("INGESTD_NATS__ACK_WAIT_SECS", "3".to_owned()),
        ("INGESTD_NATS__FETCH_BATCH", "200".to_owned()),
        ("INGESTD_NATS__IDLE_WAIT_MS", "100".to_owned()),
    ]);
    let (port, log) = (free_port()?, dir.join("ingestd.log"));
    let mut ingestd = Ingestd::start(&args.ingestd, port, &env, &log)?;
    let ledger = Arc::new(Ledger::default());
    let producers = Producers::nats(&nats.url(), "chaos.usage", "org-nats", 4, ledger.clone(), Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // ingestd first: killed at random moments while messages flow, then left
    // running for longer than ack_wait so every delivery its kills left
    // unacknowledged has come again. The server's outage comes after, so
    // what it redelivers is not credited to the kills.
    let counters = async |addr| {
        let redelivered = metric_sum(addr, "ingestd_redeliveries_total", &["source=\"nats\""]).await;
        (redelivered, metric_sum(addr, "ingestd_records_total", &["source=\"nats\"", "duplicate"]).await)
    };
    // Each kill waits for the fault it is for: ingestd is frozen (SIGSTOP)
    // at random moments until it holds a message it committed and did not
    // acknowledge, and killed right then (at most 200 tries a kill; the
    // kills that caught one are counted). Left to chance, 4 kills of
    // `--quick` sometimes landed in no such window.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let (mut redelivered, mut duplicates, mut caught) = (0.0, 0.0, 0);
    for _ in 0..kills {
        tokio::time::sleep(jitter(300, 1200)).await;
        let (r, d) = counters(ingestd.addr).await;
        (redelivered, duplicates) = (redelivered + r, duplicates + d);
        for _ in 0..200 {
            ingestd.pause()?;
            // Acks already on their way land first.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if holds_committed_unacked(&js, &url).await? {
                caught += 1;
                break;
            }
            ingestd.resume()?;
            tokio::time::sleep(jitter(2, 30)).await;
        }
        ingestd.kill()?;
        ingestd = Ingestd::start(&args.ingestd, port, &env, &log)?;
    }
    drop(js);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (r, d) = counters(ingestd.addr).await;
    (redelivered, duplicates) = (redelivered + r, duplicates + d);

    // The server: killed (no clean shutdown), down 3 s, back with its store.
    let (nats, outage) = outage(nats, ThrowawayNats::kill, ThrowawayNats::restart).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let produced = producers.stop().await;
    // Settled past ack_wait (3 s): deliveries whose acks the outage lost come
    // again, and a duplicate would show only after them.
    let verdict = ledger.verify_settled(&url, DRAIN, Duration::from_secs(5)).await?;
    drop(ingestd);
    drop(nats);
    let mut failures = Vec::new();
    if verdict.acknowledged == 0 {
        failures.push("nothing was published".to_owned());
    }
    if caught == 0 {
        failures.push(format!("no kill of {kills} caught ingestd holding a committed, unacknowledged message"));
    } else if duplicates <= 0.0 {
        failures.push(
            "no record arrived again already stored after the kills: none landed between a commit and its ack"
                .to_owned(),
        );
    }
    Ok(Row {
        scenario: "4 ingestd killed mid-ack; NATS killed",
        verdict,
        figures: format!(
            "{kills} ingestd kills ({caught} while it held a committed, unacknowledged message), after which {redelivered:.0} messages were redelivered and {duplicates:.0} records arrived again already stored; then the server down {:.1} s; {} publishes retried",
            outage.as_secs_f64(),
            produced.errors
        ),
        failures,
    })
}

/// Whether the consumer `chaos` of stream `CHAOS` has delivered a message
/// that is committed and not acknowledged: every stored record came from a
/// delivered message, so more rows than acknowledged messages means one of
/// the unacknowledged ones is in the database. Asked while ingestd is
/// frozen, the answer holds until it is killed.
async fn holds_committed_unacked(js: &async_nats::jetstream::Context, url: &str) -> Result<bool> {
    let stream = js.get_stream("CHAOS").await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("chaos").await.map_err(|e| anyhow::anyhow!("get consumer chaos: {e}"))?;
    let info = consumer.info().await?;
    // A fresh stream, messages numbered from 1, delivered in order.
    let acked = info.delivered.stream_sequence.saturating_sub(info.num_ack_pending as u64);
    Ok(ledger::rows_of(url, "org-nats").await? > acked)
}

async fn redis_client(url: &str) -> Result<fred::clients::Client> {
    let client = fred::clients::Client::new(FredConfig::from_url(url)?, None, None, None);
    client.init().await.context("connect to redis")?;
    Ok(client)
}

/// Pending entries of `group` on `key`, per consumer name.
async fn pending(client: &fred::clients::Client, key: &str, group: &str) -> Result<Vec<(String, i64)>> {
    let reply: Value = client.custom(fred::cmd!("XPENDING"), vec![Value::from(key), Value::from(group)]).await?;
    let Value::Array(summary) = reply else { anyhow::bail!("XPENDING answered {reply:?}") };
    let consumers = match summary.get(3) {
        Some(Value::Array(consumers)) => consumers,
        Some(Value::Null) if summary.first() == Some(&Value::Integer(0)) => return Ok(Vec::new()),
        _ => anyhow::bail!("XPENDING answered {summary:?}"),
    };
    consumers
        .iter()
        .map(|c| {
            let Value::Array(pair) = c else { anyhow::bail!("XPENDING consumer entry {c:?}") };
            let name = pair.first().and_then(Value::as_string);
            let count = pair.get(1).and_then(Value::as_string).and_then(|n| n.parse().ok());
            match (name, count) {
                (Some(name), Some(count)) => Ok((name, count)),
                _ => anyhow::bail!("XPENDING consumer entry {pair:?}"),
            }
        })
        .collect()
}

/// 5: two consumers of one group; redis-server killed and restarted under
/// load (append-only file, fsync always), then consumer `a` killed for good:
/// consumer `b` must claim what `a` held.
pub async fn redis_faults(args: &Args, dir: &Path) -> Result<Row> {
    let (key, group) = ("chaos:usage", "chaos");
    let redis = tokio::task::spawn_blocking(ThrowawayRedis::start).await?;
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let env = |name: &str| {
        vec![
            ("DATABASE_URL", pg.url()),
            ("REDIS_URL", redis.url()),
            ("INGESTD_REDIS__CONSUMER__STREAM_KEY", key.to_owned()),
            ("INGESTD_REDIS__CONSUMER__GROUP", group.to_owned()),
            ("INGESTD_REDIS__CONSUMER__NAME", name.to_owned()),
            ("INGESTD_REDIS__CONSUMER__CLAIM_IDLE_SECS", "2".to_owned()),
            ("INGESTD_REDIS__CONSUMER__BLOCK_MS", "200".to_owned()),
            ("INGESTD_REDIS__CONSUMER__READ_BATCH", "200".to_owned()),
        ]
    };
    let a = Ingestd::start(&args.ingestd, free_port()?, &env("a"), &dir.join("a.log"))?;
    let b = Ingestd::start(&args.ingestd, free_port()?, &env("b"), &dir.join("b.log"))?;
    let ledger = Arc::new(Ledger::default());
    let producers = Producers::redis(&redis.url(), key, "org-redis", 4, ledger.clone(), Duration::from_micros(200));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (redis, outage) = outage(redis, ThrowawayRedis::kill, ThrowawayRedis::restart).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // `a` dies holding entries it read and never acknowledged. Not left to
    // chance: `a` is frozen (SIGSTOP) at random moments until it is caught
    // holding some — frozen, it can neither acknowledge them nor take more —
    // and killed right then. Between tries it runs on for a while.
    let client = redis_client(&redis.url()).await?;
    let held = async |client| -> Result<i64> {
        Ok(pending(client, key, group).await?.iter().find(|(c, _)| c == "a").map_or(0, |(_, n)| *n))
    };
    let mut tries = 0;
    loop {
        tries += 1;
        a.pause()?;
        if held(&client).await? > 0 || tries == 500 {
            break;
        }
        a.resume()?;
        tokio::time::sleep(jitter(5, 40)).await;
    }
    let claimed_before =
        metric_sum(b.addr, "ingestd_redeliveries_total", &["source=\"redis\"", "kind=\"claimed\""]).await;
    a.kill()?;
    let held_by_a = held(&client).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let produced = producers.stop().await;
    ledger.verify_drained(&pg.url(), DRAIN).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = pending(&client, key, group).await?;
    while left.iter().any(|(_, n)| *n > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = pending(&client, key, group).await?;
    }
    // The verdict once nothing is pending: entries `a` committed and never
    // acknowledged are stored again by `b` only when it claims them, and a
    // duplicate would show only then.
    let verdict = ledger.verify(&pg.url()).await?;
    let reclaimed = metric_sum(b.addr, "ingestd_redeliveries_total", &["source=\"redis\"", "kind=\"claimed\""]).await
        - claimed_before;
    drop(b);
    let mut failures = Vec::new();
    if verdict.acknowledged == 0 {
        failures.push("nothing was produced".to_owned());
    }
    if left.iter().any(|(_, n)| *n > 0) {
        failures.push(format!("entries still pending after the drain: {left:?}"));
    }
    if held_by_a == 0 {
        failures.push(format!("a held no unacknowledged entry when frozen {tries} times: the claim was not exercised"));
    } else if (reclaimed as i64) < held_by_a {
        failures.push(format!("a held {held_by_a} entries and b claimed {reclaimed:.0} after a's death"));
    }
    Ok(Row {
        scenario: "5 Redis restarted; consumer killed for good",
        verdict,
        figures: format!(
            "server down {:.1} s; {} XADDs retried; a frozen {tries}× until it held unacknowledged entries, killed holding {held_by_a}, b claimed {reclaimed:.0} after that; pending after the drain {left:?}",
            outage.as_secs_f64(),
            produced.errors
        ),
        failures,
    })
}

/// 9: three ingestd processes on one PostgreSQL, one Redis rate limiter and
/// one NATS durable consumer, all under load at once: the shared limit admits
/// exactly its capacity across the three, every NATS message and every HTTP
/// record is stored once.
pub async fn scale_out(args: &Args, dir: &Path) -> Result<Row> {
    const LIMITED: &str = "scaleorg";
    const CAPACITY: u64 = 200;
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let redis = tokio::task::spawn_blocking(Redis::start).await??;
    let nats = tokio::task::spawn_blocking(ThrowawayNats::start).await?;
    let env = vec![
        ("DATABASE_URL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("INGESTD_REDIS__CONSUMER__ENABLED", "false".to_owned()),
        ("INGESTD_RATE_LIMIT__ENABLED", "true".to_owned()),
        ("INGESTD_RATE_LIMIT__BACKEND", "redis".to_owned()),
        ("INGESTD_RATE_LIMIT__REDIS_TIMEOUT_MS", "1000".to_owned()),
        // A slow Redis answer shows as a 503, never as a local decision that
        // would make the shared count inexact.
        ("INGESTD_RATE_LIMIT__FAIL_MODE", "closed".to_owned()),
        ("INGESTD_RATE_LIMIT__DEFAULT__PER_MINUTE", "100000000".to_owned()),
        // One emission interval is 432 s: nothing refills during the run.
        ("INGESTD_RATE_LIMIT__ORGS__SCALEORG__MAX_REQUESTS", CAPACITY.to_string()),
        ("INGESTD_RATE_LIMIT__ORGS__SCALEORG__WINDOW_SECS", "86400".to_owned()),
        ("NATS_URL", nats.url()),
        ("INGESTD_NATS__SUBJECT", "scale.usage".to_owned()),
        ("INGESTD_NATS__STREAM", "SCALE".to_owned()),
        ("INGESTD_NATS__CONSUMER", "scale".to_owned()),
        ("INGESTD_NATS__FETCH_BATCH", "100".to_owned()),
        ("INGESTD_NATS__IDLE_WAIT_MS", "100".to_owned()),
    ];
    // All three at once, as replicas of one deployment start: they race to
    // migrate the empty database and to create the stream and the consumer.
    let starting: Vec<_> = (0..3)
        .map(|i| {
            let (bin, env, log) = (args.ingestd.clone(), env.clone(), dir.join(format!("ingestd-{i}.log")));
            tokio::task::spawn_blocking(move || Ingestd::start(&bin, free_port()?, &env, &log))
        })
        .collect();
    let mut procs = Vec::new();
    for started in starting {
        procs.push(started.await??);
    }
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    let ledger = Arc::new(Ledger::default());
    let loads: Vec<Load> = addrs.iter().map(|a| Load::start(*a, 3, ledger.clone(), Duration::ZERO)).collect();
    let producers = Producers::nats(&nats.url(), "scale.usage", "org-scale-nats", 4, ledger.clone(), Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The limited organization: 3 × CAPACITY requests over all three processes at once.
    let attempts = 3 * CAPACITY;
    let limited_tasks: Vec<_> = (0..6u64)
        .map(|t| {
            let (addrs, ledger) = (addrs.clone(), ledger.clone());
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                let mut clients: Vec<Option<testkit::http::Client>> = addrs.iter().map(|_| None).collect();
                for i in 0..attempts / 6 {
                    let (record, marker) = ledger::record(LIMITED, t * 10_000 + i, true);
                    let id = Some(marker);
                    ledger.attempt(&id.into_iter().collect::<Vec<_>>());
                    let which = ((t + i) % 3) as usize;
                    let headers = [("content-type", "application/json"), ("x-organization-id", LIMITED)];
                    let send = async {
                        if clients[which].is_none() {
                            clients[which] = testkit::http::Client::connect(addrs[which]).await.ok();
                        }
                        let c = clients[which].as_mut()?;
                        c.send("POST", "/v1/usage", &headers, record.to_string().into_bytes()).await.ok()
                    };
                    // A request lost to a broken connection is one the limit never saw (status 0, reported).
                    let status = match tokio::time::timeout(Duration::from_secs(10), send).await {
                        Ok(Some(reply)) => reply.status.as_u16(),
                        _ => {
                            clients[which] = None;
                            0
                        }
                    };
                    if status == 200 {
                        ledger.ack(&id.into_iter().collect::<Vec<_>>());
                    }
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut limited = std::collections::BTreeMap::<u16, u64>::new();
    for task in limited_tasks {
        for (status, n) in task.await? {
            *limited.entry(status).or_default() += n;
        }
    }
    tokio::time::sleep(Duration::from_secs(if args.quick { 3 } else { 15 })).await;
    let mut http_statuses = std::collections::BTreeMap::<u16, usize>::new();
    for load in loads {
        for (status, n) in load.stop().await.by_status() {
            *http_statuses.entry(status).or_default() += n;
        }
    }
    let produced = producers.stop().await;
    let verdict = ledger.verify_settled(&pg.url(), DRAIN, Duration::from_secs(3)).await?;
    let mut per_process = Vec::new();
    for a in &addrs {
        per_process.push(metric_sum(*a, "ingestd_nats_messages_total", &["stored"]).await as u64);
    }
    let limited_rows = ledger::rows_of(&pg.url(), LIMITED).await?;
    drop(procs);
    let admitted = limited.get(&200).copied().unwrap_or(0);
    let mut failures = Vec::new();
    if admitted != CAPACITY || limited.get(&429).copied().unwrap_or(0) != attempts - CAPACITY {
        failures.push(format!("the shared limit of {CAPACITY} answered {limited:?} to {attempts} requests"));
    }
    if limited_rows != admitted {
        failures.push(format!("{limited_rows} rows of {LIMITED} stored for {admitted} admitted requests"));
    }
    if http_statuses.keys().any(|s| *s != 200) {
        failures.push(format!("unlimited HTTP load answered {http_statuses:?}"));
    }
    if per_process.iter().filter(|n| **n > 0).count() < 2 {
        failures.push(format!("NATS messages stored per process {per_process:?}: the consumer was not shared"));
    }
    if produced.acked == 0 {
        failures.push("nothing was published".to_owned());
    }
    Ok(Row {
        scenario: "9 three processes, one PG/Redis/NATS",
        verdict,
        figures: format!(
            "limit {CAPACITY} shared: {attempts} requests → {limited:?}, {limited_rows} rows; {} NATS messages, stored per process {per_process:?}; HTTP {http_statuses:?}",
            produced.acked
        ),
        failures,
    })
}

/// After a broker node was killed at `killed`, with `acked_at_kill`
/// records acknowledged once it was dead and `workers` producers each with
/// at most one record in flight: beyond `acked_at_kill + workers`, a record
/// was written after the kill. Returns when the first such record was
/// acknowledged (the broker taking writes again; the time of return if
/// never) and when the first was stored (`None`: not within 60 s of the kill).
pub(crate) async fn await_resumed(
    ledger: &Ledger,
    database_url: &str,
    org: &str,
    acked_at_kill: u64,
    workers: u64,
    killed: Instant,
) -> Result<(Duration, Option<Duration>)> {
    let mut written_again = None;
    let resumed = loop {
        if written_again.is_none() && ledger.acknowledged() as u64 > acked_at_kill + workers {
            written_again = Some(killed.elapsed());
        }
        if ledger::rows_of(database_url, org).await? > acked_at_kill + workers {
            break Some(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok((written_again.unwrap_or(killed.elapsed()), resumed))
}

/// 12: a three-node JetStream cluster, the stream with 3 replicas, loses its
/// stream leader (SIGKILL) under publish and consume load: nothing
/// acknowledged is lost or stored twice, and ingestd (given all three URLs)
/// stores a record acknowledged after the kill within 10 s of the cluster
/// taking publishes again. The node comes back after 5 s and rejoins.
pub async fn nats_cluster_node_killed(args: &Args, dir: &Path) -> Result<Row> {
    const RESUME_LIMIT: Duration = Duration::from_secs(10);
    let mut cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3)).await?;
    let (url, mut env) = sqlite_url(dir);
    env.extend([
        ("NATS_URL", cluster.url()),
        ("INGESTD_NATS__SUBJECT", "cluster.usage".to_owned()),
        ("INGESTD_NATS__STREAM", "CLUSTER".to_owned()),
        ("INGESTD_NATS__STREAM_REPLICAS", "3".to_owned()),
        ("INGESTD_NATS__CONSUMER", "cluster".to_owned()),
        ("INGESTD_NATS__ACK_WAIT_SECS", "3".to_owned()),
        ("INGESTD_NATS__FETCH_BATCH", "200".to_owned()),
        ("INGESTD_NATS__IDLE_WAIT_MS", "100".to_owned()),
    ]);
    let (port, log) = (free_port()?, dir.join("ingestd.log"));
    let ingestd = Ingestd::start(&args.ingestd, port, &env, &log)?;
    let org = "org-cluster";
    let ledger = Arc::new(Ledger::default());
    const WORKERS: u64 = 4;
    let producers =
        Producers::nats(&cluster.url(), "cluster.usage", org, WORKERS as usize, ledger.clone(), Duration::ZERO);

    // Load flows once the cluster has a meta leader and ingestd its stream.
    let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(cluster.urls()).await?;
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    let leader = loop {
        let info = match js.get_stream("CLUSTER").await {
            Ok(mut stream) => stream.info().await.ok().cloned(),
            Err(_) => None,
        };
        if let Some(info) = info
            && info.state.messages > 0
            && let Some(leader) = info.cluster.and_then(|c| c.leader)
        {
            anyhow::ensure!(info.config.num_replicas == 3, "stream created with {} replicas", info.config.num_replicas);
            break leader;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "no load reached the stream within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(if args.quick { 2 } else { 5 })).await;
    let node: usize = leader.rsplit("-n").next().and_then(|n| n.parse().ok()).context("the leader's node")?;
    cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(node);
        cluster
    })
    .await?;
    let killed = Instant::now();
    // Read once the leader is dead, not before: the source may keep pace
    // with the publishers, and rows would overtake a count read earlier.
    let acked_at_kill = ledger.acknowledged() as u64;
    // JetStream's elections (4–9 s in nats-server 2.9) bound when publishes
    // are acknowledged again, not ingestd.
    let (published_again, resumed) = await_resumed(&ledger, &url, org, acked_at_kill, WORKERS, killed).await?;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed())).await;
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(node);
        cluster
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(if args.quick { 3 } else { 10 })).await;
    let produced = producers.stop().await;
    let verdict = ledger.verify_settled(&url, DRAIN, Duration::from_secs(5)).await?;
    drop(ingestd);
    drop(cluster);
    let mut failures = Vec::new();
    if verdict.acknowledged == 0 {
        failures.push("nothing was published".to_owned());
    }
    match resumed {
        Some(after) if after.saturating_sub(published_again) <= RESUME_LIMIT => {}
        Some(after) => failures.push(format!(
            "consumption resumed {:.1} s after the kill, {:.1} s after the cluster took publishes again",
            after.as_secs_f64(),
            after.saturating_sub(published_again).as_secs_f64()
        )),
        None => failures.push("nothing acknowledged after the kill was stored within 60 s".to_owned()),
    }
    Ok(Row {
        scenario: "12 NATS cluster: stream leader killed",
        verdict,
        figures: format!(
            "3 nodes, stream R3; leader n{node} SIGKILLed with {acked_at_kill} records acknowledged, back after 5 s; publishes acknowledged again {:.1} s after the kill; a record acknowledged after the kill stored {}; {} publishes retried",
            published_again.as_secs_f64(),
            resumed.map_or("never".to_owned(), |d| format!("{:.1} s after it", d.as_secs_f64())),
            produced.errors
        ),
        failures,
    })
}
