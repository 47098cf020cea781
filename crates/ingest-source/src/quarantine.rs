use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Messages delivered more than `max_deliveries` times (SPEC §5) are
/// *suspects*: each is tried alone, so that it cannot take a batch down
/// with it, and remembered while it is tried. A suspect whose try never
/// finished — the source task died under it — is known to kill the source:
/// when it comes back it is dead-lettered without another try.
///
/// A message is tried before it is ever dead-lettered for its delivery
/// count, so deliveries that did not fail (a storage outage, a consumer's
/// own re-reads of its pending list after a lost connection) never send a
/// good message to the dead letters.
///
/// Shared by every incarnation of one source in a process (the supervisor
/// hands the same one to each restart); it does not survive the process.
#[derive(Clone, Debug, Default)]
pub struct Quarantine {
    trying: Arc<Mutex<HashSet<String>>>,
}

/// What to do with a suspect.
#[derive(Debug)]
pub enum Suspect {
    /// Try it alone; call [`Trial::finished`] once the try returned.
    Try(Trial),
    /// A try of it never finished: dead-letter it.
    Killer,
}

/// A suspect being tried. Dropped without [`finished`](Self::finished)
/// (the task panicked or was aborted), it stays marked as a killer.
#[derive(Debug)]
pub struct Trial {
    quarantine: Quarantine,
    key: String,
}

impl Trial {
    /// The try returned (whatever its result): the message did not kill the source.
    pub fn finished(self) {
        self.quarantine.lock().remove(&self.key);
    }
}

impl Quarantine {
    pub fn new() -> Self {
        Quarantine::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.trying.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a try of the suspect `key`, unless an earlier try never finished.
    pub fn begin(&self, key: &str) -> Suspect {
        if !self.lock().insert(key.to_owned()) {
            return Suspect::Killer;
        }
        Suspect::Try(Trial { quarantine: self.clone(), key: key.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_try_that_never_finished_marks_a_killer() {
        let q = Quarantine::new();
        let Suspect::Try(trial) = q.begin("s:1") else { panic!("first try") };
        trial.finished();
        let Suspect::Try(trial) = q.clone().begin("s:1") else { panic!("a finished try is forgotten") };
        drop(trial); // the task died under it
        assert!(matches!(q.begin("s:1"), Suspect::Killer));
        assert!(matches!(q.begin("s:2"), Suspect::Try(_)), "others are unaffected");
    }
}
