//! The Redis backend (feature `redis`): one atomic `EVALSHA` round trip per check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, Error as RedisError, LuaInterface, Options, Pool, ReconnectPolicy};

use crate::limiter::{Usage, check_cost};
use crate::{Clock, Decision, Error, MemoryConfig, MemoryLimiter, Policy, PolicyRegistry, RateLimiter, SystemClock};

/// The GCRA step of [`decide`](crate::decide), atomically in Redis.
///
/// `KEYS[1]` bucket key. `ARGV`: `T` (µs), `C·T` (µs), cost, now (µs; negative = use the server's `TIME`), expiry
/// slack (ms). Returns `{admitted, stored tat or -1, now}`; the caller rebuilds the [`Decision`] with `decide` from
/// the same `tat` and `now`. All values stay below 2^53 (see [`MAX_BUCKET_MICROS`](crate::MAX_BUCKET_MICROS)), so
/// Lua's doubles are exact; `tat` is written with `%.0f` because Lua's default number formatting keeps only 14
/// significant digits.
pub const GCRA_LUA: &str = r#"
local t = tonumber(ARGV[1])
local bucket = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if now < 0 then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or -1
local base = 0
if tat > now then
  base = tat - now
end
local new_base = base + cost * t
if cost > 0 and new_base <= bucket then
  local ttl = math.ceil(new_base / 1000) + tonumber(ARGV[5])
  redis.call('SET', KEYS[1], string.format('%.0f', now + new_base), 'PX', ttl)
  return {1, tat, now}
end
return {0, tat, now}
"#;

pub use crate::config::FailMode;

/// Which clock decides.
#[derive(Debug, Clone, Default)]
pub enum TimeSource {
    /// The Redis server's `TIME`, read inside the script: all instances share one clock. The default.
    #[default]
    Server,
    /// A client-side clock passed with each call (deterministic tests; instances must be in sync). Key expiry still
    /// runs on the server's clock, so combine a manual clock with [`RedisLimiterConfig::expiry_slack`].
    Client(Arc<dyn Clock>),
}

/// Settings of a [`RedisLimiter`].
#[derive(Debug, Clone)]
pub struct RedisLimiterConfig {
    /// Prepended to every key; the key itself is wrapped in a hash tag: `{prefix}{<key>}`. Default `"ratelimit:"`.
    pub key_prefix: String,
    /// Hard bound on one check's round trip (including a `NOSCRIPT` reload). Default 10 ms.
    pub call_timeout: Duration,
    /// Consecutive failures that open the circuit breaker. Default 3.
    pub failure_threshold: u32,
    /// How long an open breaker skips Redis before letting one probe through. Default 1 s.
    pub cool_down: Duration,
    /// Behaviour while Redis is unhealthy. Default [`FailMode::Local`].
    pub fail_mode: FailMode,
    /// Clock deciding the checks. Default [`TimeSource::Server`].
    pub time: TimeSource,
    /// Extra time a key lives past the moment its bucket is full again (only costs memory). Default 0.
    pub expiry_slack: Duration,
    /// Connections in the pool built by [`RedisLimiter::connect`]. Default 2.
    pub pool_size: usize,
    /// Sizing of the [`FailMode::Local`] fallback.
    pub fallback: MemoryConfig,
}

impl Default for RedisLimiterConfig {
    fn default() -> Self {
        Self {
            key_prefix: "ratelimit:".to_owned(),
            call_timeout: Duration::from_millis(10),
            failure_threshold: 3,
            cool_down: Duration::from_secs(1),
            fail_mode: FailMode::Local,
            time: TimeSource::Server,
            expiry_slack: Duration::ZERO,
            pool_size: 2,
            fallback: MemoryConfig::default(),
        }
    }
}

