use std::future::Future;

use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::decode::{self, Rejected};
use crate::validate::Context;
use crate::{ErrorCode, FieldError, Source, UsageRecord, ValidationConfig};

/// What storage did with one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Committed now.
    Inserted,
    /// Already stored under the same (`organization_id`, `request_id`), or
    /// repeated earlier in the same submission; nothing was written.
    Duplicate,
    /// The database refused this record (it passed validation, yet the
    /// database would not store it); nothing of it was written. The other
    /// records of the submission are not affected. The text says why.
    Refused(String),
}

/// Why storage did not take a submission. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The writer's queue is full; try again shortly.
    #[error("the writer queue is full")]
    Overloaded,
    /// The database failed; the transaction was rolled back.
    #[error("storage is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The writer has stopped (the process is shutting down).
    #[error("the writer has stopped")]
    Closed,
    /// The deadline passed while the submission was still queued: it was
    /// withdrawn before its transaction began, so nothing of it was or will
    /// be committed. `secs` is the caller's time budget.
    #[error("the records were not committed within {secs} s")]
    TimedOut { secs: u64 },
}

/// Durable storage for records, as the adapters see it.
///
/// `store` resolves only after the records are committed, with one outcome
/// per record in order; on error nothing was committed.
pub trait RecordSink: Send + Sync + 'static {
    fn store(
        &self,
        records: Vec<UsageRecord>,
        source: Source,
    ) -> impl Future<Output = Result<Vec<StoreOutcome>, SinkError>> + Send;

    /// [`store`](Self::store) with a deadline for the *start* of the
    /// commit: a submission still queued at `deadline` is withdrawn and
    /// fails with [`SinkError::TimedOut`] (nothing committed, ever); one
    /// whose transaction has begun is always waited for, so its answer is
    /// the truth. A sink that never queues may ignore the deadline, as this
    /// default does.
    fn store_before(
        &self,
        records: Vec<UsageRecord>,
        source: Source,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Vec<StoreOutcome>, SinkError>> + Send {
        let _ = deadline;
        self.store(records, source)
    }
}

/// A message a stream source could not ingest, kept for inspection and replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub source: Source,
    /// The message's identity at its source (NATS: `stream:sequence@ms`;
    /// Redis: `key:entry-id`); a message dead-lettered twice is one row
    /// whose delivery count grows.
    pub message_key: String,
    pub payload: Vec<u8>,
    /// Why it was refused, for people (JSON list of field errors, or a sentence).
    pub error: String,
}

/// Where messages that cannot be ingested are kept (`ingest-storage`
/// implements it over the `dead_letters` table).
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Records `letter`; the same `(source, message_key)` again bumps its
    /// delivery count instead of adding a row.
    fn put(&self, letter: &DeadLetter) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// When a caller stops waiting for a commit to begin, and the budget it
/// had (reported in [`SinkError::TimedOut`]).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: std::time::Instant,
    pub secs: u64,
}

/// The fate of one record of a submission.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordOutcome {
    Accepted { request_id: Uuid },
    Duplicate { request_id: Uuid },
    Rejected(Rejected),
}

/// Outcomes of a submission, by index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestReport {
    pub outcomes: Vec<RecordOutcome>,
}

impl IngestReport {
    pub fn accepted(&self) -> usize {
        self.count(|o| matches!(o, RecordOutcome::Accepted { .. }))
    }

    pub fn duplicates(&self) -> usize {
        self.count(|o| matches!(o, RecordOutcome::Duplicate { .. }))
    }

    pub fn rejected(&self) -> usize {
        self.count(|o| matches!(o, RecordOutcome::Rejected(_)))
    }

    fn count(&self, f: impl Fn(&RecordOutcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(o)).count()
    }
}

/// The one ingestion path: decode → validate → store → outcome per record.
/// HTTP, NATS and Redis all go through it.
#[derive(Clone, Debug)]
pub struct Ingestor<S> {
    sink: S,
    validation: ValidationConfig,
}

