use std::future::Future;

use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::decode::{self, Rejected};
use crate::validate::Context;
use crate::{Source, UsageRecord, ValidationConfig};

/// What storage did with one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Committed now.
    Inserted,
    /// Already stored under the same (`organization_id`, `request_id`), or
    /// repeated earlier in the same submission; nothing was written.
    Duplicate,
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
        let stored = self.sink.store(valid, source).await?;
        let mut stored = stored.into_iter();
        for outcome in &mut outcomes {
            if let RecordOutcome::Accepted { request_id } = *outcome
                && stored.next() == Some(StoreOutcome::Duplicate)
            {
                *outcome = RecordOutcome::Duplicate { request_id };
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
