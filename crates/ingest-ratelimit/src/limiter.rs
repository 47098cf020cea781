//! The limiter trait shared by every backend, its error type, and the backends that need no storage.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::gcra::ceil_secs;
use crate::{Decision, Policy, PolicyRegistry};

/// Why a check could not be decided. A refusal is not an error: it is [`Decision::Limited`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The cost is larger than the key's capacity `C`: it could never be admitted, whatever the wait.
    #[error("cost {cost} exceeds the rate-limit capacity {capacity}; it can never be admitted")]
    CostExceedsCapacity {
        /// The cost asked for.
        cost: u32,
        /// The capacity `C` of the key's policy.
        capacity: u64,
    },
    /// The backend failed (Redis unreachable, error reply, timeout) and the fail mode says to surface it.
    #[error("rate-limit backend unavailable: {0}")]
    Unavailable(String),
}

/// A read-only view of a key's bucket, as of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The policy deciding the key (its override or the default).
    pub policy: Policy,
    /// The capacity `C` of that policy.
    pub limit: u64,
    /// Requests of cost 1 that would be admitted right now.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset_after: Duration,
}

impl Usage {
    pub(crate) fn from_peek(policy: Policy, peek: Decision) -> Self {
        Self { policy, limit: peek.limit(), remaining: peek.remaining(), reset_after: peek.reset_after() }
    }

    /// [`Self::reset_after`] in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

/// A rate limiter keyed by organization (or any string key).
///
/// Every backend decides with [`decide`](crate::decide) and takes its policies from a shared [`PolicyRegistry`].
/// The futures are `Send`, so checks can run in spawned tasks. For a runtime choice of backend without `dyn`, use
/// [`Limiter`](crate::Limiter).
pub trait RateLimiter: Send + Sync {
    /// Check (and, if admitted, consume) `cost` units for `key`.
    ///
    /// `Ok(Decision::Limited)` is a refusal. Errors: [`Error::CostExceedsCapacity`] when `cost` exceeds the key's
    /// capacity; [`Error::Unavailable`] when the backend failed and its fail mode surfaces failures.
    fn check(&self, key: &str, cost: u32) -> impl Future<Output = Result<Decision, Error>> + Send;

    /// The current state of `key`'s bucket, without consuming anything.
    fn usage(&self, key: &str) -> impl Future<Output = Result<Usage, Error>> + Send;

    /// The policies this limiter decides with.
    fn registry(&self) -> &PolicyRegistry;

    /// Give `key` its own policy, effective from the next check; returns the override it replaces.
    fn set_org_limit(&self, key: &str, policy: Policy) -> Option<Policy> {
        self.registry().set_override(key, policy)
    }

    /// Return `key` to the default policy; returns the removed override.
    fn remove_org_limit(&self, key: &str) -> Option<Policy> {
        self.registry().remove_override(key)
    }

    /// The policy currently deciding `key`.
    fn policy_for(&self, key: &str) -> Policy {
        self.registry().policy_for(key)
    }
}

/// Reject costs that could never be admitted, before touching any state.
pub(crate) fn check_cost(policy: &Policy, cost: u32) -> Result<(), Error> {
    if u64::from(cost) > policy.capacity() {
        Err(Error::CostExceedsCapacity { cost, capacity: policy.capacity() })
    } else {
        Ok(())
    }
}

/// A limiter that admits everything, for deployments with rate limiting disabled.
///
/// It still answers with the key's policy capacity as `limit` and `remaining` so headers stay meaningful.
#[derive(Debug, Clone)]
pub struct NoopLimiter {
    registry: Arc<PolicyRegistry>,
}

impl NoopLimiter {
    /// A no-op limiter reporting `registry`'s policies.
    pub fn new(registry: Arc<PolicyRegistry>) -> Self {
        Self { registry }
    }

    fn decide(&self, key: &str) -> Decision {
        let limit = self.registry.policy_for(key).capacity();
        Decision::Allowed { limit, remaining: limit, reset_after: Duration::ZERO }
    }
}

impl RateLimiter for NoopLimiter {
    fn check(&self, key: &str, _cost: u32) -> impl Future<Output = Result<Decision, Error>> + Send {
        std::future::ready(Ok(self.decide(key)))
    }

    fn usage(&self, key: &str) -> impl Future<Output = Result<Usage, Error>> + Send {
        let policy = self.registry.policy_for(key);
        std::future::ready(Ok(Usage::from_peek(policy, self.decide(key))))
    }

    fn registry(&self) -> &PolicyRegistry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limiter, MemoryLimiter};

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn noop_always_allows_and_reports_the_policy() {
        let registry = Arc::new(PolicyRegistry::new(Policy::per_minute(1).unwrap()));
        let noop = NoopLimiter::new(registry);
        for _ in 0..100 {
            let d = block_on(noop.check("org", 2)).unwrap();
            assert_eq!(d, Decision::Allowed { limit: 2, remaining: 2, reset_after: Duration::ZERO });
        }
        noop.set_org_limit("org", Policy::per_minute(100).unwrap());
        assert_eq!(block_on(noop.usage("org")).unwrap().limit, 110);
    }

    #[test]
    fn limiter_enum_dispatches() {
        let registry = Arc::new(PolicyRegistry::new(Policy::per_minute(1).unwrap())); // C = 2
        let memory = Limiter::Memory(MemoryLimiter::new(registry.clone()));
        let noop = Limiter::Noop(NoopLimiter::new(registry));
        let admitted = (0..5).filter(|_| block_on(memory.check("k", 1)).unwrap().is_allowed()).count();
        assert_eq!(admitted, 2);
        assert!((0..5).all(|_| block_on(noop.check("k", 1)).unwrap().is_allowed()));
        assert_eq!(block_on(memory.usage("k")).unwrap().remaining, 0);
        assert_eq!(memory.policy_for("k").capacity(), 2);
    }
}