impl<S: RecordSink> Ingestor<S> {
    pub fn new(sink: S, validation: ValidationConfig) -> Self {
        Ingestor { sink, validation }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Decodes and validates raw records. `default_id(i)` gives the id of the
    /// record at index `i` when it has none.
    pub fn decode(
        &self,
        raw: &[&RawValue],
        mut default_id: impl FnMut(usize) -> Uuid,
    ) -> Vec<Result<UsageRecord, Rejected>> {
        self.decode_with(raw, |i, _| default_id(i))
    }

    /// [`decode`](Self::decode), where the default id may depend on the
    /// decoded record (see [`decode::record_with`]).
    pub fn decode_with(
        &self,
        raw: &[&RawValue],
        mut default_id: impl FnMut(usize, &UsageRecord) -> Uuid,
    ) -> Vec<Result<UsageRecord, Rejected>> {
        let ctx = Context::new(&self.validation, OffsetDateTime::now_utc());
        raw.iter().enumerate().map(|(i, r)| decode::record_with(r, &ctx, |rec| default_id(i, rec))).collect()
    }

    /// Stores the valid records of `decoded` as one submission and reports
    /// every record's outcome. On error nothing was stored.
    pub async fn store(
        &self,
        decoded: Vec<Result<UsageRecord, Rejected>>,
        source: Source,
    ) -> Result<IngestReport, SinkError> {
        self.store_inner(decoded, source, None).await
    }

    /// [`store`](Self::store), withdrawn when its commit has not begun by
    /// `deadline` (see [`RecordSink::store_before`]).
    pub async fn store_before(
        &self,
        decoded: Vec<Result<UsageRecord, Rejected>>,
        source: Source,
        deadline: Deadline,
    ) -> Result<IngestReport, SinkError> {
        self.store_inner(decoded, source, Some(deadline)).await
    }

    async fn store_inner(
        &self,
        decoded: Vec<Result<UsageRecord, Rejected>>,
        source: Source,
        deadline: Option<Deadline>,
    ) -> Result<IngestReport, SinkError> {
        let mut outcomes = Vec::with_capacity(decoded.len());
        let mut valid = Vec::with_capacity(decoded.len());
        for item in decoded {
            match item {
                Ok(record) => {
                    outcomes.push(RecordOutcome::Accepted { request_id: record.request_id });
                    valid.push(record);
                }
                Err(rejected) => outcomes.push(RecordOutcome::Rejected(rejected)),
            }
        }
        if valid.is_empty() {
            return Ok(IngestReport { outcomes });
        }
        let stored = match deadline {
            Some(deadline) => self.sink.store_before(valid, source, deadline).await?,
            None => self.sink.store(valid, source).await?,
        };
        let mut stored = stored.into_iter();
        for outcome in &mut outcomes {
            if let RecordOutcome::Accepted { request_id } = *outcome {
                match stored.next() {
                    Some(StoreOutcome::Duplicate) => *outcome = RecordOutcome::Duplicate { request_id },
                    Some(StoreOutcome::Refused(why)) => {
                        *outcome = RecordOutcome::Rejected(Rejected {
                            request_id: Some(request_id),
                            errors: vec![FieldError::new(
                                "",
                                ErrorCode::StorageRefused,
                                format!("the database refused this record: {why}"),
                            )],
                        })
                    }
                    Some(StoreOutcome::Inserted) | None => {}
                }
            }
        }
        Ok(IngestReport { outcomes })
    }

    /// [`decode`](Self::decode) then [`store`](Self::store).
    pub async fn ingest(
        &self,
        raw: &[&RawValue],
        source: Source,
        default_id: impl FnMut(usize) -> Uuid,
    ) -> Result<IngestReport, SinkError> {
        let decoded = self.decode(raw, default_id);
        self.store(decoded, source).await
    }
}
