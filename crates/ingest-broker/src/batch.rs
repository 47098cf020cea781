use model::decode::{self, Rejected};
use model::{
    DeadLetter, DeadLetterSink, FieldError, Ingestor, RecordOutcome, RecordSink, SinkError, Source, UsageRecord, ids,
};
use serde::Serialize;
use uuid::Uuid;

/// One message of a fetch.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// The message's identity at its source: NATS `stream:sequence@ms`
    /// ([`nats_key`]), Redis `key:entry-id`. Derived record ids and dead letters are keyed by it.
    pub key: &'a str,
    /// When the message entered the stream (milliseconds since the epoch),
    /// when the source knows it *from the message itself*, so that every
    /// redelivery sees the same value: the Redis entry id's time part, the
    /// JetStream publish time. Always `key_unix_ms(source, key)`. It makes
    /// derived ids time-ordered (see [`record_id`]).
    pub unix_ms: Option<u64>,
    pub payload: &'a [u8],
}

/// What became of one message of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Every record is stored (now or before).
    Stored { accepted: usize, duplicates: usize },
    /// Valid records are stored; the message went to the dead-letter table
    /// because some records failed validation.
    Partial { accepted: usize, duplicates: usize, rejected: usize },
    /// Not a valid document (or no record in it): dead-lettered whole.
    DeadLettered,
}

/// The outcome of [`process`], one [`Fate`] per message in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub fates: Vec<Fate>,
}

impl BatchReport {
    /// (accepted, duplicate, rejected) records over the batch.
    pub fn records(&self) -> (usize, usize, usize) {
        self.fates.iter().fold((0, 0, 0), |(a, d, r), fate| match *fate {
            Fate::Stored { accepted, duplicates } => (a + accepted, d + duplicates, r),
            Fate::Partial { accepted, duplicates, rejected } => (a + accepted, d + duplicates, r + rejected),
            Fate::DeadLettered => (a, d, r),
        })
    }

    /// Messages written to the dead-letter table.
    pub fn dead_letters(&self) -> usize {
        self.fates.iter().filter(|f| !matches!(f, Fate::Stored { .. })).count()
    }
}

/// The id of the record at `index` of the message `key` when it has no
/// `request_id`. Deterministic, so a redelivery maps to the same row.
///
/// With `unix_ms` the id is a UUID v8 whose first 48 bits are that time (then
/// a hash of the identity), so ids of a stream arrive in nearly ascending
/// order and the unique index grows at its end, as with v7; without it, a
/// UUID v5 of the identity.
pub fn record_id(source: Source, key: &str, unix_ms: Option<u64>, index: usize) -> Uuid {
    let index = index.to_string();
    let parts: [&[u8]; 3] = [source.as_str().as_bytes(), key.as_bytes(), index.as_bytes()];
    match unix_ms {
        Some(ms) => ids::derived_ordered(ms, &parts),
        None => ids::derived(&parts),
    }
}