/// A GCRA limiter keeping each key's `tat` in Redis, so every instance shares one budget per key.
///
/// Each check is one `EVALSHA` of [`GCRA_LUA`] (reloaded on `NOSCRIPT`) bounded by [`RedisLimiterConfig::call_timeout`].
/// Keys are `{prefix}{<key>}` (one hash slot per key in a cluster) and expire when their bucket is full again.
/// After [`RedisLimiterConfig::failure_threshold`] consecutive failures a circuit breaker skips Redis for
/// [`RedisLimiterConfig::cool_down`], then lets one probe through; every failed or skipped check is answered per
/// [`FailMode`] and counted ([`RedisLimiter::fallback_count`]).
#[derive(Debug)]
pub struct RedisLimiter {
    pool: Pool,
    registry: Arc<PolicyRegistry>,
    fallback: MemoryLimiter,
    options: Options,
    key_prefix: String,
    call_timeout: Duration,
    fail_mode: FailMode,
    time: TimeSource,
    slack_ms: u64,
    breaker: Breaker,
    /// Real monotonic time for the breaker, whatever decides the checks.
    breaker_clock: SystemClock,
    fallbacks: AtomicU64,
    /// False until a [`connect_lazy`](Self::connect_lazy) pool first connects.
    connected: Arc<AtomicBool>,
}

impl RedisLimiter {
    /// Connect a new pool to `url` (`redis://host:port/db`, `rediss://` for TLS) and load the script.
    ///
    /// Fails if Redis cannot be reached now; once running, outages are handled per [`FailMode`].
    pub async fn connect(url: &str, registry: Arc<PolicyRegistry>, config: RedisLimiterConfig) -> Result<Self, Error> {
        let pool = Self::pool_for(url, &config)?;
        pool.init().await.map_err(unavailable)?;
        let limiter = Self::from_pool(pool, registry, config);
        limiter.load_script().await?;
        Ok(limiter)
    }

