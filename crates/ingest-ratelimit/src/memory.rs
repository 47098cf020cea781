//! The in-memory backend: sharded `HashMap<u64, u64>` from key hash to `tat`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use crate::limiter::{Usage, check_cost};
use crate::{Clock, Decision, Error, PolicyRegistry, RateLimiter, SystemClock, decide};

/// Approximate bytes per table slot: 8 (key hash) + 8 (`tat`) + 1 (control byte).
const SLOT_BYTES: usize = 17;

/// Sizing of a [`MemoryLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Number of shards (rounded up to a power of two, at least 1). Default 64.
    pub shards: usize,
    /// Hard cap on tracked keys (split evenly across shards, rounded up). Default 2^21 (≈ 2.1 M keys, ≈ 80 MB).
    pub max_keys: usize,
    /// A shard never sweeps while it holds fewer keys than this. Default 1024.
    pub min_sweep_len: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { shards: 64, max_keys: 1 << 21, min_sweep_len: 1024 }
    }
}

/// An in-process GCRA limiter.
///
/// State is one `u64` (the `tat`) per key, stored under a 64-bit keyed SipHash of the key in one of N
/// `Mutex<HashMap>` shards; critical sections are a single lookup and store. Two keys whose hashes collide
/// (probability ≈ 2^-64 per pair, and not steerable from outside because the hash is randomly keyed) would share one
/// bucket, which is only ever stricter.
///
/// **Sweeping**: a key whose `tat ≤ now` holds no information and is dropped. Each shard sweeps when inserting a new
/// key finds it at its sweep threshold (which doubles with the live size, so the work is amortised O(1) per insert);
/// [`MemoryLimiter::sweep`] and [`MemoryLimiter::spawn_sweeper`] sweep on demand or periodically.
///
/// **Hard cap**: at most `max_keys` keys (rounded up to a multiple of the shard count). A new key arriving at a full
/// shard that a sweep cannot shrink is **refused** (fail closed for new keys; existing keys keep their exact limits)
/// with `retry_after` = when the shard's sweep will free at least 1/8 of it. Such refusals are counted in
/// [`MemoryLimiter::rejected_at_capacity`]. Evicting live keys instead would hand their owners a fresh bucket, i.e.
/// let a flood of distinct keys switch rate limiting off for everyone.
///
/// **Memory**: ≈ 17 bytes per slot; with hash-table load between 7/16 and 7/8 that is ≤ 40 bytes per live key, so
/// the default cap bounds the table at ≈ 80 MB, and 1 M live keys take ≈ 20–40 MB.
#[derive(Debug)]
pub struct MemoryLimiter {
    registry: Arc<PolicyRegistry>,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    shards: Box<[Shard]>,
    shard_shift: u32,
    shard_cap: usize,
    min_sweep_len: usize,
    rejected_at_capacity: AtomicU64,
}

#[derive(Debug)]
#[repr(align(128))] // one shard per cache line pair: no false sharing between locks
struct Shard(Mutex<ShardState>);

type Table = HashMap<u64, u64, BuildHasherDefault<PreHashed>>;

#[derive(Debug)]
struct ShardState {
    tats: Table,
    /// Sweep when an insert finds `tats.len() >= sweep_at`.
    sweep_at: usize,
    /// When the shard is full: no sweep (and no new key) before this time.
    full_until: u64,
}

impl MemoryLimiter {
    /// A limiter with the default [`MemoryConfig`] and the [`SystemClock`].
    pub fn new(registry: Arc<PolicyRegistry>) -> Self {
        Self::with_config(registry, Arc::new(SystemClock::new()), MemoryConfig::default())
    }

    /// A limiter with the given clock and sizing.
    pub fn with_config(registry: Arc<PolicyRegistry>, clock: Arc<dyn Clock>, config: MemoryConfig) -> Self {
        let shards = config.shards.max(1).next_power_of_two();
        let shard_cap = config.max_keys.max(1).div_ceil(shards);
        let min_sweep_len = config.min_sweep_len.clamp(1, shard_cap);
        let shard_shift = 64 - shards.trailing_zeros();
        let shards: Box<[Shard]> = (0..shards)
            .map(|_| Shard(Mutex::new(ShardState { tats: Table::default(), sweep_at: min_sweep_len, full_until: 0 })))
            .collect();
        Self {
            registry,
            clock,
            hasher: RandomState::new(),
            shard_shift,
            shards,
            shard_cap,
            min_sweep_len,
            rejected_at_capacity: AtomicU64::new(0),
        }
    }

    /// The clock this limiter reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Synchronous [`RateLimiter::check`] at the clock's current time.
    pub fn try_check(&self, key: &str, cost: u32) -> Result<Decision, Error> {
        self.check_at(key, cost, self.clock.now())
    }

