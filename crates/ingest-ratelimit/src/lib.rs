//! GCRA rate limiting per key (organization), with per-key policy overrides.
//!
//! # What it does
//!
//! - [`Policy`]: `max_requests` per `window` plus `burst_size` ([`Policy::per_minute`], [`Policy::per_hour`],
//!   [`Policy::per_day`], [`Policy::new`]); invalid policies are a typed [`PolicyError`].
//! - [`decide`]: the one pure GCRA decision, in integer microseconds, used by every backend. With emission interval
//!   `T = window / max_requests` and capacity `C = max_requests + burst_size`, a fresh key admits exactly `C`
//!   back-to-back requests and then one every `T`; over any interval `t` at most `C + ⌊t/T⌋` are admitted.
//! - [`Decision`]: `Allowed { limit, remaining, reset_after }` or `Limited { limit, retry_after, reset_after }`,
//!   with whole-second helpers for headers. A refusal is a value; only a backend failure (or a cost larger than
//!   the capacity) is an [`Error`].
//! - [`RateLimiter`]: the async trait (`check`, `usage`, `set_org_limit`, `remove_org_limit`) over a shared
//!   [`PolicyRegistry`] (default policy + runtime overrides). Backends: [`MemoryLimiter`] (sharded, swept,
//!   hard-capped), `RedisLimiter` (feature `redis`: one atomic `EVALSHA` per check, circuit breaker and
//!   [`FailMode`]), and [`NoopLimiter`]. [`Limiter`] picks one at runtime without `dyn`.
//! - [`RateLimitConfig`]: the settings as serde data (backend, fail mode, default policy as
//!   [`PolicyConfig`], per-key overrides); [`RateLimitConfig::build`] makes the [`Limiter`].
//! - [`Clock`]: injectable time ([`SystemClock`], [`ManualClock`] for tests).
//! - [`DecisionTally`]: admitted and refused decisions per key and minute, recorded on the hot path and drained by
//!   the service into shared storage (bounded by [`MAX_CELLS`]).
//!
//! # What it deliberately does not do
//!
//! It knows nothing of HTTP (no headers, status codes or middleware: the HTTP crate maps [`Decision`] to
//! `429`/`Retry-After`/`RateLimit-*`), nothing of usage records or what a "cost" means, reads no configuration files
//! or environment, and exports no metrics itself (it exposes counters for the service to export).
//!
//! ```
//! use std::sync::Arc;
//! use ingest_ratelimit::{MemoryLimiter, Policy, PolicyRegistry, RateLimiter};
//!
//! # futures::executor::block_on(async {
//! let registry = Arc::new(PolicyRegistry::new(Policy::per_minute(600)?));
//! let limiter = MemoryLimiter::new(registry);
//! limiter.set_org_limit("org-big", Policy::per_minute(6000)?);
//! let decision = limiter.check("org-1", 1).await?;
//! assert!(decision.is_allowed());
//! assert_eq!(decision.limit(), 660); // C = 600 + 10 % burst
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod clock;
mod config;
mod gcra;
mod limiter;
mod memory;
mod policy;
#[cfg(feature = "redis")]
pub mod redis;
mod registry;
mod tally;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    BuildError, DEFAULT_PER_MINUTE, FailMode, MAX_POLICY_NUMBER, PolicyConfig, PolicyProblem, RateLimitBackend,
    RateLimitConfig,
};
pub use gcra::{Decision, decide};
pub use limiter::{Error, NoopLimiter, RateLimiter, Usage};
pub use memory::{MemoryConfig, MemoryLimiter};
pub use policy::{MAX_BUCKET_MICROS, Policy, PolicyError};
#[cfg(feature = "redis")]
pub use redis::RedisLimiter;
pub use registry::PolicyRegistry;
pub use tally::{DecisionTally, Drained, MAX_CELLS, TallyRow};

/// One of the backends, chosen at runtime (e.g. from configuration), usable where a single concrete
/// [`RateLimiter`] type is needed.
#[derive(Debug)]
pub enum Limiter {
    /// Rate limiting disabled.
    Noop(NoopLimiter),
    /// In-process state.
    Memory(MemoryLimiter),
    /// Shared state in Redis.
    #[cfg(feature = "redis")]
    Redis(std::sync::Arc<RedisLimiter>),
}

impl RateLimiter for Limiter {
    async fn check(&self, key: &str, cost: u32) -> Result<Decision, Error> {
        match self {
            Self::Noop(l) => l.check(key, cost).await,
            Self::Memory(l) => l.check(key, cost).await,
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.check(key, cost).await,
        }
    }

    async fn usage(&self, key: &str) -> Result<Usage, Error> {
        match self {
            Self::Noop(l) => l.usage(key).await,
            Self::Memory(l) => l.usage(key).await,
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.usage(key).await,
        }
    }

    fn registry(&self) -> &PolicyRegistry {
        match self {
            Self::Noop(l) => l.registry(),
            Self::Memory(l) => l.registry(),
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.registry(),
        }
    }
}

impl Limiter {
    /// `"noop"`, `"memory"` or `"redis"`, for metrics and logs.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Noop(_) => "noop",
            Self::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
        }
    }

    /// Whether checks are answered by the fail mode instead of the backend (only Redis has one).
    pub fn fallback_active(&self) -> bool {
        match self {
            Self::Noop(_) | Self::Memory(_) => false,
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.fallback_active(),
        }
    }

    /// Whether requests are refused because the backend cannot be reached
    /// and the fail mode is `FailMode::Closed`:
    /// the one state in which the limiter makes a service unready.
    pub fn refusing(&self) -> bool {
        match self {
            Self::Noop(_) | Self::Memory(_) => false,
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.fail_mode() == redis::FailMode::Closed && l.fallback_active(),
        }
    }

    /// Asks the backend whether it is back when checks are answered by the
    /// fail mode (see [`RedisLimiter::probe`]); for readiness.
    pub async fn probe(&self) {
        #[cfg(feature = "redis")]
        if let Self::Redis(l) = self {
            l.probe().await;
        }
    }

    /// Checks answered by the fail mode so far (only Redis has one).
    pub fn fallback_count(&self) -> u64 {
        match self {
            Self::Noop(_) | Self::Memory(_) => 0,
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.fallback_count(),
        }
    }

    /// Drop idle in-memory state now (the memory backend, or the Redis backend's local fallback); returns how many
    /// keys were dropped. Inserts also sweep, amortised; call this periodically to return memory after a burst of
    /// distinct keys.
    pub fn sweep(&self) -> usize {
        match self {
            Self::Noop(_) => 0,
            Self::Memory(l) => l.sweep(),
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.fallback().sweep(),
        }
    }

    /// Keys held in memory (the memory backend, or the Redis backend's local fallback).
    pub fn memory_keys(&self) -> usize {
        match self {
            Self::Noop(_) => 0,
            Self::Memory(l) => l.len(),
            #[cfg(feature = "redis")]
            Self::Redis(l) => l.fallback().len(),
        }
    }
}
