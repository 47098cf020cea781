//! `decide` against independent models: a leaky-bucket reference and the `C + ⌊t/T⌋` bound.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Rng;
use ingest_ratelimit::{Decision, ManualClock, MemoryConfig, MemoryLimiter, Policy, PolicyRegistry, decide};
use proptest::prelude::*;

/// Reference: a leaky bucket holding `level` µs of "water" that drains 1 µs per µs; a request of cost `n` pours
/// `n·T` and fits iff the bucket (depth `C·T`) doesn't overflow. Written independently of `decide`'s GCRA form.
struct LeakyBucket {
    level: u64,
    last: u64,
}

impl LeakyBucket {
    fn offer(&mut self, policy: &Policy, now: u64, cost: u32) -> Decision {
        let drained = now.saturating_sub(self.last);
        let level = self.level.saturating_sub(drained);
        let pour = u64::from(cost) * policy.interval_micros();
        let depth = policy.capacity() * policy.interval_micros();
        if u64::from(cost) > policy.capacity() {
            return Decision::Limited {
                limit: policy.capacity(),
                retry_after: Duration::MAX,
                reset_after: Duration::from_micros(level),
            };
        }
        if level + pour <= depth {
            if cost > 0 {
                self.level = level + pour;
                self.last = now;
            }
            Decision::Allowed {
                limit: policy.capacity(),
                remaining: (depth - level - pour) / policy.interval_micros(),
                reset_after: Duration::from_micros(level + pour),
            }
        } else {
            Decision::Limited {
                limit: policy.capacity(),
                retry_after: Duration::from_micros(level + pour - depth),
                reset_after: Duration::from_micros(level),
            }
        }
    }
}

/// 10^5 random arrivals (random policies, gaps, costs, including 0 and above capacity) agree with the reference.
#[test]
fn decide_agrees_with_leaky_bucket_reference_on_100k_arrivals() {
    let mut rng = Rng(0x5eed);
    let policies = [
        Policy::per_minute(60).unwrap(),
        Policy::per_minute(7).unwrap(),
        Policy::per_hour(1000).unwrap(),
        Policy::per_day(50_000).unwrap(),
        Policy::new(3, Duration::from_millis(10), 0).unwrap(),
        Policy::new(1_000_000, Duration::from_secs(1), 5).unwrap(),
    ];
    let mut outcomes = [0u64; 2];
    for (p, policy) in policies.iter().enumerate() {
        let mut reference = LeakyBucket { level: 0, last: 0 };
        let mut tat: Option<u64> = None;
        let mut now = 1_700_000_000_000_000 + rng.below(1_000_000);
        for i in 0..100_000 / policies.len() + 1 {
            // Mostly bursts (gap 0), sometimes fractions or multiples of T.
            now += match rng.below(4) {
                0 | 1 => 0,
                2 => rng.below(policy.interval_micros() + 1),
                _ => rng.below(policy.interval_micros() * (policy.capacity() + 2)),
            };
            let cost = match rng.below(10) {
                0 => 0,
                1 => (policy.capacity() + 1) as u32,
                2 => rng.below(policy.capacity().min(50) + 1) as u32,
                _ => 1,
            };
            let (got, store) = decide(policy, tat, now, cost);
            let want = reference.offer(policy, now, cost);
            assert_eq!(got, want, "policy {p}, arrival {i}, now {now}, cost {cost}, tat {tat:?}");
            assert_eq!(store.is_some(), got.is_allowed() && cost > 0);
            if let Some(new) = store {
                tat = Some(new);
            }
            outcomes[usize::from(got.is_allowed())] += 1;
        }
    }
    assert!(outcomes[0] > 10_000 && outcomes[1] > 10_000, "both outcomes well represented: {outcomes:?}");
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (1u64..50, 1u64..120_000, 0u64..20)
        .prop_map(|(max, window_ms, burst)| Policy::new(max, Duration::from_millis(window_ms), burst).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// In-memory limiter on a manual clock: within every interval `[t_i, t_j]` of admitted arrivals, the admitted
    /// cost is at most `C + ⌊(t_j − t_i)/T⌋`. (The C-th request is always admitted on a fresh key, so the bound is
    /// also tight, checked by the suite.)
    #[test]
    fn no_interval_admits_more_than_c_plus_t_over_t(
        policy in arb_policy(),
        arrivals in prop::collection::vec((0u64..3_000_000, 1u32..4), 1..300),
    ) {
        let clock = ManualClock::new(1_000_000_000);
        let limiter = MemoryLimiter::with_config(
            Arc::new(PolicyRegistry::new(policy)),
            Arc::new(clock.clone()),
            MemoryConfig { shards: 1, ..MemoryConfig::default() },
        );
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (gap, cost) in arrivals {
            // Half the arrivals come back to back.
            if gap % 2 == 0 {
                clock.advance_micros(gap % policy.interval_micros().saturating_mul(3).max(1));
            }
            let cost = cost.min(policy.capacity() as u32);
            if limiter.try_check("k", cost).unwrap().is_allowed() {
                admitted.push((ingest_ratelimit::Clock::now(&clock), u64::from(cost)));
            }
        }
        let t = policy.interval_micros();
        for i in 0..admitted.len() {
            let mut sum = 0;
            for j in i..admitted.len() {
                sum += admitted[j].1;
                let bound = policy.capacity() + (admitted[j].0 - admitted[i].0) / t;
                prop_assert!(sum <= bound, "{sum} admitted in [{}, {}] > bound {bound}", admitted[i].0, admitted[j].0);
            }
        }
    }

    /// `remaining` is what a burst right now actually gets: exactly that many more cost-1 requests pass.
    #[test]
    fn remaining_is_exact(policy in arb_policy(), pre in 0u64..60, wait in 0u64..10_000_000) {
        let now = 5_000_000_000u64;
        let mut tat = None;
        for _ in 0..pre {
            if let (_, Some(new)) = decide(&policy, tat, now, 1) { tat = Some(new); }
        }
        let later = now + wait;
        let remaining = decide(&policy, tat, later, 0).0.remaining();
        for _ in 0..remaining {
            let (d, new) = decide(&policy, tat, later, 1);
            prop_assert!(d.is_allowed());
            tat = new;
        }
        prop_assert!(!decide(&policy, tat, later, 1).0.is_allowed());
    }
}
