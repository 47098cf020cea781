//! One behavioural suite, instantiated for every backend (in-memory, and Redis against the real server).
//!
//! Every backend is driven by a `ManualClock` (the Redis backend gets it as its client clock), so the expected
//! decisions are exact.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ingest_ratelimit::{
    Decision, Error, ManualClock, MemoryConfig, MemoryLimiter, Policy, PolicyRegistry, RateLimiter,
};

/// Builds a limiter of one backend around a registry and a manual clock.
trait Backend {
    type L: RateLimiter + 'static;
    fn make(registry: Arc<PolicyRegistry>, clock: ManualClock) -> impl Future<Output = Self::L>;
    /// Checks not decided by the backend itself (Redis fallback); must stay 0.
    fn fallbacks(_limiter: &Self::L) -> u64 {
        0
    }
}

struct Memory;

impl Backend for Memory {
    type L = MemoryLimiter;
    async fn make(registry: Arc<PolicyRegistry>, clock: ManualClock) -> MemoryLimiter {
        MemoryLimiter::with_config(registry, Arc::new(clock), MemoryConfig::default())
    }
}

#[cfg(feature = "redis")]
struct Redis;

#[cfg(feature = "redis")]
impl Backend for Redis {
    type L = ingest_ratelimit::RedisLimiter;
    async fn make(registry: Arc<PolicyRegistry>, clock: ManualClock) -> Self::L {
        common::connect_shared(registry, common::client_clock_config(&clock)).await
    }
    fn fallbacks(limiter: &Self::L) -> u64 {
        limiter.fallback_count()
    }
}

/// 60/min: T = 1 s, C = 66.
fn per_minute_60() -> Policy {
    Policy::per_minute(60).unwrap()
}

async fn setup<B: Backend>(policy: Policy) -> (Arc<B::L>, ManualClock) {
    let clock = ManualClock::starting_now();
    let limiter = B::make(Arc::new(PolicyRegistry::new(policy)), clock.clone()).await;
    (Arc::new(limiter), clock)
}

async fn admit_run<L: RateLimiter>(limiter: &L, key: &str, max: u64) -> u64 {
    let mut admitted = 0;
    for _ in 0..max {
        if limiter.check(key, 1).await.unwrap().is_allowed() {
            admitted += 1;
        }
    }
    admitted
}