/// The time part of a Redis entry id (`<ms>-<seq>`).
pub fn entry_id_ms(entry_id: &str) -> Option<u64> {
    entry_id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

/// The [`Incoming::unix_ms`] of a message of `source` whose key is `key`:
/// the entry id's time for Redis (`<stream key>:<ms>-<seq>`), the publish
/// time for NATS (`<stream>:<sequence>@<published ms>`). Sources and
/// `ingestd dlq replay` both use it, so a replayed message derives the same
/// ids as its first delivery did.
pub fn key_unix_ms(source: Source, key: &str) -> Option<u64> {
    match source {
        Source::Redis => key.rsplit_once(':').and_then(|(_, id)| entry_id_ms(id)),
        Source::Nats => key.rsplit_once('@').and_then(|(_, ms)| ms.parse().ok()),
        Source::Http | Source::Otlp => None,
    }
}

/// The key of a JetStream message: stream, stream sequence, and the time the
/// server stored it (stable across redeliveries). The time makes derived ids
/// time-ordered, and keeps a sequence number reused by a re-created stream
/// from mapping new messages onto old rows.
pub fn nats_key(stream: &str, sequence: u64, published_unix_ms: u64) -> String {
    format!("{stream}:{sequence}@{published_unix_ms}")
}

/// Decodes, validates and stores a batch of messages as one submission, and
/// dead-letters what cannot be stored. Returns only after everything is
/// committed: the caller may then acknowledge every message of the batch.
/// On `Err` nothing may be acknowledged; retrying the same batch is safe.
pub async fn process<S, D>(
    ingestor: &Ingestor<S>,
    dead_letters: &D,
    source: Source,
    batch: &[Incoming<'_>],
) -> Result<BatchReport, SinkError>
where
    S: RecordSink,
    D: DeadLetterSink,
{
    enum Plan {
        Records { range: std::ops::Range<usize> },
        Invalid(String),
    }
    let mut decoded: Vec<Result<UsageRecord, Rejected>> = Vec::new();
    let mut plans = Vec::with_capacity(batch.len());
    for message in batch {
        // A panic while decoding one message (a defect of ingestd) makes
        // that message a dead letter; it never takes the source down, nor
        // the other messages of the batch with it.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode::stream_message(message.payload).map(|raw| {
                let records = ingestor.decode(&raw, |i| record_id(source, message.key, message.unix_ms, i));
                (raw.len(), records)
            })
        }));
        match attempt {
            Ok(Ok((0, _))) => plans.push(Plan::Invalid("the message holds no record".into())),
            Ok(Ok((_, records))) => {
                let start = decoded.len();
                decoded.extend(records);
                plans.push(Plan::Records { range: start..decoded.len() });
            }
            Ok(Err(e)) => plans.push(Plan::Invalid(e.to_string())),
            Err(panic) => {
                let what = model::panic_message(&*panic);
                tracing::error!(source = source.as_str(), key = message.key, panic = %what, "decoding a message panicked");
                metrics::counter!("ingestd_panics_total", "where" => source.as_str()).increment(1);
                plans.push(Plan::Invalid(format!(
                    "ingestd failed on this message (a defect; please report it): {what}"
                )));
            }
        }
    }
    let report = ingestor.store(decoded, source).await?;

    let mut fates = Vec::with_capacity(batch.len());
    for (message, plan) in batch.iter().zip(plans) {
        let (fate, error) = match plan {
            Plan::Invalid(error) => (Fate::DeadLettered, Some(error)),
            Plan::Records { range } => {
                let outcomes = &report.outcomes[range];
                let (accepted, duplicates, rejected) = count(outcomes);
                if rejected == 0 {
                    (Fate::Stored { accepted, duplicates }, None)
                } else if accepted + duplicates == 0 {
                    (Fate::DeadLettered, Some(rejection_text(outcomes)))
                } else {
                    (Fate::Partial { accepted, duplicates, rejected }, Some(rejection_text(outcomes)))
                }
            }
        };
        if let Some(error) = error {
            let letter =
                DeadLetter { source, message_key: message.key.to_owned(), payload: message.payload.to_vec(), error };
            dead_letters.put(&letter).await?;
            tracing::warn!(source = source.as_str(), key = message.key, error = %letter.error, "message dead-lettered");
        }
        fates.push(fate);
    }
    let report = BatchReport { fates };
    record_metrics(source, &report);
    Ok(report)
}

fn count(outcomes: &[RecordOutcome]) -> (usize, usize, usize) {
    outcomes.iter().fold((0, 0, 0), |(a, d, r), o| match o {
        RecordOutcome::Accepted { .. } => (a + 1, d, r),
        RecordOutcome::Duplicate { .. } => (a, d + 1, r),
        RecordOutcome::Rejected(_) => (a, d, r + 1),
    })
}

/// The dead letter's `error` for records that failed validation: a JSON list
/// of `{index, request_id, errors: [{field, code, message}]}`.
fn rejection_text(outcomes: &[RecordOutcome]) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        index: usize,
        request_id: Option<Uuid>,
        errors: &'a [FieldError],
    }
    let entries: Vec<Entry<'_>> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(index, o)| match o {
            RecordOutcome::Rejected(r) => Some(Entry { index, request_id: r.request_id, errors: &r.errors }),
            _ => None,
        })
        .collect();
    serde_json::to_string(&entries).unwrap_or_else(|e| format!("unprintable rejection: {e}"))
}

