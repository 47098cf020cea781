use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// `[retry]` (SPEC §7): how the stream sources wait between attempts after a
/// storage failure or a lost connection.
///
/// Sources never give a message up because storage failed, so nothing is
/// lost however long an outage lasts; `max_retries` is the number of
/// consecutive failed attempts after which a source reports itself unready
/// in `/health/ready`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub backoff_multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_retries: 3, initial_delay_ms: 100, max_delay_ms: 30_000, backoff_multiplier: 2.0 }
    }
}

impl RetryConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_delay_ms == 0 {
            return Err("retry.initial_delay_ms: must be at least 1".into());
        }
        if self.max_delay_ms < self.initial_delay_ms {
            return Err("retry.max_delay_ms: must be at least retry.initial_delay_ms".into());
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return Err("retry.backoff_multiplier: must be a number ≥ 1".into());
        }
        Ok(())
    }
}

/// Capped exponential backoff with jitter: the n-th delay is drawn from
/// `[d/2, d]` where `d = min(initial · multiplier^(n-1), max)`, so processes
/// that failed together do not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: RetryConfig,
    attempts: u32,
}

impl Backoff {
    pub fn new(config: RetryConfig) -> Self {
        Backoff { config, attempts: 0 }
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// True once `max_retries` consecutive attempts have failed.
    pub fn exhausted(&self) -> bool {
        self.attempts > self.config.max_retries
    }

    /// The delay before the next attempt; counts a failure.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.ceiling(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
        Duration::from_secs_f64(cap.as_secs_f64() * fraction)
    }

    /// The upper bound of the delay after `attempts` failures.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let c = &self.config;
        let ms = c.initial_delay_ms as f64 * c.backoff_multiplier.powi(attempts.min(64) as i32);
        Duration::from_millis(ms.min(c.max_delay_ms as f64) as u64)
    }

    /// Called after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let config = RetryConfig { max_retries: 2, initial_delay_ms: 100, max_delay_ms: 1000, backoff_multiplier: 2.0 };
        let mut b = Backoff::new(config);
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        for n in 0..6 {
            let d = b.next_delay();
            let cap = b.ceiling(n);
            assert!(d <= cap && d >= cap / 2, "delay {d:?} outside [{:?}, {cap:?}]", cap / 2);
        }
        assert!(b.exhausted());
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(!b.exhausted());
    }

    #[test]
    fn bad_settings_name_the_key() {
        let bad = RetryConfig { backoff_multiplier: 0.5, ..RetryConfig::default() };
        assert!(bad.validate().unwrap_err().starts_with("retry.backoff_multiplier"));
        let bad = RetryConfig { max_delay_ms: 1, ..RetryConfig::default() };
        assert!(bad.validate().unwrap_err().starts_with("retry.max_delay_ms"));
        assert!(RetryConfig::default().validate().is_ok());
    }
}
