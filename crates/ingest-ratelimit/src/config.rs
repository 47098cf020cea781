//! The limiter's settings as data (serde), for services that read them from
//! a file: which backend, what it does while Redis is unhealthy, the default
//! policy and per-key overrides. [`RateLimitConfig::build`] turns them into
//! a [`Limiter`] and the [`PolicyRegistry`] runtime overrides update.
//!
//! ```
//! use ingest_ratelimit::{PolicyConfig, RateLimitConfig};
//!
//! let config: RateLimitConfig = serde_json::from_str(r#"{"default": {"per_minute": 600}}"#)?;
//! assert_eq!(config.default, PolicyConfig { per_minute: Some(600), ..PolicyConfig::default() });
//! assert_eq!(config.default.policy()?.capacity(), 660);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Limiter, MemoryLimiter, Policy, PolicyError, PolicyRegistry};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Limit ingestion requests per organization (SPEC §4).
    pub enabled: bool,
    pub backend: RateLimitBackend,
    /// What the Redis backend does while Redis is unhealthy.
    pub fail_mode: FailMode,
    /// Longest a Redis check may take before it counts as a failure.
    pub redis_timeout_ms: u64,
    /// The policy of every organization without an override. Empty: 60 000 per minute.
    pub default: PolicyConfig,
    /// Overrides by organization id.
    pub orgs: BTreeMap<String, PolicyConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            backend: RateLimitBackend::Memory,
            fail_mode: FailMode::Local,
            redis_timeout_ms: 10,
            default: PolicyConfig::default(),
            orgs: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    /// Per-process state.
    #[default]
    Memory,
    /// Shared state in Redis (`redis.url`), for several ingestd processes.
    Redis,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Decide with an in-process [`MemoryLimiter`] (per-instance limits) until Redis recovers. The default.
    #[default]
    Local,
    /// Admit everything (as a fresh bucket would).
    Open,
    /// Surface [`Error::Unavailable`](crate::Error::Unavailable); the caller refuses the request (ingestd: 503).
    Closed,
}

/// One of `per_minute`, `per_hour`, `per_day`, or `max_requests` +
/// `window_secs` (+ `burst_size`, default 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_size: Option<u64>,
}

/// The largest number any policy setting takes (10^15): far above any real
/// rate, and small enough that the GCRA state stays exact in Redis's doubles.
pub const MAX_POLICY_NUMBER: u64 = 1_000_000_000_000_000;

/// The default policy when `[rate_limit.default]` says nothing.
pub const DEFAULT_PER_MINUTE: u64 = 60_000;

impl PolicyConfig {
    /// Whether nothing is set (in a config file: the default policy).
    pub fn is_empty(&self) -> bool {
        *self == PolicyConfig::default()
    }

    /// The policy this section describes, or what is wrong with it.
    pub fn policy(&self) -> Result<Policy, PolicyProblem> {
        use PolicyProblem::Invalid;
        let numbers = [
            ("per_minute", self.per_minute),
            ("per_hour", self.per_hour),
            ("per_day", self.per_day),
            ("max_requests", self.max_requests),
            ("window_secs", self.window_secs),
            ("burst_size", self.burst_size),
        ];
        if let Some((name, _)) = numbers.iter().find(|(_, n)| n.is_some_and(|n| n > MAX_POLICY_NUMBER)) {
            return Err(Invalid(format!("{name} must be at most {MAX_POLICY_NUMBER}")));
        }
        let presets = [("per_minute", self.per_minute), ("per_hour", self.per_hour), ("per_day", self.per_day)];
        let mut set = presets.iter().filter(|(_, v)| v.is_some());
        let custom = self.max_requests.is_some() || self.window_secs.is_some();
        let policy = match (set.next(), set.next(), custom) {
            (Some((a, _)), Some((b, _)), _) => return Err(Invalid(format!("set one of {a} and {b}, not both"))),
            (Some((name, _)), None, true) => {
                return Err(Invalid(format!("set {name} or max_requests + window_secs, not both")));
            }
            (Some((name, Some(n))), None, false) => {
                if self.burst_size.is_some() {
                    return Err(Invalid(format!(
                        "burst_size goes with max_requests + window_secs; {name} has its own burst"
                    )));
                }
                match *name {
                    "per_minute" => Policy::per_minute(*n),
                    "per_hour" => Policy::per_hour(*n),
                    _ => Policy::per_day(*n),
                }
            }
            (_, _, true) => {
                let (Some(max), Some(window)) = (self.max_requests, self.window_secs) else {
                    return Err(Invalid("max_requests and window_secs go together".into()));
                };
                Policy::new(max, Duration::from_secs(window), self.burst_size.unwrap_or(0))
            }
            (None, _, false) if self.is_empty() => Policy::per_minute(DEFAULT_PER_MINUTE),
            _ => return Err(Invalid("set per_minute, per_hour, per_day, or max_requests + window_secs".into())),
        };
        policy.map_err(|e| match e {
            PolicyError::TooLarge { .. } => PolicyProblem::Unenforceable(e.to_string()),
            _ => Invalid(e.to_string()),
        })
    }
}