fn record_metrics(source: Source, report: &BatchReport) {
    let (accepted, duplicates, rejected) = report.records();
    let s = source.as_str();
    for (outcome, n) in [("accepted", accepted), ("duplicate", duplicates), ("dead_lettered", rejected)] {
        if n > 0 {
            metrics::counter!("ingestd_records_total", "source" => s, "outcome" => outcome).increment(n as u64);
        }
    }
    let dead = report.dead_letters();
    if dead > 0 {
        metrics::counter!("ingestd_dead_letters_total", "source" => s).increment(dead as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use model::{StoreOutcome, ValidationConfig};

    use super::*;

    /// Remembers (organization, request id) pairs; fails while `down`.
    #[derive(Default)]
    struct Sink {
        rows: Mutex<HashSet<(String, Uuid)>>,
        submissions: Mutex<usize>,
        down: AtomicBool,
    }

    impl RecordSink for &'static Sink {
        async fn store(&self, records: Vec<UsageRecord>, _: Source) -> Result<Vec<StoreOutcome>, SinkError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(SinkError::Overloaded);
            }
            *self.submissions.lock().unwrap() += 1;
            let mut rows = self.rows.lock().unwrap();
            Ok(records
                .into_iter()
                .map(|r| match rows.insert((r.organization_id, r.request_id)) {
                    true => StoreOutcome::Inserted,
                    false => StoreOutcome::Duplicate,
                })
                .collect())
        }
    }

    #[derive(Default)]
    struct Letters(Mutex<Vec<DeadLetter>>);

    impl DeadLetterSink for &'static Letters {
        async fn put(&self, letter: &DeadLetter) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(letter.clone());
            Ok(())
        }
    }

    fn record(org: &str, prompt: i64) -> String {
        let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
        format!(
            r#"{{"timestamp":"{now}","provider":"openai","model":{{"name":"gpt-4o"}},"organization_id":"{org}",
               "usage":{{"prompt_tokens":{prompt},"completion_tokens":5,"total_tokens":{}}},
               "performance":{{"latency_ms":100}}}}"#,
            prompt + 5
        )
    }

    fn leak<T: Default>() -> &'static T {
        Box::leak(Box::default())
    }

    #[tokio::test]
    async fn one_submission_per_batch_and_redelivery_is_duplicate() {
        let (sink, letters) = (leak::<Sink>(), leak::<Letters>());
        let ingestor = Ingestor::new(sink, ValidationConfig::default());
        let single = record("org-a", 10);
        let batch = format!(r#"{{"records":[{},{}]}}"#, record("org-a", 11), record("org-b", 12));
        let envelope = format!(r#"{{"message_id":"m1","event_type":"usage","payload":{}}}"#, record("org-c", 13));
        let messages = [
            Incoming { key: "S:1", unix_ms: None, payload: single.as_bytes() },
            Incoming { key: "S:2", unix_ms: Some(1_700_000_000_000), payload: batch.as_bytes() },
            Incoming { key: "S:3", unix_ms: None, payload: envelope.as_bytes() },
        ];
        let report = process(&ingestor, &letters, Source::Nats, &messages).await.unwrap();
        assert_eq!(report.records(), (4, 0, 0));
        assert_eq!(*sink.submissions.lock().unwrap(), 1, "all records of a batch in one submission");
        assert_eq!(report.dead_letters(), 0);

        let again = process(&ingestor, &letters, Source::Nats, &messages).await.unwrap();
        assert_eq!(again.records(), (0, 4, 0), "redelivered messages derive the same ids");
        assert_eq!(sink.rows.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn invalid_messages_and_records_are_dead_lettered_and_valid_ones_stored() {
        let (sink, letters) = (leak::<Sink>(), leak::<Letters>());
        let ingestor = Ingestor::new(sink, ValidationConfig::default());
        let mixed = format!(r#"{{"records":[{},{}]}}"#, record("org-a", 1), record("org-a", -1));
        let messages = [
            Incoming { key: "k:1", unix_ms: None, payload: b"{not json" },
            Incoming { key: "k:2", unix_ms: None, payload: mixed.as_bytes() },
            Incoming { key: "k:3", unix_ms: None, payload: br#"{"records":[]}"# },
        ];
        let report = process(&ingestor, &letters, Source::Redis, &messages).await.unwrap();
        assert_eq!(
            report.fates,
            [Fate::DeadLettered, Fate::Partial { accepted: 1, duplicates: 0, rejected: 1 }, Fate::DeadLettered]
        );
        let letters = letters.0.lock().unwrap();
        assert_eq!(letters.iter().map(|l| l.message_key.as_str()).collect::<Vec<_>>(), ["k:1", "k:2", "k:3"]);
        assert!(letters[0].error.starts_with("malformed JSON"), "{}", letters[0].error);
        assert!(letters[1].error.contains(r#""index":1"#) && letters[1].error.contains("usage.prompt_tokens"));
        assert_eq!(letters[1].payload, mixed.as_bytes());
        assert_eq!(sink.rows.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_storage_failure_dead_letters_nothing() {
        let (sink, letters) = (leak::<Sink>(), leak::<Letters>());
        sink.down.store(true, Ordering::Relaxed);
        let ingestor = Ingestor::new(sink, ValidationConfig::default());
        let good = record("org-a", 1);
        let messages = [
            Incoming { key: "k:1", unix_ms: None, payload: good.as_bytes() },
            Incoming { key: "k:2", unix_ms: None, payload: b"[]" },
        ];
        assert!(matches!(process(&ingestor, &letters, Source::Redis, &messages).await, Err(SinkError::Overloaded)));
        assert!(letters.0.lock().unwrap().is_empty(), "no dead letter before the batch can be committed");
    }

    #[test]
    fn ids_depend_on_source_key_and_index() {
        let a = record_id(Source::Redis, "llm:usage:1-0", Some(1), 0);
        assert_eq!(a, record_id(Source::Redis, "llm:usage:1-0", Some(1), 0));
        assert_ne!(a, record_id(Source::Redis, "llm:usage:1-0", Some(1), 1));
        assert_ne!(a, record_id(Source::Nats, "llm:usage:1-0", Some(1), 0));
        assert_eq!(record_id(Source::Nats, "S:1", None, 0).get_version_num(), 5);
    }

    #[test]
    fn redis_keys_carry_their_time() {
        assert_eq!(key_unix_ms(Source::Redis, "llm:usage:1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(key_unix_ms(Source::Redis, "llm:usage:garbage"), None);
        assert_eq!(key_unix_ms(Source::Nats, "LLM_USAGE:42"), None);
        let key = nats_key("LLM_USAGE", 42, 1_700_000_000_123);
        assert_eq!(key, "LLM_USAGE:42@1700000000123");
        assert_eq!(key_unix_ms(Source::Nats, &key), Some(1_700_000_000_123));
        assert_eq!(entry_id_ms("5-0"), Some(5));
    }
}