    /// Like [`connect`](Self::connect), but returns at once: the pool
    /// connects in the background, retrying with a capped exponential delay
    /// (100 ms to 5 s) until Redis answers. Until then every check is
    /// answered per [`FailMode`] and counted, as during any outage; see
    /// [`connected`](Self::connected). Fails only for a URL that cannot work.
    ///
    /// A service that must start while Redis is down uses this one.
    pub fn connect_lazy(
        url: &str,
        registry: Arc<PolicyRegistry>,
        config: RedisLimiterConfig,
    ) -> Result<Arc<Self>, Error> {
        let pool = Self::pool_for(url, &config)?;
        let mut limiter = Self::from_pool(pool, registry, config);
        limiter.connected = Arc::new(AtomicBool::new(false));
        let limiter = Arc::new(limiter);
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            let mut attempts = 0u32;
            loop {
                let Some(limiter) = weak.upgrade() else { return };
                let result = match limiter.pool.init().await {
                    Ok(_) => limiter.load_script().await,
                    Err(e) => Err(unavailable(e)),
                };
                match result {
                    Ok(()) => {
                        limiter.connected.store(true, Ordering::Release);
                        tracing::info!(attempts, "rate-limit Redis connected");
                        return;
                    }
                    Err(e) => {
                        if attempts == 0 {
                            tracing::warn!(error = %e, mode = ?limiter.fail_mode, "rate-limit Redis unreachable at start; deciding per fail mode until it answers");
                        }
                        attempts += 1;
                    }
                }
                drop(limiter);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
        Ok(limiter)
    }

    /// Whether the pool has connected once (always true after
    /// [`connect`](Self::connect)); outages after that are the breaker's
    /// business ([`fallback_active`](Self::fallback_active)).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// While the breaker is open, asks Redis directly (`PING`, bounded by the
    /// call timeout) and closes the breaker when it answers; returns whether
    /// Redis is in use now. The breaker otherwise closes only through a
    /// request's probe: a service made unready by `FailMode::Closed` gets no
    /// requests, so its readiness check calls this.
    pub async fn probe(&self) -> bool {
        if !self.connected() {
            return false;
        }
        if !self.breaker.is_open() {
            return true;
        }
        let client = self.pool.with_options(&self.options);
        let ping = tokio::time::timeout(self.call_timeout.max(Duration::from_millis(100)), client.ping::<()>(None));
        if matches!(ping.await, Ok(Ok(()))) {
            self.breaker.success();
            tracing::info!("rate-limit Redis answers again");
            return true;
        }
        false
    }

    /// What this limiter does while Redis is unhealthy.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    fn pool_for(url: &str, config: &RedisLimiterConfig) -> Result<Pool, Error> {
        let redis_config = Config::from_url(url).map_err(unavailable)?;
        let mut builder = Builder::from_config(redis_config);
        builder
            .with_config(|c| c.fail_fast = true)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| p.default_command_timeout = config.call_timeout)
            .set_policy(ReconnectPolicy::new_constant(0, 100));
        builder.build_pool(config.pool_size.max(1)).map_err(unavailable)
    }

    /// Use an existing (initialised) pool.
    pub fn from_pool(pool: Pool, registry: Arc<PolicyRegistry>, config: RedisLimiterConfig) -> Self {
        let fallback_clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let fallback = MemoryLimiter::with_config(registry.clone(), fallback_clock, config.fallback);
        // The call timeout itself is enforced (once) around the whole call, NOSCRIPT reload included.
        let options = Options { max_attempts: Some(1), fail_fast: true, ..Options::default() };
        Self {
            pool,
            registry,
            fallback,
            options,
            key_prefix: config.key_prefix,
            call_timeout: config.call_timeout,
            fail_mode: config.fail_mode,
            time: config.time,
            slack_ms: u64::try_from(config.expiry_slack.as_millis()).unwrap_or(u64::MAX),
            breaker: Breaker::new(config.failure_threshold, config.cool_down),
            breaker_clock: SystemClock::new(),
            fallbacks: AtomicU64::new(0),
            connected: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The Redis key holding `key`'s state: `{prefix}{<key>}`.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{{{}}}", self.key_prefix, key)
    }

    /// `SCRIPT LOAD` the GCRA script (done by [`Self::connect`] and on `NOSCRIPT`).
    pub async fn load_script(&self) -> Result<(), Error> {
        self.pool.script_load_cluster::<(), _>(GCRA_LUA).await.map_err(unavailable)
    }

    /// Whether checks are currently answered per [`FailMode`] instead of by
    /// Redis (the breaker is open, or the pool has not connected yet).
    pub fn fallback_active(&self) -> bool {
        self.breaker.is_open() || !self.connected()
    }

    /// How many checks were answered per [`FailMode`] because Redis failed or the breaker was open.
    pub fn fallback_count(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The in-process limiter used in [`FailMode::Local`].
    pub fn fallback(&self) -> &MemoryLimiter {
        &self.fallback
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Close the connections.
    pub async fn quit(&self) -> Result<(), Error> {
        self.pool.quit().await.map_err(unavailable)
    }

    async fn run(&self, key: &str, policy: &Policy, cost: u32) -> Result<Decision, Error> {
        check_cost(policy, cost)?;
        if !self.connected() {
            // Nothing is sent while the pool has never connected: a command
            // queued now would run later and spend tokens twice.
            return self.fail(key, policy, cost, "not connected to Redis yet");
        }
        let breaker_now = self.breaker_clock.now();
        if !self.breaker.allow(breaker_now) {
            return self.fail(key, policy, cost, "circuit breaker open");
        }
        let result = match tokio::time::timeout(self.call_timeout, self.eval(key, policy, cost)).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::new(fred::error::ErrorKind::Timeout, "rate-limit call timed out")),
        };
        match result {
            Ok(decision) => {
                self.breaker.success();
                Ok(decision)
            }
            Err(e) => {
                let opened = self.breaker.failure(self.breaker_clock.now());
                if opened {
                    tracing::warn!(error = %e, mode = ?self.fail_mode, "redis rate limiter unhealthy; falling back");
                } else {
                    tracing::debug!(error = %e, "redis rate-limit call failed");
                }
                self.fail(key, policy, cost, e.details())
            }
        }
    }

    fn fail(&self, key: &str, policy: &Policy, cost: u32, reason: &str) -> Result<Decision, Error> {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        match self.fail_mode {
            FailMode::Local => self.fallback.try_check(key, cost),
            FailMode::Open => Ok(crate::decide(policy, None, self.fallback.clock().now(), cost).0),
            FailMode::Closed => Err(Error::Unavailable(reason.to_owned())),
        }
    }

    async fn eval(&self, key: &str, policy: &Policy, cost: u32) -> Result<Decision, RedisError> {
        let redis_key = self.redis_key(key);
        let now: i64 = match &self.time {
            TimeSource::Server => -1,
            TimeSource::Client(clock) => i64::try_from(clock.now()).unwrap_or(i64::MAX),
        };
        let args: Vec<i64> = vec![
            policy.interval_micros() as i64, // ≤ 2^51
            policy.bucket_micros() as i64,   // ≤ 2^51
            i64::from(cost),
            now,
            i64::try_from(self.slack_ms).unwrap_or(i64::MAX),
        ];
        let client = self.pool.with_options(&self.options);
        let sha = script_sha();
        let reply: Vec<i64> = match client.evalsha(sha, redis_key.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::info!("rate-limit script missing on the server; reloading");
                client.script_load_cluster::<(), _>(GCRA_LUA).await?;
                client.evalsha(sha, redis_key, args).await?
            }
            other => other?,
        };
        let [admitted, tat, now] = reply[..] else {
            return Err(RedisError::new(fred::error::ErrorKind::Protocol, "unexpected rate-limit script reply"));
        };
        let tat = u64::try_from(tat).ok();
        let now = u64::try_from(now).unwrap_or(0);
        let (decision, store) = crate::decide(policy, tat, now, cost);
        if (admitted == 1) != store.is_some() {
            // Cannot happen for policies accepted by Policy::new (exact arithmetic); the script's write wins.
            tracing::error!(admitted, ?decision, "rate-limit script and decide() disagree");
        }
        Ok(decision)
    }
}

