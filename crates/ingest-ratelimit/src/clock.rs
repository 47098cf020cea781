//! Time sources, in integer microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of "now" in microseconds since the Unix epoch.
///
/// Implementations must be cheap (called on every check) and should be monotonic; a clock going backwards only
/// makes the limiter stricter for a while, never more permissive.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Current time in microseconds since the Unix epoch.
    fn now(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
}

/// The default clock: monotonic ([`Instant`]), anchored to the system time when it was created, so its values are
/// comparable with Unix time (and with Redis `TIME`) but never jump when the wall clock is adjusted.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    anchor: Instant,
    anchor_unix_us: u64,
}

impl SystemClock {
    /// A clock anchored at the current system time.
    pub fn new() -> Self {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self { anchor: Instant::now(), anchor_unix_us: u64::try_from(unix.as_micros()).unwrap_or(u64::MAX) }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        let elapsed = self.anchor.elapsed();
        // u64 arithmetic (no u128 division): saturates after ~584 000 years.
        let micros = elapsed.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(elapsed.subsec_micros()));
        self.anchor_unix_us.saturating_add(micros)
    }
}

/// A clock that only moves when told to; clones share the same time. For tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock reading `start_micros`.
    pub fn new(start_micros: u64) -> Self {
        Self { now: Arc::new(AtomicU64::new(start_micros)) }
    }

    /// A manual clock starting at the current system time (handy with Redis, whose key expiry runs on real time).
    pub fn starting_now() -> Self {
        Self::new(SystemClock::new().now())
    }

    /// Move the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self.now.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_add(by)));
    }

    /// Move the clock forward by `micros` microseconds (saturating).
    pub fn advance_micros(&self, micros: u64) {
        let _ = self.now.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_add(micros)));
    }

    /// Set the clock to `micros`.
    pub fn set(&self, micros: u64) {
        self.now.store(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_time() {
        let c = ManualClock::new(10);
        let c2 = c.clone();
        c.advance(Duration::from_millis(1));
        assert_eq!(c2.now(), 1010);
        c2.advance_micros(5);
        assert_eq!(c.now(), 1015);
        c.set(7);
        assert_eq!(c2.now(), 7);
    }

    #[test]
    fn system_clock_is_unix_micros_and_monotonic() {
        let c = SystemClock::new();
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let a = c.now();
        assert!(a.abs_diff(unix) < 1_000_000, "{a} vs {unix}");
        let b = c.now();
        assert!(b >= a);
    }
}
