//! The one GCRA decision function shared by every backend.

use std::time::Duration;

use crate::Policy;

/// The outcome of a check. A refusal is a value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The request was admitted (and its cost consumed).
    Allowed {
        /// The policy's capacity `C`.
        limit: u64,
        /// Requests of cost 1 that would still be admitted right now, after this one.
        remaining: u64,
        /// Time until the bucket is full again (no information left about this key).
        reset_after: Duration,
    },
    /// The request was refused; nothing was consumed.
    Limited {
        /// The policy's capacity `C`.
        limit: u64,
        /// Time until a request of the same cost would be admitted. [`Duration::MAX`] when the cost exceeds the
        /// capacity and can never be admitted (the limiters report that case as an error instead).
        retry_after: Duration,
        /// Time until the bucket is full again.
        reset_after: Duration,
    },
}

impl Decision {
    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    /// The policy's capacity `C` (what a full bucket admits back to back).
    pub fn limit(&self) -> u64 {
        match *self {
            Self::Allowed { limit, .. } | Self::Limited { limit, .. } => limit,
        }
    }

    /// Requests that would still be admitted right now (0 when limited).
    pub fn remaining(&self) -> u64 {
        match *self {
            Self::Allowed { remaining, .. } => remaining,
            Self::Limited { .. } => 0,
        }
    }

    /// Time until the bucket is full again.
    pub fn reset_after(&self) -> Duration {
        match *self {
            Self::Allowed { reset_after, .. } | Self::Limited { reset_after, .. } => reset_after,
        }
    }

    /// Time until the refused request would be admitted; `None` when allowed.
    pub fn retry_after(&self) -> Option<Duration> {
        match *self {
            Self::Allowed { .. } => None,
            Self::Limited { retry_after, .. } => Some(retry_after),
        }
    }

    /// `Retry-After` in whole seconds: rounded up, at least 1; `None` when allowed.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(|d| ceil_secs(d).max(1))
    }

    /// Time until the bucket is full again in whole seconds, rounded up (0 when already full).
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after())
    }
}

