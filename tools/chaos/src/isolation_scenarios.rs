//! Scenarios 10 and 11 of the `ingest-chaos` binary (issue 15): one bad
//! input never hurts another, and a large stream batch is not starved.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use fred::prelude::{ClientLike as _, Config as FredConfig};
use fred::types::Value;
use ingest_chaos::load::post_one;
use ingest_chaos::procs::free_port;
use ingest_chaos::{Ingestd, Ledger, Load, Postgres, Producers, ledger};
use serde_json::json;
use testkit::nats::ThrowawayNats;
use testkit::redis::ThrowawayRedis;
use uuid::Uuid;

use crate::{Args, Row, metrics_text, sqlite_url};

/// The organization of every poison record: none of its rows may exist.
const POISON_ORG: &str = "org-poison";

/// One poison record of kind `n % 4`: a timestamp whose UTC form is past
/// year 9999 (it made the decoder panic), U+0000 in `provider` and in
/// `metadata` (PostgreSQL refused them inside a shared commit), and a model
/// the database refuses (the scenario's CHECK constraint: valid for the
/// model, refused by the database).
fn poison(n: u64) -> serde_json::Value {
    let mut r = testkit::record_json(POISON_ORG, n);
    match n % 4 {
        0 => r["timestamp"] = json!("9999-12-31T23:59:59-01:00"),
        1 => r["provider"] = json!("open\u{0}ai"),
        2 => r["metadata"] = json!({ "note": "a\u{0}b" }),
        _ => r["model"]["name"] = json!("poison"),
    }
    r
}

/// What the poison trickle sent and saw.
#[derive(Debug, Default)]
struct Trickle {
    http: u64,
    /// HTTP answers that were not the expected 422 (single) or 207 with the
    /// poison record, and only it, rejected (batch).
    http_wrong: Vec<String>,
    nats: u64,
    redis: u64,
}

