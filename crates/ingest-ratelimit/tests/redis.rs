//! Redis-only behaviour: shared budgets, script/decide agreement, outages, script cache loss, server time.
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Rng, ThrowawayRedis};
use fred::prelude::{KeysInterface, LuaInterface};
use ingest_ratelimit::redis::{FailMode, GCRA_LUA, RedisLimiterConfig};
use ingest_ratelimit::{
    Clock, Error, MAX_BUCKET_MICROS, ManualClock, MemoryConfig, MemoryLimiter, Policy, PolicyRegistry, RateLimiter,
    decide,
};

fn registry(policy: Policy) -> Arc<PolicyRegistry> {
    Arc::new(PolicyRegistry::new(policy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_redis_admit_exactly_capacity_together() {
    let clock = ManualClock::starting_now();
    let config = common::client_clock_config(&clock);
    let policy = Policy::per_minute(100).unwrap(); // C = 110
    let a = Arc::new(common::connect_shared(registry(policy), config.clone()).await);
    let b = Arc::new(common::connect_shared(registry(policy), config).await);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            for _ in 0..10 {
                n += u64::from(l.check("shared-org", 1).await.unwrap().is_allowed());
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 110);
    assert_eq!(a.fallback_count() + b.fallback_count(), 0);
}

/// The Lua script and `decide` agree on admission and on the stored `tat`, including values near the limits of
/// exact double arithmetic.
#[tokio::test]
async fn lua_script_agrees_with_decide() {
    let clock = ManualClock::starting_now();
    // Not a test of timeouts: the 10 ms default fails on a loaded machine.
    let config = RedisLimiterConfig { call_timeout: Duration::from_secs(2), ..RedisLimiterConfig::default() };
    let limiter = common::connect_shared(registry(Policy::per_minute(1).unwrap()), config).await;
    let pool = limiter.pool();
    let key = format!("{}agree", common::unique_prefix());
    let sha: String = pool.script_load(GCRA_LUA).await.unwrap();
    let mut rng = Rng(7);
    let big = Policy::new(1, Duration::from_micros(MAX_BUCKET_MICROS), 0).unwrap();
    let policies = [
        Policy::per_minute(60).unwrap(),
        Policy::per_day(1_000_000).unwrap(),
        Policy::new(7, Duration::from_secs(60), 3).unwrap(),
        Policy::new(1_000_000, Duration::from_secs(1), 0).unwrap(),
        big,
    ];
    let mut now = clock.now();
    for round in 0..2000 {
        let policy = policies[rng.below(policies.len() as u64) as usize];
        let stored: Option<String> = pool.get(&key).await.unwrap();
        let tat = stored.map(|s| s.parse::<u64>().expect("tat stored as a plain integer"));
        let cost = rng.below(policy.capacity().min(5) + 1) as u32;
        now += rng.below((2 * policy.interval_micros()).min(1 << 42)); // keeps now + 2·C·T < 2^53
        let args: Vec<i64> = vec![
            policy.interval_micros() as i64,
            policy.bucket_micros() as i64,
            i64::from(cost),
            now as i64,
            3_600_000,
        ];
        let reply: Vec<i64> = pool.evalsha(&sha, key.as_str(), args).await.unwrap();
        let (decision, store) = decide(&policy, tat, now, cost);
        assert_eq!(reply[0] == 1, store.is_some(), "round {round}: {policy:?} tat {tat:?} now {now} cost {cost}");
        assert_eq!(reply[1], tat.map_or(-1, |t| t as i64));
        assert_eq!(reply[2], now as i64);
        let after: Option<String> = pool.get(&key).await.unwrap();
        let after = after.map(|s| s.parse::<u64>().unwrap());
        assert_eq!(after, store.or(tat), "round {round}: stored tat; decision {decision:?}");
    }
    let _: i64 = pool.del(&key).await.unwrap();
}

/// The same random trace through both backends (Redis on the same manual clock) gives identical decisions.
#[tokio::test]
async fn memory_and_redis_decide_identically_on_the_same_trace() {
    let clock = ManualClock::starting_now();
    let policy = Policy::new(20, Duration::from_secs(10), 5).unwrap(); // T = 0.5 s, C = 25
    let reg = registry(policy);
    reg.set_override("org-3", Policy::per_minute(30).unwrap());
    let memory = MemoryLimiter::with_config(reg.clone(), Arc::new(clock.clone()), MemoryConfig::default());
    let redis = common::connect_shared(reg, common::client_clock_config(&clock)).await;
    let mut rng = Rng(42);
    let mut allowed = 0;
    for step in 0..3000 {
        let key = format!("org-{}", rng.below(4));
        let cost = rng.below(4) as u32;
        if rng.below(3) == 0 {
            clock.advance_micros(rng.below(700_000));
        }
        let m = memory.check(&key, cost).await.unwrap();
        let r = redis.check(&key, cost).await.unwrap();
        assert_eq!(m, r, "step {step} key {key} cost {cost}");
        allowed += u64::from(m.is_allowed());
        if step % 97 == 0 {
            assert_eq!(memory.usage(&key).await.unwrap(), redis.usage(&key).await.unwrap());
        }
    }
    assert!(allowed > 300 && allowed < 2900, "the trace exercises both outcomes ({allowed} allowed)");
    assert_eq!(redis.fallback_count(), 0);
}

/// Default time source: the server's `TIME`; the key lives in one hash slot and expires when the bucket is full.
#[tokio::test]
async fn server_time_hash_tag_and_expiry() {
    let prefix = common::unique_prefix();
    let config = RedisLimiterConfig {
        key_prefix: prefix.clone(),
        call_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let limiter = common::connect_shared(registry(Policy::per_hour(3600).unwrap()), config).await; // T = 1 s, C = 3636
    let key = limiter.redis_key("org-7");
    assert_eq!(key, format!("{prefix}{{org-7}}"));
    let d = limiter.check("org-7", 5).await.unwrap();
    assert_eq!((d.remaining(), d.reset_after()), (3631, Duration::from_secs(5)));
    let pttl: i64 = limiter.pool().pttl(&key).await.unwrap();
    assert!((4_000..=5_000).contains(&pttl), "PEXPIRE at the full-bucket time, got {pttl} ms");
    let stored: String = limiter.pool().get(&key).await.unwrap();
    let tat: u64 = stored.parse().unwrap();
    let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    assert!(tat.abs_diff(unix_now + 5_000_000) < 2_000_000, "tat {tat} is server time + 5 s");
    // A refusal writes nothing (no TTL refresh).
    let small = Policy::new(1, Duration::from_secs(30), 0).unwrap();
    limiter.set_org_limit("org-8", small);
    assert!(limiter.check("org-8", 1).await.unwrap().is_allowed());
    let before: String = limiter.pool().get(limiter.redis_key("org-8")).await.unwrap();
    let refused = limiter.check("org-8", 1).await.unwrap();
    assert!(!refused.is_allowed());
    assert_eq!(refused.retry_after_secs(), Some(30));
    let after: String = limiter.pool().get(limiter.redis_key("org-8")).await.unwrap();
    assert_eq!(before, after);
    let _: i64 = limiter.pool().del(vec![key, limiter.redis_key("org-8")]).await.unwrap();
}

#[tokio::test]
async fn unreachable_redis_fails_to_connect_with_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let result = ingest_ratelimit::RedisLimiter::connect(
        &url,
        registry(Policy::per_minute(1).unwrap()),
        RedisLimiterConfig::default(),
    )
    .await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
}

/// `SCRIPT FLUSH` (e.g. a restarted or failed-over server) is repaired transparently by reloading on `NOSCRIPT`.
#[tokio::test]
async fn script_flush_is_survived() {
    let server = ThrowawayRedis::start();
    let clock = ManualClock::starting_now();
    let config = RedisLimiterConfig { call_timeout: Duration::from_millis(500), ..common::client_clock_config(&clock) };
    let limiter = common::connect(&server.url(), registry(Policy::per_minute(60).unwrap()), config).await;
    for _ in 0..10 {
        assert!(limiter.check("org", 1).await.unwrap().is_allowed());
    }
    for _ in 0..3 {
        limiter.pool().script_flush_cluster(false).await.unwrap();
        let d = limiter.check("org", 1).await.unwrap();
        assert!(d.is_allowed());
    }
    assert_eq!(limiter.check("org", 1).await.unwrap().remaining(), 66 - 14);
    assert_eq!(limiter.fallback_count(), 0, "answered by Redis after reloading the script");
    limiter.quit().await.unwrap();
}

fn outage_config(clock: &ManualClock, mode: FailMode) -> RedisLimiterConfig {
    RedisLimiterConfig {
        call_timeout: Duration::from_millis(300),
        failure_threshold: 3,
        cool_down: Duration::from_millis(200),
        fail_mode: mode,
        ..common::client_clock_config(clock)
    }
}

/// Our own redis-server is killed mid-run: Local mode keeps deciding (no error), Open admits, Closed errors; after a
/// restart (empty script cache) the limiters return to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_falls_back_and_recovers() {
    let mut server = ThrowawayRedis::start();
    let clock = ManualClock::starting_now();
    let policy = Policy::per_minute(60).unwrap(); // C = 66
    let local = common::connect(&server.url(), registry(policy), outage_config(&clock, FailMode::Local)).await;
    let open = common::connect(&server.url(), registry(policy), outage_config(&clock, FailMode::Open)).await;
    let closed = common::connect(&server.url(), registry(policy), outage_config(&clock, FailMode::Closed)).await;
    for _ in 0..5 {
        assert!(local.check("org", 1).await.unwrap().is_allowed());
    }
    assert!(!local.fallback_active());

    server.stop();
    // Local: every check answered, never an error; the fallback enforces the limit on its own.
    let mut admitted = 0;
    for _ in 0..100 {
        let d = local.check("org-down", 1).await.expect("Local mode surfaces no error");
        admitted += u64::from(d.is_allowed());
    }
    assert!(local.fallback_active(), "breaker open after consecutive failures");
    assert!(local.fallback_count() >= 100);
    assert_eq!(admitted, 66, "the in-memory fallback enforces the policy");
    // Open admits, Closed refuses with an error.
    for _ in 0..5 {
        assert!(open.check("org", 1).await.unwrap().is_allowed());
        assert!(matches!(closed.check("org", 1).await, Err(Error::Unavailable(_))));
    }
    assert!(open.fallback_active() && closed.fallback_active());

    server.restart();
    // The breakers probe after their cool-down; fred reconnects in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = local.check("org-up", 1).await.expect("no error");
        let c = closed.check("org-up", 1).await;
        let _ = open.check("org-up", 1).await.unwrap();
        if !local.fallback_active() && !closed.fallback_active() && !open.fallback_active() && c.is_ok() {
            assert!(d.is_allowed());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "did not return to Redis after a restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back on Redis: state lands in the (new, empty) server.
    let before = local.fallback_count();
    let d = local.check("org-fresh", 1).await.unwrap();
    assert_eq!(d.remaining(), 65);
    assert_eq!(local.fallback_count(), before, "decided by Redis");
    let stored: Option<String> = local.pool().get(local.redis_key("org-fresh")).await.unwrap();
    assert!(stored.is_some(), "the key is in the restarted server");
    for l in [local, open, closed] {
        let _ = l.quit().await;
    }
}
