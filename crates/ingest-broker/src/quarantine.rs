use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Finds the message that kills a source task, without ever dead-lettering
/// a good one (SPEC §5, `max_deliveries`).
///
/// A source *holds* the keys of the messages it is processing and
/// *releases* them when processing returned (stored, dead-lettered, or
/// failed in storage). When its task dies mid-batch — a panic the per-message
/// guards did not catch, an abort of the task — the keys stay held, and the
/// next incarnation (the supervisor hands each restart the same
/// `Quarantine`) learns that one of them killed it:
///
/// - a message delivered more than `max_deliveries` times that was held
///   by a task that died *in a batch* is tried **alone**;
/// - one that was held *alone* when the task died is the **killer**: it is
///   dead-lettered for its count without another try;
/// - every other message, whatever its count, goes into the normal batch.
///
/// So deliveries that did not fail — naks during a storage outage, a
/// consumer's own re-reads of its pending list — never turn a message into
/// a suspect, and a good message is never dead-lettered for its count. The
/// state lives in the process: a message that kills the whole process (not
/// only the task) is not caught this way.
#[derive(Clone, Debug, Default)]
pub struct Quarantine {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Keys held now, and whether alone.
    held: Option<(Vec<String>, bool)>,
    died_in_batch: HashSet<String>,
    died_alone: HashSet<String>,
}

/// Where a message goes, by [`Quarantine::verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// With the others of its fetch.
    Batch,
    /// Alone, after the others: a task died while it was in a batch.
    Alone,
    /// Dead-letter it: a task died while it was tried alone.
    Killer,
}

/// Keys in hand; [`release`](Self::release) them once processing returned.
/// Dropped unreleased (the task died), they stay held.
#[derive(Debug)]
#[must_use = "release the keys once processing returned"]
pub struct Held {
    quarantine: Quarantine,
}

impl Held {
    pub fn release(self) {
        let mut state = self.quarantine.lock();
        if let Some((keys, _)) = state.held.take() {
            for key in &keys {
                state.died_in_batch.remove(key);
            }
        }
    }
}

impl Quarantine {
    pub fn new() -> Self {
        Quarantine::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the message `key`, delivered `deliveries` times, goes.
    pub fn verdict(&self, key: &str, deliveries: u64, max_deliveries: u64) -> Verdict {
        let mut state = self.lock();
        state.settle();
        if deliveries <= max_deliveries {
            return Verdict::Batch;
        }
        if state.died_alone.remove(key) {
            state.died_in_batch.remove(key);
            return Verdict::Killer;
        }
        if state.died_in_batch.contains(key) { Verdict::Alone } else { Verdict::Batch }
    }

    /// Marks `keys` as in hand (`alone`: one message tried by itself).
    pub fn hold(&self, keys: impl IntoIterator<Item = String>, alone: bool) -> Held {
        let mut state = self.lock();
        state.settle();
        state.held = Some((keys.into_iter().collect(), alone));
        Held { quarantine: self.clone() }
    }
}

impl State {
    /// Keys still held from before: their holder died.
    fn settle(&mut self) {
        if let Some((keys, alone)) = self.held.take() {
            let died = if alone { &mut self.died_alone } else { &mut self.died_in_batch };
            died.extend(keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_a_message_held_alone_by_a_dying_task_is_a_killer() {
        let q = Quarantine::new();
        // Counts alone mean nothing: nothing died.
        assert_eq!(q.verdict("a", 9, 5), Verdict::Batch);
        q.hold(keys(&["a", "b"]), false).release();
        assert_eq!(q.verdict("a", 9, 5), Verdict::Batch);

        // The task dies holding a batch (the Held is dropped unreleased).
        drop(q.clone().hold(keys(&["a", "k", "b"]), false));
        assert_eq!(q.verdict("a", 5, 5), Verdict::Batch, "within max_deliveries: with the others");
        assert_eq!(q.verdict("a", 6, 5), Verdict::Alone);
        assert_eq!(q.verdict("k", 6, 5), Verdict::Alone);
        assert_eq!(q.verdict("z", 6, 5), Verdict::Batch, "not in the batch that died");
        // "a" tried alone, fine: forgotten.
        q.hold(keys(&["a"]), true).release();
        assert_eq!(q.verdict("a", 7, 5), Verdict::Batch);
        // "k" tried alone, and the task dies again: the killer.
        drop(q.hold(keys(&["k"]), true));
        assert_eq!(q.verdict("k", 7, 5), Verdict::Killer);
        // Told once; "b" is still only suspect.
        assert_eq!(q.verdict("k", 8, 5), Verdict::Batch);
        assert_eq!(q.verdict("b", 7, 5), Verdict::Alone);
    }
}