/// `⌈d⌉` in seconds.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The GCRA decision, in integer microseconds.
///
/// `tat` is the key's stored theoretical arrival time (`None` for a key without state), `now` the current time;
/// both in microseconds on the same clock. With `T` = [`Policy::interval_micros`] and `C·T` =
/// [`Policy::bucket_micros`], a request of cost `n` is admitted iff `max(tat, now) + n·T − C·T ≤ now`, and then the
/// new `tat = max(tat, now) + n·T` is returned as `Some(new_tat)`: the caller must store it. A refusal, and an
/// admitted cost of 0 (a pure read), return `None`: nothing is stored.
///
/// The arithmetic is done relative to `now` (`base = max(tat, now) − now`) so that for any policy accepted by
/// [`Policy::new`] every intermediate value stays below `now + 2·C·T` ≤ `now + 2^52`, which is below 2^53 for Unix
/// microsecond timestamps until the year 2112; the Lua script of the Redis backend performs exactly
/// these operations. A cost above the capacity `C` is never admitted (`retry_after` = [`Duration::MAX`]).
pub fn decide(policy: &Policy, tat: Option<u64>, now: u64, cost: u32) -> (Decision, Option<u64>) {
    let t = policy.interval_micros();
    let bucket = policy.bucket_micros();
    let limit = policy.capacity();
    // Time already "owed" by this key; 0 when the bucket is full.
    let base = tat.map_or(0, |tat| tat.saturating_sub(now));

    if u64::from(cost) > limit {
        return (
            Decision::Limited { limit, retry_after: Duration::MAX, reset_after: Duration::from_micros(base) },
            None,
        );
    }
    // cost ≤ C, so cost·T ≤ C·T ≤ 2^51: no overflow.
    let inc = u64::from(cost) * t;
    let new_base = base.saturating_add(inc);
    if new_base <= bucket {
        let remaining = (bucket - new_base) / t;
        let decision = Decision::Allowed { limit, remaining, reset_after: Duration::from_micros(new_base) };
        let store = (cost > 0).then(|| now.saturating_add(new_base));
        (decision, store)
    } else {
        let retry_after = Duration::from_micros(new_base - bucket);
        (Decision::Limited { limit, retry_after, reset_after: Duration::from_micros(base) }, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(max: u64, window_s: u64, burst: u64) -> Policy {
        Policy::new(max, Duration::from_secs(window_s), burst).unwrap()
    }

    #[test]
    fn fresh_key_admits_capacity_then_refuses_with_retry_t() {
        let policy = p(10, 10, 2); // T = 1 s, C = 12
        let now = 1_000_000_000;
        let mut tat = None;
        for i in 0..12 {
            let (d, new) = decide(&policy, tat, now, 1);
            assert!(d.is_allowed(), "request {i}");
            assert_eq!(d.remaining(), 11 - i);
            assert_eq!(d.limit(), 12);
            assert_eq!(d.reset_after(), Duration::from_secs(i + 1));
            tat = new;
        }
        let (d, new) = decide(&policy, tat, now, 1);
        assert_eq!(new, None);
        assert_eq!(
            d,
            Decision::Limited { limit: 12, retry_after: Duration::from_secs(1), reset_after: Duration::from_secs(12) }
        );
        assert_eq!(d.retry_after_secs(), Some(1));
        assert_eq!(d.reset_secs(), 12);
    }

    #[test]
    fn cost_zero_is_a_read_and_cost_above_capacity_never_passes() {
        let policy = p(10, 10, 0);
        let (d, new) = decide(&policy, Some(5_000_000), 1_000_000, 0);
        assert_eq!(new, None);
        assert_eq!(d, Decision::Allowed { limit: 10, remaining: 6, reset_after: Duration::from_secs(4) });
        let (d, new) = decide(&policy, None, 1_000_000, 11);
        assert_eq!(new, None);
        assert_eq!(d.retry_after(), Some(Duration::MAX));
        let (d, _) = decide(&policy, None, 1_000_000, 10);
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn retry_after_is_exact_for_multi_cost() {
        let policy = p(10, 10, 0); // T = 1 s, C·T = 10 s
        // 7 s owed: cost 4 needs base + 4 s ≤ 10 s, i.e. 1 s from now.
        let (d, _) = decide(&policy, Some(17_000_000), 10_000_000, 4);
        assert_eq!(d.retry_after(), Some(Duration::from_secs(1)));
        let (d, new) = decide(&policy, Some(17_000_000), 11_000_000, 4);
        assert!(d.is_allowed());
        assert_eq!(new, Some(21_000_000));
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn secs_helpers_round_up() {
        let d = Decision::Limited { limit: 1, retry_after: Duration::from_millis(1), reset_after: Duration::ZERO };
        assert_eq!(d.retry_after_secs(), Some(1));
        assert_eq!(d.reset_secs(), 0);
        let d = Decision::Limited {
            limit: 1,
            retry_after: Duration::from_millis(2001),
            reset_after: Duration::from_millis(2001),
        };
        assert_eq!(d.retry_after_secs(), Some(3));
        assert_eq!(d.reset_secs(), 3);
        let d = Decision::Limited { limit: 1, retry_after: Duration::ZERO, reset_after: Duration::ZERO };
        assert_eq!(d.retry_after_secs(), Some(1), "Retry-After is at least 1");
        let d = Decision::Allowed { limit: 1, remaining: 0, reset_after: Duration::from_secs(2) };
        assert_eq!(d.retry_after_secs(), None);
    }

    #[test]
    fn extreme_inputs_do_not_overflow() {
        let policy = Policy::new(1, Duration::from_micros(crate::MAX_BUCKET_MICROS), 0).unwrap();
        let (d, _) = decide(&policy, Some(u64::MAX), 0, 1);
        assert!(!d.is_allowed());
        let (d, new) = decide(&policy, None, u64::MAX - 1, 1);
        assert!(d.is_allowed());
        assert_eq!(new, Some(u64::MAX));
        let (d, _) = decide(&policy, Some(0), u64::MAX, u32::MAX);
        assert!(!d.is_allowed());
    }
}