/// What is wrong with a policy section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyProblem {
    /// Not a policy: a zero, two presets, a missing half of a pair, a number too large.
    Invalid(String),
    /// A policy, but one no limiter can keep (its bucket is deeper than 2^51 µs).
    Unenforceable(String),
}

impl std::error::Error for PolicyProblem {}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyProblem::Invalid(m) | PolicyProblem::Unenforceable(m) => f.write_str(m),
        }
    }
}

impl RateLimitConfig {
    /// The limiter these settings describe (its `default` and `orgs`
    /// policies in a registry that runtime overrides update), and that
    /// registry. `redis_url` is used by the `redis` backend: the limiter
    /// starts whether Redis answers or not, deciding per [`FailMode`] until
    /// it does. A policy that is not one is the `Err`, naming its key.
    pub fn build(&self, redis_url: &str) -> Result<(Limiter, Arc<PolicyRegistry>), BuildError> {
        let registry = Arc::new(PolicyRegistry::new(
            self.default.policy().map_err(|p| BuildError::Policy { key: "default".into(), problem: p })?,
        ));
        for (org, policy) in self.org_policies()? {
            registry.set_override(&org, policy);
        }
        let limiter = match self.backend {
            RateLimitBackend::Memory => Limiter::Memory(MemoryLimiter::new(registry.clone())),
            #[cfg(feature = "redis")]
            RateLimitBackend::Redis => {
                let settings = crate::redis::RedisLimiterConfig {
                    call_timeout: Duration::from_millis(self.redis_timeout_ms),
                    fail_mode: self.fail_mode,
                    ..Default::default()
                };
                Limiter::Redis(crate::RedisLimiter::connect_lazy(redis_url, registry.clone(), settings)?)
            }
            #[cfg(not(feature = "redis"))]
            RateLimitBackend::Redis => {
                let _ = redis_url;
                return Err(BuildError::RedisFeature);
            }
        };
        Ok((limiter, registry))
    }

    /// The `orgs` overrides as policies; the first that is not one is the `Err`.
    pub fn org_policies(&self) -> Result<BTreeMap<String, Policy>, BuildError> {
        self.orgs
            .iter()
            .map(|(org, section)| match section.policy() {
                Ok(policy) => Ok((org.clone(), policy)),
                Err(problem) => Err(BuildError::Policy { key: format!("orgs.{org:?}"), problem }),
            })
            .collect()
    }
}

/// Why [`RateLimitConfig::build`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `key` (`default`, `orgs."acme"`) is not a policy.
    #[error("{key}: {problem}")]
    Policy { key: String, problem: PolicyProblem },
    /// The Redis limiter could not be set up (a URL that is not one).
    #[error(transparent)]
    Limiter(#[from] crate::Error),
    /// `backend = "redis"` in a build without the `redis` feature.
    #[cfg(not(feature = "redis"))]
    #[error("backend \"redis\" needs the `redis` feature of ingest-ratelimit")]
    RedisFeature,
}