/// SHA-1 of [`GCRA_LUA`], computed once.
fn script_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| fred::types::scripts::Script::from_lua(GCRA_LUA).sha1().to_string())
}

fn unavailable(e: RedisError) -> Error {
    Error::Unavailable(e.to_string())
}

impl RateLimiter for RedisLimiter {
    async fn check(&self, key: &str, cost: u32) -> Result<Decision, Error> {
        let policy = self.registry.policy_for(key);
        self.run(key, &policy, cost).await
    }

    async fn usage(&self, key: &str) -> Result<Usage, Error> {
        let policy = self.registry.policy_for(key);
        let peek = self.run(key, &policy, 0).await?;
        Ok(Usage::from_peek(policy, peek))
    }

    fn registry(&self) -> &PolicyRegistry {
        &self.registry
    }
}

/// Consecutive-failure circuit breaker. `open_until == 0`: closed. Otherwise Redis is skipped until then, after
/// which one caller (winning a CAS that re-arms the cool-down) probes; success closes, failure re-opens.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cool_down_us: u64,
    failures: AtomicU32,
    open_until: AtomicU64,
}

impl Breaker {
    fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down_us: u64::try_from(cool_down.as_micros()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Whether this call may go to Redis.
    fn allow(&self, now: u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        // Half-open: exactly one caller probes; re-arming the cool-down also covers a probe that never finishes.
        let rearm = now.saturating_add(self.cool_down_us).max(1);
        self.open_until.compare_exchange(until, rearm, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis rate limiter healthy again");
        }
    }

    /// Records a failure; returns whether this failure opened the breaker.
    fn failure(&self, now: u64) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if failures >= self.threshold {
            let was = self.open_until.swap(now.saturating_add(self.cool_down_us).max(1), Ordering::AcqRel);
            return was == 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_then_probes_once() {
        let b = Breaker::new(3, Duration::from_micros(100));
        assert!(b.allow(0));
        assert!(!b.failure(0));
        assert!(!b.failure(1));
        assert!(!b.is_open());
        assert!(b.failure(2), "third consecutive failure opens");
        assert!(b.is_open());
        assert!(!b.allow(50));
        assert!(b.allow(102), "one probe after the cool-down");
        assert!(!b.allow(103), "only one");
        b.failure(104);
        assert!(!b.allow(150));
        assert!(b.allow(205));
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(206));
        assert!(!b.failure(207), "counter was reset by the success");
    }

    #[test]
    fn sha_matches_redis_sha1() {
        assert_eq!(script_sha().len(), 40);
    }
}
