//! 1 M distinct keys stay within the stated memory bound and are swept. Its own test binary (one test), so the
//! process RSS measures this limiter alone.

use std::sync::Arc;
use std::time::Duration;

use ingest_ratelimit::{ManualClock, MemoryConfig, MemoryLimiter, Policy, PolicyRegistry};

const KEYS: usize = 1_000_000;
/// Stated bound: ≤ 40 bytes per live key (17-byte slots, table load ≥ 7/16).
const BYTES_PER_KEY: usize = 40;

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn one_million_keys_stay_within_bound_and_are_swept() {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let policy = Policy::per_minute(100).unwrap();
    let limiter = MemoryLimiter::with_config(
        Arc::new(PolicyRegistry::new(policy)),
        Arc::new(clock.clone()),
        MemoryConfig { max_keys: 2 * KEYS, ..MemoryConfig::default() },
    );
    let rss_before = rss_bytes();
    let mut key = String::with_capacity(32);
    for i in 0..KEYS {
        use std::fmt::Write;
        key.clear();
        write!(key, "org-{i:08}").unwrap();
        assert!(limiter.try_check(&key, 1).unwrap().is_allowed());
    }
    assert_eq!(limiter.len(), KEYS);
    assert_eq!(limiter.rejected_at_capacity(), 0);
    let table = limiter.memory_bytes();
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    assert!(table <= KEYS * BYTES_PER_KEY, "tables hold {table} B for {KEYS} keys");
    assert!(rss_growth <= KEYS * BYTES_PER_KEY + (8 << 20), "RSS grew by {rss_growth} B for {KEYS} keys");

    // Still live: nothing to sweep.
    assert_eq!(limiter.sweep(), 0);
    // Once every bucket is full again (T = 0.6 s after the single request), all keys are dropped.
    clock.advance(Duration::from_millis(600));
    assert_eq!(limiter.sweep(), KEYS);
    assert!(limiter.is_empty());
    assert!(limiter.memory_bytes() < table / 10, "tables shrink after the sweep: {} B", limiter.memory_bytes());

    // The amortised sweep also bounds growth without explicit sweeps: 3 M more keys, each idle after 0.6 s.
    for round in 0..3 {
        for i in 0..KEYS {
            use std::fmt::Write;
            key.clear();
            write!(key, "r{round}-{i:08}").unwrap();
            assert!(limiter.try_check(&key, 1).unwrap().is_allowed());
        }
        clock.advance(Duration::from_millis(600));
    }
    assert!(limiter.len() <= 2 * KEYS, "{} keys held", limiter.len());
    assert!(limiter.memory_bytes() <= 2 * KEYS * BYTES_PER_KEY);
}
