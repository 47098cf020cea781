//! Counts of decisions per key and minute, for a service to store.
//!
//! A [`DecisionTally`] is filled on the hot path ([`DecisionTally::record`]:
//! one short lock, no allocation for a key already seen this minute) and
//! emptied by whoever keeps the counts ([`DecisionTally::drain`]), which
//! adds them to shared storage so that every process's decisions are seen.
//! A failed store gives the rows back with [`DecisionTally::restore`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Clock;

/// How many (key, minute) cells a tally holds before it counts new ones
/// only as [`Drained::overflowed`]: a bound on memory when callers pick
/// their own keys and nothing drains the tally.
pub const MAX_CELLS: usize = 100_000;

/// Admitted and refused decisions of one key in one minute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TallyRow {
    pub key: String,
    /// Minutes since the Unix epoch (`unix seconds / 60`).
    pub minute: i64,
    pub admitted: u64,
    pub refused: u64,
}

/// What [`DecisionTally::drain`] took out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub rows: Vec<TallyRow>,
    /// Decisions not counted since the last drain because the tally was full.
    pub overflowed: u64,
}

#[derive(Debug, Default)]
struct Cells {
    /// By minute, then key: a drain takes whole minutes, a record finds its key by `&str`.
    by_minute: BTreeMap<i64, HashMap<String, (u64, u64)>>,
    len: usize,
    overflowed: u64,
}

/// Decisions per key and minute since the last drain.
#[derive(Debug)]
pub struct DecisionTally {
    cells: Mutex<Cells>,
    clock: Arc<dyn Clock>,
}

impl Default for DecisionTally {
    fn default() -> Self {
        Self::new()
    }
}

impl DecisionTally {
    /// A tally on the wall clock: its minutes are the ones the counts are
    /// read back by, even after the clock was set (unlike the limiter's
    /// monotonic [`SystemClock`](crate::SystemClock)).
    pub fn new() -> Self {
        Self::with_clock(Arc::new(WallClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        DecisionTally { cells: Mutex::default(), clock }
    }

    fn cells(&self) -> MutexGuard<'_, Cells> {
        // The counts stay consistent whatever panicked while holding the lock.
        self.cells.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one decision for `key` in the current minute.
    pub fn record(&self, key: &str, admitted: bool) {
        let minute = i64::try_from(self.clock.now() / 60_000_000).unwrap_or(i64::MAX);
        self.add(key, minute, u64::from(admitted), u64::from(!admitted));
    }

    fn add(&self, key: &str, minute: i64, admitted: u64, refused: u64) {
        let mut cells = self.cells();
        let Cells { by_minute, len, overflowed } = &mut *cells;
        let keys = by_minute.entry(minute).or_default();
        let counts = match keys.get_mut(key) {
            Some(counts) => counts,
            None if *len >= MAX_CELLS => {
                *overflowed = overflowed.saturating_add(admitted).saturating_add(refused);
                return;
            }
            None => {
                *len += 1;
                keys.entry(key.to_owned()).or_default()
            }
        };
        counts.0 = counts.0.saturating_add(admitted);
        counts.1 = counts.1.saturating_add(refused);
    }

    /// Takes every count out, oldest minute first.
    pub fn drain(&self) -> Drained {
        let cells = std::mem::take(&mut *self.cells());
        let rows = cells
            .by_minute
            .into_iter()
            .flat_map(|(minute, keys)| {
                keys.into_iter().map(move |(key, (admitted, refused))| TallyRow { key, minute, admitted, refused })
            })
            .collect();
        Drained { rows, overflowed: cells.overflowed }
    }

    /// Gives back rows a drain took (their store failed), added to what
    /// was recorded since.
    pub fn restore(&self, rows: Vec<TallyRow>) {
        for row in rows {
            self.add(&row.key, row.minute, row.admitted, row.refused);
        }
    }
}

/// `SystemTime::now()`, read at every call.
#[derive(Debug)]
struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> u64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn row(key: &str, minute: i64, admitted: u64, refused: u64) -> TallyRow {
        TallyRow { key: key.to_owned(), minute, admitted, refused }
    }

    fn sorted(mut drained: Drained) -> Drained {
        drained.rows.sort_by(|a, b| (a.minute, &a.key).cmp(&(b.minute, &b.key)));
        drained
    }

    #[test]
    fn counts_per_key_and_minute_and_drains_once() {
        let clock = Arc::new(ManualClock::new(120_000_000 + 59_999_999));
        let tally = DecisionTally::with_clock(clock.clone());
        tally.record("a", true);
        tally.record("a", false);
        tally.record("b", true);
        clock.advance(std::time::Duration::from_micros(1));
        tally.record("a", true);
        let drained = sorted(tally.drain());
        assert_eq!(drained.rows, [row("a", 2, 1, 1), row("b", 2, 1, 0), row("a", 3, 1, 0)]);
        assert_eq!(drained.overflowed, 0);
        assert_eq!(tally.drain(), Drained::default());
    }

    #[test]
    fn restored_rows_add_to_new_decisions() {
        let tally = DecisionTally::with_clock(Arc::new(ManualClock::new(60_000_000)));
        tally.record("a", true);
        let taken = tally.drain().rows;
        tally.record("a", false);
        tally.restore(taken);
        assert_eq!(tally.drain().rows, [row("a", 1, 1, 1)]);
    }

    #[test]
    fn a_full_tally_counts_new_cells_as_overflow_only() {
        let tally = DecisionTally::with_clock(Arc::new(ManualClock::new(0)));
        for i in 0..MAX_CELLS {
            tally.record(&i.to_string(), true);
        }
        tally.record("0", false);
        tally.record("new", true);
        tally.record("new", false);
        let drained = tally.drain();
        assert_eq!(drained.rows.len(), MAX_CELLS);
        assert_eq!(drained.overflowed, 2);
        assert!(drained.rows.contains(&row("0", 0, 1, 1)));
        tally.record("new", true);
        assert_eq!(tally.drain().rows, [row("new", 0, 1, 0)]);
    }
}