    /// Synchronous check at an explicit time `now` (µs).
    pub fn check_at(&self, key: &str, cost: u32, now: u64) -> Result<Decision, Error> {
        let policy = self.registry.policy_for(key);
        check_cost(&policy, cost)?;
        let hash = self.hasher.hash_one(key);
        let mut shard = self.lock(hash);
        if let Some(tat) = shard.tats.get_mut(&hash) {
            let (decision, store) = decide(&policy, Some(*tat), now, cost);
            if let Some(new_tat) = store {
                *tat = new_tat;
            }
            return Ok(decision);
        }
        let (decision, store) = decide(&policy, None, now, cost);
        let Some(new_tat) = store else { return Ok(decision) };
        if shard.tats.len() >= shard.sweep_at && !self.make_room(&mut shard, now) {
            let until = shard.full_until;
            drop(shard);
            self.rejected_at_capacity.fetch_add(1, Ordering::Relaxed);
            let wait = Duration::from_micros(until.saturating_sub(now).max(1));
            return Ok(Decision::Limited { limit: policy.capacity(), retry_after: wait, reset_after: Duration::ZERO });
        }
        shard.tats.insert(hash, new_tat);
        Ok(decision)
    }

    /// Synchronous [`RateLimiter::usage`].
    pub fn usage_now(&self, key: &str) -> Usage {
        let policy = self.registry.policy_for(key);
        let now = self.clock.now();
        let hash = self.hasher.hash_one(key);
        let tat = self.lock(hash).tats.get(&hash).copied();
        Usage::from_peek(policy, decide(&policy, tat, now, 0).0)
    }

    /// Number of keys currently held (including idle keys not swept yet).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hard cap on keys: `max_keys` rounded up to a multiple of the shard count.
    pub fn max_keys(&self) -> usize {
        self.shard_cap * self.shards.len()
    }

    /// Approximate bytes held by the tables (slots × 17 bytes); excludes the fixed per-shard overhead.
    pub fn memory_bytes(&self) -> usize {
        self.shards.iter().map(|s| table_bytes(&lock(s).tats)).sum()
    }

    /// How many new keys were refused because their shard was full.
    pub fn rejected_at_capacity(&self) -> u64 {
        self.rejected_at_capacity.load(Ordering::Relaxed)
    }

    /// Drop every idle key (`tat ≤ now`) now, shrinking tables that became mostly empty. Returns how many were
    /// dropped.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        self.shards
            .iter()
            .map(|s| {
                let mut shard = lock(s);
                let before = shard.tats.len();
                self.sweep_shard(&mut shard, now);
                before - shard.tats.len()
            })
            .sum()
    }

    /// Sweep every `every` on the current tokio runtime, until the limiter is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { break };
                let dropped = limiter.sweep();
                tracing::trace!(dropped, "rate-limit sweep");
            }
        })
    }

    fn lock(&self, hash: u64) -> MutexGuard<'_, ShardState> {
        // shard_shift is 64 with a single shard; checked_shr then yields None → shard 0.
        let index = hash.checked_shr(self.shard_shift).unwrap_or(0) as usize;
        lock(&self.shards[index])
    }

    /// Called before inserting into a shard at its sweep threshold. Returns whether there is room.
    fn make_room(&self, shard: &mut ShardState, now: u64) -> bool {
        if shard.tats.len() >= self.shard_cap && now < shard.full_until {
            return false; // full, and the last sweep said nothing useful frees up before `full_until`
        }
        self.sweep_shard(shard, now);
        shard.tats.len() < self.shard_cap
    }

    fn sweep_shard(&self, shard: &mut ShardState, now: u64) {
        shard.tats.retain(|_, tat| *tat > now);
        let len = shard.tats.len();
        if len >= self.shard_cap {
            // Full of live keys. Don't sweep again before 1/8 of them have gone idle: keeps sweeping amortised
            // O(1) per admitted new key even under a flood of distinct keys.
            let mut tats: Vec<u64> = shard.tats.values().copied().collect();
            let rank = (len / 8).min(len - 1);
            let (_, at_rank, _) = tats.select_nth_unstable(rank);
            shard.full_until = *at_rank;
            shard.sweep_at = self.shard_cap;
        } else {
            shard.full_until = 0;
            shard.sweep_at = len.saturating_mul(2).clamp(self.min_sweep_len, self.shard_cap);
            if shard.tats.capacity() > 64 && len < shard.tats.capacity() / 4 {
                shard.tats.shrink_to(len.saturating_mul(2));
            }
        }
    }
}

fn lock(shard: &Shard) -> MutexGuard<'_, ShardState> {
    // The state is a map of u64s updated in single statements: a panic elsewhere cannot leave it inconsistent.
    shard.0.lock().unwrap_or_else(PoisonError::into_inner)
}

