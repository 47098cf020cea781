use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ErrorCode, IngestReport, RecordOutcome};

/// Body of the answer to `POST /v1/usage` and `POST /v1/usage/batch` (SPEC §2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IngestionResponse {
    /// The record's id (single) or the batch id (batch).
    pub request_id: Uuid,
    pub status: ResponseStatus,
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub errors: Vec<RecordError>,
    #[serde(with = "time::serde::rfc3339")]
    pub processed_at: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStatus {
    /// Every record is stored (some may have been stored before).
    Success,
    /// Some records are stored, some were rejected.
    Partial,
    /// No record was stored.
    Failed,
}

/// One problem of one record, by its index in the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    pub index: usize,
    pub request_id: Option<Uuid>,
    pub field: String,
    pub code: ErrorCode,
    pub message: String,
}

impl IngestionResponse {
    pub fn new(request_id: Uuid, report: &IngestReport, processed_at: OffsetDateTime) -> Self {
        let (accepted, duplicates, rejected) = (report.accepted(), report.duplicates(), report.rejected());
        let status = match (rejected, accepted + duplicates) {
            (0, _) => ResponseStatus::Success,
            (_, 0) => ResponseStatus::Failed,
            _ => ResponseStatus::Partial,
        };
        let errors = report
            .outcomes
            .iter()
            .enumerate()
            .filter_map(|(index, outcome)| match outcome {
                RecordOutcome::Rejected(r) => Some((index, r)),
                _ => None,
            })
            .flat_map(|(index, r)| {
                r.errors.iter().map(move |e| RecordError {
                    index,
                    request_id: r.request_id,
                    field: e.field.clone(),
                    code: e.code,
                    message: e.message.clone(),
                })
            })
            .collect();
        IngestionResponse { request_id, status, accepted, duplicates, rejected, errors, processed_at }
    }
}