/// 10: the normal load (HTTP writers, NATS and Redis producers) runs while a
/// steady trickle of poison records goes through all three, alone and
/// beside a good record in a batch. Every poison record must be accounted
/// for — HTTP refuses it (422, or 207 naming it), a stream dead-letters its
/// message — none is ever stored, nothing acknowledged is lost or stored
/// twice, and the normal load never sees anything but 200.
pub async fn poison_trickle(args: &Args, dir: &Path) -> Result<Row> {
    let secs = if args.quick { 6 } else { 20 };
    let (subject, key) = ("chaos.usage", "chaos:usage");
    let pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let nats = tokio::task::spawn_blocking(ThrowawayNats::start).await?;
    let redis = tokio::task::spawn_blocking(ThrowawayRedis::start).await?;
    let url = pg.url();
    let env = vec![
        ("DATABASE_URL", url.clone()),
        ("NATS_URL", nats.url()),
        ("INGESTD_NATS__SUBJECT", subject.to_owned()),
        ("INGESTD_NATS__STREAM", "CHAOS".to_owned()),
        ("INGESTD_NATS__CONSUMER", "chaos".to_owned()),
        ("INGESTD_NATS__FETCH_BATCH", "200".to_owned()),
        ("INGESTD_NATS__IDLE_WAIT_MS", "100".to_owned()),
        ("REDIS_URL", redis.url()),
        ("INGESTD_REDIS__CONSUMER__STREAM_KEY", key.to_owned()),
        ("INGESTD_REDIS__CONSUMER__GROUP", "chaos".to_owned()),
        ("INGESTD_REDIS__CONSUMER__BLOCK_MS", "100".to_owned()),
        // Longer group commits: more good records share a commit with a poison one.
        ("INGESTD_WRITER__LINGER_MS", "5".to_owned()),
    ];
    let ingestd = Ingestd::start(&args.ingestd, free_port()?, &env, &dir.join("ingestd.log"))?;
    let store = storage::Store::connect(&storage::DatabaseConfig { url: url.clone(), ..Default::default() }).await?;
    testkit::refuse_model(&store, "poison").await;
    await_ready(ingestd.addr).await?;

    let ledger = Arc::new(Ledger::default());
    let load = Load::start(ingestd.addr, 8, ledger.clone(), Duration::from_millis(1));
    let nats_load = Producers::nats(&nats.url(), subject, "org-nats", 2, ledger.clone(), Duration::from_millis(2));
    let redis_load = Producers::redis(&redis.url(), key, "org-redis", 2, ledger.clone(), Duration::from_millis(2));
    let stop = Arc::new(AtomicBool::new(false));
    let trickle =
        tokio::spawn(trickle(ingestd.addr, nats.url(), redis.url(), subject, key, ledger.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = trickle.await??;
    let report = load.stop().await;
    let (nats_produced, redis_produced) = (nats_load.stop().await, redis_load.stop().await);
    let verdict = ledger.verify_settled(&url, Duration::from_secs(45), Duration::from_secs(3)).await?;

    // Every poison message reaches the dead letters, exactly once each.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut dead_nats, mut dead_redis);
    loop {
        dead_nats = store.count_dead_letters(Some(model_source("nats"))).await?;
        dead_redis = store.count_dead_letters(Some(model_source("redis"))).await?;
        if (dead_nats, dead_redis) == (sent.nats, sent.redis) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored_poison = ledger::rows_of(&url, POISON_ORG).await?;
    let restarts = metrics_text(ingestd.addr)
        .await
        .map(|m| {
            // Registered at 0 for each source: the values count, not the lines.
            m.lines()
                .filter(|l| l.starts_with("ingestd_source_restarts_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    drop(ingestd);
    let statuses = report.by_status();
    let not_ok: usize = statuses.iter().filter(|(c, _)| **c != 200).map(|(_, n)| n).sum();

    let mut failures = Vec::new();
    if verdict.acknowledged == 0 || sent.http == 0 || sent.nats == 0 || sent.redis == 0 {
        failures.push(format!("nothing to judge: {} acknowledged, poison sent {sent:?}", verdict.acknowledged));
    }
    if !sent.http_wrong.is_empty() {
        failures.push(format!(
            "{} poison requests answered wrongly, first: {}",
            sent.http_wrong.len(),
            sent.http_wrong[0]
        ));
    }
    if stored_poison > 0 {
        failures.push(format!("{stored_poison} poison records stored"));
    }
    if (dead_nats, dead_redis) != (sent.nats, sent.redis) {
        failures.push(format!(
            "dead letters nats {dead_nats} / redis {dead_redis}, poison messages sent {} / {}",
            sent.nats, sent.redis
        ));
    }
    if not_ok > 0 {
        failures.push(format!("the normal load saw {not_ok} answers other than 200: {statuses:?}"));
    }
    if restarts > 0.0 {
        failures.push("a stream source stopped and was restarted".to_owned());
    }
    Ok(Row {
        scenario: "10 poison trickle (HTTP, NATS, Redis)",
        verdict,
        figures: format!(
            "{secs} s on PostgreSQL; poison records sent: {} over HTTP (all refused as expected: {}), {} NATS and {} Redis messages → {dead_nats} / {dead_redis} dead letters; 0 stored: {}; normal load {statuses:?}, {} + {} stream records produced",
            sent.http,
            sent.http_wrong.is_empty(),
            sent.nats,
            sent.redis,
            stored_poison == 0,
            nats_produced.acked,
            redis_produced.acked
        ),
        failures,
    })
}

fn model_source(name: &str) -> model::Source {
    match name {
        "nats" => model::Source::Nats,
        _ => model::Source::Redis,
    }
}

async fn await_ready(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = testkit::http::Client::connect(addr).await
            && c.get("/health/ready").await.status == 200
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "ingestd never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a poison record every 20 ms, rotating over the four kinds, the three
/// ways in, and alone / beside a good record in a batch.
async fn trickle(
    addr: SocketAddr,
    nats_url: String,
    redis_url: String,
    subject: &str,
    key: &str,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> Result<Trickle> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url.as_str()).await?);
    let redis = fred::clients::Client::new(FredConfig::from_url(&redis_url)?, None, None, None);
    redis.init().await.context("connect to redis")?;
    let mut http = testkit::http::Client::connect(addr).await?;
    let mut sent = Trickle::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let bad = poison(n);
        // Alone, or after a good record whose fate the ledger follows.
        let good = (n / 3 % 2 == 1).then(|| ledger::record("org-trickle", n, n % 4 < 2).0);
        if let Some(good) = &good {
            ledger.attempt(&[ledger::marker_of(good).context("id")?]);
        }
        let message = match &good {
            Some(good) => json!({ "records": [good, bad] }),
            None => bad.clone(),
        };
        match n % 3 {
            0 => {
                sent.http += 1;
                let path = if good.is_some() { "/v1/usage/batch" } else { "/v1/usage" };
                let reply = http.post_json(path, &message).await;
                let body = reply.json();
                let as_expected = match &good {
                    None => reply.status == 422,
                    Some(_) => {
                        reply.status == 207
                            && body["accepted"] == 1
                            && body["rejected"] == 1
                            && body["errors"][0]["index"] == 1
                    }
                };
                if as_expected {
                    if let Some(good) = &good {
                        ledger.ack(&[ledger::marker_of(good).context("id")?]);
                    }
                } else {
                    sent.http_wrong.push(format!("{} {body} for {message}", reply.status));
                }
            }
            1 => {
                js.publish(subject.to_owned(), message.to_string().into()).await?.await?;
                sent.nats += 1;
                if let Some(good) = &good {
                    ledger.ack(&[ledger::marker_of(good).context("id")?]);
                }
            }
            _ => {
                let args: Vec<Value> = vec![key.into(), "*".into(), "payload".into(), message.to_string().into()];
                redis.custom::<Value, Value>(fred::cmd!("XADD"), args).await?;
                sent.redis += 1;
                if let Some(good) = &good {
                    ledger.ack(&[ledger::marker_of(good).context("id")?]);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sent)
}

/// 11: HTTP sends single records open loop at 80 % of the capacity measured
/// just before, while one Redis entry carrying 5,000 records — more than
/// the writer queue holds (`writer.queue_capacity = 2000` here) — arrives.
/// It must be committed within 2 s: a stream submission waits for room in
/// FIFO order instead of failing and retrying behind the HTTP traffic.
pub async fn large_stream_batch(args: &Args, dir: &Path) -> Result<Row> {
    let secs = if args.quick { 3 } else { 6 };
    let key = "chaos:big";
    let redis = tokio::task::spawn_blocking(ThrowawayRedis::start).await?;
    let (url, mut env) = sqlite_url(dir);
    env.extend([
        ("REDIS_URL", redis.url()),
        ("INGESTD_REDIS__CONSUMER__STREAM_KEY", key.to_owned()),
        ("INGESTD_REDIS__CONSUMER__BLOCK_MS", "100".to_owned()),
        ("INGESTD_WRITER__QUEUE_CAPACITY", "2000".to_owned()),
        ("INGESTD_SERVER__MAX_CONCURRENT_REQUESTS", "256".to_owned()),
    ]);
    let ingestd = Ingestd::start(&args.ingestd, free_port()?, &env, &dir.join("ingestd.log"))?;
    await_ready(ingestd.addr).await?;
    let ledger = Arc::new(Ledger::default());

    // Capacity for single records, closed loop.
    let capacity =
        single_records(ingestd.addr, ledger.clone(), None, Duration::from_secs(secs)).await?.ok as f64 / secs as f64;
    // 80 % of it, open loop, with the big entry arriving after a second.
    let rate = capacity * 0.8;
    let steady = tokio::spawn(single_records(ingestd.addr, ledger.clone(), Some(rate), Duration::from_secs(secs + 3)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Without ids: the source derives them from the entry's id and the index.
    let records: Vec<serde_json::Value> = (0..5000).map(|i| ledger::record("org-big", i, false).0).collect();
    let ids: Vec<Uuid> = records.iter().filter_map(ledger::marker_of).collect();
    ledger.attempt(&ids);
    let redis_client = fred::clients::Client::new(FredConfig::from_url(&redis.url())?, None, None, None);
    redis_client.init().await?;
    let payload = json!({ "records": records }).to_string();
    let args_: Vec<Value> = vec![key.into(), "*".into(), "payload".into(), payload.into()];
    redis_client.custom::<Value, Value>(fred::cmd!("XADD"), args_).await?;
    ledger.ack(&ids);
    let added = Instant::now();
    let committed = loop {
        if ledger::rows_of(&url, "org-big").await? == 5000 {
            break Some(added.elapsed());
        }
        if added.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let steady = steady.await??;
    drop(ingestd);
    let verdict = ledger.verify(&url).await?;
    let mut failures = Vec::new();
    match committed {
        Some(t) if t <= Duration::from_secs(2) => {}
        other => failures.push(format!("the 5,000-record entry was committed after {other:?} (limit 2 s)")),
    }
    if steady.ok == 0 {
        failures.push("the steady HTTP load got nothing through".to_owned());
    }
    Ok(Row {
        scenario: "11 5,000-record stream batch vs HTTP at 80 %",
        verdict,
        figures: format!(
            "capacity {capacity:.0} single records/s; steady {rate:.0}/s open loop: {} × 200, {} × 503, {} other; the entry's 5,000 records committed {:.2} s after XADD (queue 2,000)",
            steady.ok,
            steady.shed,
            steady.other,
            committed.map_or(f64::NAN, |d| d.as_secs_f64())
        ),
        failures,
    })
}

#[derive(Debug, Default)]
struct Singles {
    ok: u64,
    shed: u64,
    other: u64,
}

/// Single records for `length`: closed loop on 32 connections when `rate`
/// is `None`, else open loop at `rate` per second (each request on its own
/// task, at most 2048 outstanding).
async fn single_records(addr: SocketAddr, ledger: Arc<Ledger>, rate: Option<f64>, length: Duration) -> Result<Singles> {
    let send = move |ledger: Arc<Ledger>, n: u64| async move { post_one(addr, &ledger, "org-steady", n).await };
    let start = Instant::now();
    let mut tasks = Vec::new();
    match rate {
        None => {
            for w in 0..32u64 {
                let ledger = ledger.clone();
                tasks.push(tokio::spawn(async move {
                    let mut codes = Vec::new();
                    let mut n = w * 1_000_000;
                    while start.elapsed() < length {
                        n += 1;
                        codes.push(send(ledger.clone(), n).await);
                    }
                    codes
                }));
            }
        }
        Some(rate) => {
            let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
            let permits = Arc::new(tokio::sync::Semaphore::new(2048));
            let mut next = start;
            let mut n = 500_000_000u64;
            while start.elapsed() < length {
                next += gap;
                tokio::time::sleep_until(next.into()).await;
                let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                n += 1;
                let ledger = ledger.clone();
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    vec![send(ledger, n).await]
                }));
            }
        }
    }
    let mut out = Singles::default();
    for t in tasks {
        for code in t.await.unwrap_or_default() {
            match code {
                200 => out.ok += 1,
                503 => out.shed += 1,
                _ => out.other += 1,
            }
        }
    }
    Ok(out)
}
