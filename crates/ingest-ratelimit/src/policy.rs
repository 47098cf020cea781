//! Rate-limit policies: `max_requests` per `window` plus a `burst_size`.

use std::time::Duration;

/// Largest bucket depth `C·T` a policy may have, in microseconds (2^51 µs ≈ 71 years).
///
/// The bound keeps every intermediate value of the decision below 2^53, so the Redis Lua script (whose numbers are
/// IEEE doubles) computes exactly what [`decide`](crate::decide) computes with `u64`.
pub const MAX_BUCKET_MICROS: u64 = 1 << 51;

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `max_requests` was zero.
    #[error("a rate-limit policy needs max_requests > 0")]
    ZeroRequests,
    /// The window was zero.
    #[error("a rate-limit policy needs a non-zero window")]
    ZeroWindow,
    /// `(max_requests + burst_size) · window / max_requests` exceeds [`MAX_BUCKET_MICROS`].
    #[error("rate-limit policy too large: capacity × emission interval is {bucket_micros} µs, the maximum is {max} µs")]
    TooLarge {
        /// The bucket depth `C·T` that was asked for, in microseconds (saturated).
        bucket_micros: u128,
        /// [`MAX_BUCKET_MICROS`].
        max: u64,
    },
}

/// A GCRA policy: `max_requests` per `window`, plus `burst_size` requests of slack.
///
/// Derived values, all in integer microseconds:
/// - emission interval `T = ⌈window / max_requests⌉` (at least 1 µs, so the finest rate is 10^6 requests per second);
/// - capacity `C = max_requests + burst_size`: a fresh key admits `C` back-to-back requests, then one every `T`.
///
/// Over any interval of length `t` at most `C + ⌊t/T⌋` requests are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    max_requests: u64,
    window: Duration,
    burst_size: u64,
    interval_us: u64,
    capacity: u64,
}

impl Policy {
    /// `max_requests` per `window` with `burst_size` extra requests of burst.
    pub fn new(max_requests: u64, window: Duration, burst_size: u64) -> Result<Self, PolicyError> {
        if max_requests == 0 {
            return Err(PolicyError::ZeroRequests);
        }
        if window.is_zero() {
            return Err(PolicyError::ZeroWindow);
        }
        // T = ⌈window_ns / (max_requests · 1000)⌉ µs, computed in u128 so nothing overflows.
        let per = u128::from(max_requests) * 1000;
        let interval = window.as_nanos().div_ceil(per).max(1);
        let capacity = u128::from(max_requests) + u128::from(burst_size);
        let bucket = interval.saturating_mul(capacity);
        if bucket > u128::from(MAX_BUCKET_MICROS) {
            return Err(PolicyError::TooLarge { bucket_micros: bucket, max: MAX_BUCKET_MICROS });
        }
        // bucket ≤ 2^51 implies interval and capacity fit in u64.
        Ok(Self { max_requests, window, burst_size, interval_us: interval as u64, capacity: capacity as u64 })
    }

    /// `n` requests per minute, burst 10 % of `n` (rounded up, at least 1).
    pub fn per_minute(n: u64) -> Result<Self, PolicyError> {
        Self::new(n, Duration::from_secs(60), burst_fraction(n, 10))
    }

    /// `n` requests per hour, burst 1 % of `n` (rounded up, at least 1).
    pub fn per_hour(n: u64) -> Result<Self, PolicyError> {
        Self::new(n, Duration::from_secs(3600), burst_fraction(n, 100))
    }

    /// `n` requests per day, burst 0.1 % of `n` (rounded up, at least 1).
    pub fn per_day(n: u64) -> Result<Self, PolicyError> {
        Self::new(n, Duration::from_secs(86_400), burst_fraction(n, 1000))
    }

    /// Sustained requests per window.
    pub fn max_requests(&self) -> u64 {
        self.max_requests
    }

    /// The window `max_requests` refers to.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Extra requests allowed in a burst on top of `max_requests`.
    pub fn burst_size(&self) -> u64 {
        self.burst_size
    }

    /// Capacity `C = max_requests + burst_size`: what a fresh key admits back to back. Reported as the limit.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Emission interval `T` in microseconds.
    pub fn interval_micros(&self) -> u64 {
        self.interval_us
    }

    /// Emission interval `T`.
    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us)
    }

    /// Bucket depth `C·T` in microseconds (≤ [`MAX_BUCKET_MICROS`]).
    pub fn bucket_micros(&self) -> u64 {
        // Cannot overflow: checked against MAX_BUCKET_MICROS in `new`.
        self.capacity * self.interval_us
    }
}

/// `⌈n / divisor⌉`, at least 1.
fn burst_fraction(n: u64, divisor: u64) -> u64 {
    n.div_ceil(divisor).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_round_burst_up_and_at_least_one() {
        let p = Policy::per_minute(100).unwrap();
        assert_eq!((p.max_requests(), p.burst_size(), p.capacity()), (100, 10, 110));
        assert_eq!(p.interval(), Duration::from_millis(600));
        assert_eq!(Policy::per_minute(101).unwrap().burst_size(), 11);
        assert_eq!(Policy::per_minute(1).unwrap().burst_size(), 1);
        assert_eq!(Policy::per_hour(1000).unwrap().burst_size(), 10);
        assert_eq!(Policy::per_hour(1001).unwrap().burst_size(), 11);
        assert_eq!(Policy::per_hour(5).unwrap().burst_size(), 1);
        assert_eq!(Policy::per_day(1_000_000).unwrap().burst_size(), 1000);
        assert_eq!(Policy::per_day(1_000_001).unwrap().burst_size(), 1001);
        assert_eq!(Policy::per_day(10).unwrap().burst_size(), 1);
        assert_eq!(Policy::per_day(86_400).unwrap().interval(), Duration::from_secs(1));
    }

    #[test]
    fn custom_policy_and_interval_rounds_up() {
        let p = Policy::new(7, Duration::from_secs(60), 0).unwrap();
        assert_eq!(p.capacity(), 7);
        assert_eq!(p.interval_micros(), 8_571_429); // ⌈60e6 / 7⌉
        let fast = Policy::new(3_000_000, Duration::from_secs(1), 0).unwrap();
        assert_eq!(fast.interval_micros(), 1, "T never drops to 0");
    }

    #[test]
    fn rejects_zero_and_oversized() {
        assert_eq!(Policy::per_minute(0), Err(PolicyError::ZeroRequests));
        assert_eq!(Policy::per_hour(0), Err(PolicyError::ZeroRequests));
        assert_eq!(Policy::per_day(0), Err(PolicyError::ZeroRequests));
        assert_eq!(Policy::new(5, Duration::ZERO, 1), Err(PolicyError::ZeroWindow));
        assert!(matches!(
            Policy::new(1, Duration::from_secs(86_400 * 365 * 100), 0),
            Err(PolicyError::TooLarge { .. })
        ));
        assert!(matches!(Policy::new(u64::MAX, Duration::from_secs(1), u64::MAX), Err(PolicyError::TooLarge { .. })));
    }
}
