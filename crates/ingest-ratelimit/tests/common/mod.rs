//! Helpers shared by the integration tests.
#![allow(dead_code)]

#[cfg(feature = "redis")]
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "redis")]
use ingest_ratelimit::redis::{RedisLimiterConfig, TimeSource};
#[cfg(feature = "redis")]
use ingest_ratelimit::{ManualClock, PolicyRegistry, RedisLimiter};

pub const REDIS_HINT: &str = "start redis-server or set INGESTD_TEST_REDIS_URL";

/// `INGESTD_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("INGESTD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test (or test run) uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("test-rl:{}-{nanos:x}-{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[cfg(feature = "redis")]
/// Settings for deterministic tests: client clock, unique prefix, generous timeouts (debug builds, shared CPU).
pub fn client_clock_config(clock: &ManualClock) -> RedisLimiterConfig {
    RedisLimiterConfig {
        key_prefix: unique_prefix(),
        call_timeout: Duration::from_millis(500),
        time: TimeSource::Client(Arc::new(clock.clone())),
        expiry_slack: Duration::from_secs(60),
        ..RedisLimiterConfig::default()
    }
}

#[cfg(feature = "redis")]
/// Connect to the shared test Redis; panics (never skips) when it cannot be reached.
pub async fn connect_shared(registry: Arc<PolicyRegistry>, config: RedisLimiterConfig) -> RedisLimiter {
    connect(&redis_url(), registry, config).await
}

#[cfg(feature = "redis")]
pub async fn connect(url: &str, registry: Arc<PolicyRegistry>, config: RedisLimiterConfig) -> RedisLimiter {
    match RedisLimiter::connect(url, registry, config).await {
        Ok(limiter) => limiter,
        Err(e) => panic!("cannot reach Redis at {url}: {e}; {REDIS_HINT}"),
    }
}

/// A private `redis-server` on a free port (the one launcher,
/// `ingest-throwaway`), killed on drop. Only this process is ever stopped by
/// the tests.
pub struct ThrowawayRedis {
    pub port: u16,
    server: ingest_throwaway::Server,
}

impl ThrowawayRedis {
    pub fn start() -> Self {
        let server = ingest_throwaway::redis().unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        Self { port: server.port, server }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start again on the same port and wait until it accepts connections.
    pub fn restart(&mut self) {
        self.server.restart().unwrap_or_else(|e| panic!("cannot restart redis-server: {e}"));
    }

    /// Kill this server (and only this one).
    pub fn stop(&mut self) {
        self.server.kill();
    }
}

/// A tiny deterministic PRNG (splitmix64) for reproducible random traces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