async fn fresh_key_admits_exactly_capacity_then_retry_is_t<B: Backend>() {
    let (l, _clock) = setup::<B>(per_minute_60()).await;
    for i in 0..66u64 {
        let d = l.check("org", 1).await.unwrap();
        assert_eq!(
            d,
            Decision::Allowed { limit: 66, remaining: 65 - i, reset_after: Duration::from_secs(i + 1) },
            "request {i}"
        );
    }
    let d = l.check("org", 1).await.unwrap();
    assert_eq!(
        d,
        Decision::Limited { limit: 66, retry_after: Duration::from_secs(1), reset_after: Duration::from_secs(66) }
    );
    assert_eq!(d.retry_after_secs(), Some(1));
    // A refusal consumes nothing: still exactly T.
    assert_eq!(l.check("org", 1).await.unwrap().retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(B::fallbacks(&l), 0, "decided by the backend, not a fallback");
}

async fn advancing_k_intervals_admits_exactly_k_more<B: Backend>() {
    let (l, clock) = setup::<B>(per_minute_60()).await;
    assert_eq!(admit_run(&*l, "org", 100).await, 66);
    clock.advance(Duration::from_micros(999_999));
    assert_eq!(admit_run(&*l, "org", 3).await, 0, "T − 1 µs is not enough");
    clock.advance_micros(1);
    assert_eq!(admit_run(&*l, "org", 3).await, 1);
    for k in [1u64, 5, 17] {
        clock.advance(Duration::from_secs(k));
        assert_eq!(admit_run(&*l, "org", k + 10).await, k, "after {k}·T");
    }
    // Waiting the full reset refills exactly C.
    let reset = l.usage("org").await.unwrap().reset_after;
    assert_eq!(reset, Duration::from_secs(66));
    clock.advance(reset);
    assert_eq!(l.usage("org").await.unwrap().remaining, 66);
    assert_eq!(admit_run(&*l, "org", 100).await, 66);
    assert_eq!(B::fallbacks(&l), 0, "decided by the backend, not a fallback");
}

async fn multi_cost_and_oversized_cost<B: Backend>() {
    let (l, clock) = setup::<B>(Policy::new(10, Duration::from_secs(10), 0).unwrap()).await;
    assert_eq!(l.check("org", 7).await.unwrap().remaining(), 3);
    let d = l.check("org", 4).await.unwrap();
    assert_eq!(d.retry_after(), Some(Duration::from_secs(1)));
    clock.advance(Duration::from_secs(1));
    assert!(l.check("org", 4).await.unwrap().is_allowed());
    assert_eq!(l.check("org", 11).await, Err(Error::CostExceedsCapacity { cost: 11, capacity: 10 }));
    assert_eq!(B::fallbacks(&l), 0, "decided by the backend, not a fallback");
}

async fn hammer_one_key_from_64_tasks_admits_exactly_capacity<B: Backend>() {
    let (l, _clock) = setup::<B>(per_minute_60()).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..4 {
                    if l.check("hot", 1).await.unwrap().is_allowed() {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 66, "256 concurrent checks on a frozen clock admit exactly C");
    assert_eq!(B::fallbacks(&l), 0, "decided by the backend, not a fallback");
}

async fn organizations_are_isolated<B: Backend>() {
    let (l, _clock) = setup::<B>(per_minute_60()).await;
    assert_eq!(admit_run(&*l, "org-a", 80).await, 66);
    assert_eq!(l.usage("org-a").await.unwrap().remaining, 0);
    let b = l.usage("org-b").await.unwrap();
    assert_eq!((b.limit, b.remaining, b.reset_after), (66, 66, Duration::ZERO));
    assert_eq!(admit_run(&*l, "org-b", 80).await, 66);
    // Keys that look alike stay apart (hash tags, prefixes).
    assert_eq!(admit_run(&*l, "org-a ", 1).await, 1);
    assert_eq!(admit_run(&*l, "{org-a}", 1).await, 1);
    assert_eq!(B::fallbacks(&l), 0, "decided by the backend, not a fallback");
}

async fn override_set_and_removed_mid_stream<B: Backend>() {
    let (l, _clock) = setup::<B>(per_minute_60()).await;
    assert_eq!(admit_run(&*l, "org", 10).await, 10); // 10 s owed
    // 5 per minute: T = 12 s, C·T = 60 s: (60 − 10) / 12 = 4 more.
    let small = Policy::new(5, Duration::from_secs(60), 0).unwrap();
    assert_eq!(l.set_org_limit("org", small), None);
    let u = l.usage("org").await.unwrap();
    assert_eq!((u.policy, u.limit, u.remaining), (small, 5, 4));
    assert_eq!(admit_run(&*l, "org", 10).await, 4);
    assert_eq!(l.check("org", 1).await.unwrap().retry_after(), Some(Duration::from_secs(10)));
    // Another key keeps the default.
    assert_eq!(l.usage("other").await.unwrap().limit, 66);
    // Back to the default: 58 s owed of 66 s: 8 more.
    assert_eq!(l.remove_org_limit("org"), Some(small));
    assert_eq!(l.usage("org").await.unwrap().remaining, 8);
    assert_eq!(admit_run(&*l, "org", 20).await, 8);
    assert_eq!(B::fallbacks(&l), 0, "decided by the backend, not a fallback");
}

async fn usage_does_not_consume<B: Backend>() {
    let (l, _clock) = setup::<B>(per_minute_60()).await;
    for _ in 0..5 {
        let u = l.usage("org").await.unwrap();
        assert_eq!((u.remaining, u.reset_after), (66, Duration::ZERO));
    }
    l.check("org", 3).await.unwrap();
    let u = l.usage("org").await.unwrap();
    assert_eq!((u.remaining, u.reset_after, u.reset_secs()), (63, Duration::from_secs(3), 3));
    assert_eq!(B::fallbacks(&l), 0, "decided by the backend, not a fallback");
}

macro_rules! suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn fresh_key_admits_exactly_capacity_then_retry_is_t() {
                super::fresh_key_admits_exactly_capacity_then_retry_is_t::<$backend>().await;
            }

            #[tokio::test]
            async fn advancing_k_intervals_admits_exactly_k_more() {
                super::advancing_k_intervals_admits_exactly_k_more::<$backend>().await;
            }

            #[tokio::test]
            async fn multi_cost_and_oversized_cost() {
                super::multi_cost_and_oversized_cost::<$backend>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn hammer_one_key_from_64_tasks_admits_exactly_capacity() {
                super::hammer_one_key_from_64_tasks_admits_exactly_capacity::<$backend>().await;
            }

            #[tokio::test]
            async fn organizations_are_isolated() {
                super::organizations_are_isolated::<$backend>().await;
            }

            #[tokio::test]
            async fn override_set_and_removed_mid_stream() {
                super::override_set_and_removed_mid_stream::<$backend>().await;
            }

            #[tokio::test]
            async fn usage_does_not_consume() {
                super::usage_does_not_consume::<$backend>().await;
            }
        }
    };
}

suite!(memory, Memory);
#[cfg(feature = "redis")]
suite!(redis, Redis);