fn table_bytes(table: &Table) -> usize {
    // HashMap::capacity is 7/8 of the bucket count (power of two).
    let buckets = if table.capacity() == 0 { 0 } else { (table.capacity() * 8 / 7).next_power_of_two() };
    buckets * SLOT_BYTES
}

impl RateLimiter for MemoryLimiter {
    fn check(&self, key: &str, cost: u32) -> impl Future<Output = Result<Decision, Error>> + Send {
        std::future::ready(self.try_check(key, cost))
    }

    fn usage(&self, key: &str) -> impl Future<Output = Result<Usage, Error>> + Send {
        std::future::ready(Ok(self.usage_now(key)))
    }

    fn registry(&self) -> &PolicyRegistry {
        &self.registry
    }
}

/// A `Hasher` for keys that are already SipHash outputs: one multiply spreads the bits (the shard index uses the
/// top bits, so without mixing the table's control bytes would all look alike within a shard).
#[derive(Debug, Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, Policy};

    fn limiter(max_keys: usize, shards: usize) -> (MemoryLimiter, ManualClock) {
        let clock = ManualClock::new(1_000_000_000);
        let registry = Arc::new(PolicyRegistry::new(Policy::new(2, Duration::from_secs(2), 0).unwrap()));
        let config = MemoryConfig { shards, max_keys, min_sweep_len: 4 };
        (MemoryLimiter::with_config(registry, Arc::new(clock.clone()), config), clock)
    }

    #[test]
    fn idle_keys_are_swept() {
        let (l, clock) = limiter(10_000, 4);
        for i in 0..100 {
            assert!(l.try_check(&format!("k{i}"), 1).unwrap().is_allowed());
        }
        assert_eq!(l.len(), 100);
        clock.advance(Duration::from_millis(999));
        assert_eq!(l.sweep(), 0, "tat = now + 1 s: still holds information");
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.sweep(), 100);
        assert!(l.is_empty());
    }

    #[test]
    fn amortised_sweep_runs_on_insert() {
        let (l, clock) = limiter(10_000, 1);
        for i in 0..4 {
            l.try_check(&format!("a{i}"), 1).unwrap();
        }
        clock.advance(Duration::from_secs(5));
        // The 5th insert hits sweep_at = 4 and drops the 4 idle keys.
        l.try_check("b", 1).unwrap();
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn full_shard_refuses_new_keys_but_keeps_existing_ones_exact() {
        let (l, clock) = limiter(16, 1);
        for i in 0..16 {
            assert!(l.try_check(&format!("k{i}"), 1).unwrap().is_allowed());
        }
        let d = l.try_check("new", 1).unwrap();
        assert!(!d.is_allowed(), "fail closed for new keys at the cap");
        assert_eq!(l.rejected_at_capacity(), 1);
        assert_eq!(l.len(), 16);
        // Existing keys still get their exact limit (C = 2: one more, then refused).
        assert!(l.try_check("k0", 1).unwrap().is_allowed());
        assert!(!l.try_check("k0", 1).unwrap().is_allowed());
        // Once the keys go idle, the sweep frees room.
        clock.advance(Duration::from_secs(3));
        assert!(l.try_check("new", 1).unwrap().is_allowed());
        assert!(l.len() <= 16);
    }

    #[test]
    fn flood_of_distinct_keys_stays_capped() {
        let (l, clock) = limiter(1000, 8);
        for i in 0..20_000 {
            let _ = l.try_check(&format!("flood{i}"), 1).unwrap();
            if i % 100 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(l.len() <= l.max_keys(), "{} > {}", l.len(), l.max_keys());
        assert!(l.rejected_at_capacity() > 0);
    }

    #[test]
    fn cost_above_capacity_is_an_error() {
        let (l, _) = limiter(10, 1);
        assert_eq!(l.try_check("k", 3), Err(Error::CostExceedsCapacity { cost: 3, capacity: 2 }));
        assert!(l.is_empty());
    }
}

#[cfg(test)]
mod sweeper_tests {
    use super::*;
    use crate::{ManualClock, Policy};

    #[tokio::test]
    async fn spawned_sweeper_drops_idle_keys_and_stops_with_the_limiter() {
        let clock = ManualClock::new(1_000_000);
        let registry = Arc::new(PolicyRegistry::new(Policy::per_minute(60).unwrap()));
        let limiter = Arc::new(MemoryLimiter::with_config(registry, Arc::new(clock.clone()), MemoryConfig::default()));
        for i in 0..10 {
            limiter.try_check(&format!("k{i}"), 1).unwrap();
        }
        let handle = limiter.spawn_sweeper(Duration::from_millis(10));
        clock.advance(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(limiter.is_empty());
        drop(limiter);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(handle.is_finished());
    }
}
