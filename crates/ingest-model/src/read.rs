//! Reading usage back (SPEC §10): what the read endpoints ask storage and
//! what storage answers. [`UsageReader`] is implemented by
//! `ingest-storage`'s `Store` and called by `ingest-http`.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// Which rows of one organization a read covers. `from` is inclusive, `to`
/// exclusive; the other fields are exact matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub organization_id: String,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
}

/// A row's place in the order of `GET /v1/usage/records`: (`occurred_at`,
/// `request_id`), newest first. A page continues strictly *after* (older
/// than) the last row of the previous page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    pub occurred_at: OffsetDateTime,
    pub request_id: Uuid,
}

/// A stored row, with the columns of SPEC §6 under their names, in the
/// order of the CSV export (docs/api.md).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoredRecord {
    pub organization_id: String,
    pub request_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub provider: String,
    pub model_name: String,
    pub model_version: Option<String>,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cached_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub context_window: Option<i64>,
    pub latency_ms: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
    pub cost_nano_usd: Option<i64>,
    pub price_id: Option<i64>,
    pub pricing: String,
    pub tags: serde_json::Value,
    pub metadata: Option<serde_json::Value>,
    pub source: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

impl StoredRecord {
    /// The row's place in the order of the records endpoint.
    pub fn position(&self) -> RecordPosition {
        RecordPosition { occurred_at: self.occurred_at, request_id: self.request_id }
    }
}

/// A summary's bucket width (UTC-aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketWidth {
    Minute,
    Hour,
    Day,
}

impl BucketWidth {
    pub fn parse(s: &str) -> Option<BucketWidth> {
        match s {
            "1m" => Some(BucketWidth::Minute),
            "1h" => Some(BucketWidth::Hour),
            "1d" => Some(BucketWidth::Day),
            _ => None,
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            BucketWidth::Minute => 60,
            BucketWidth::Hour => 3_600,
            BucketWidth::Day => 86_400,
        }
    }

    /// The start of the bucket holding `unix_seconds`.
    pub fn floor(self, unix_seconds: i64) -> i64 {
        unix_seconds - unix_seconds.rem_euclid(self.seconds())
    }
}

/// The fields a summary groups by (none: one result per bucket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBy {
    pub provider: bool,
    pub model: bool,
    pub project_id: bool,
    pub user_id: bool,
}

/// A summary over the buckets starting in `[start, end)` (Unix seconds,
/// `start` aligned to `width`). `filter.from`/`to` are not used: the
/// buckets are the range, each whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryQuery {
    pub filter: UsageFilter,
    pub start: i64,
    pub end: i64,
    pub width: BucketWidth,
    pub group_by: GroupBy,
}

/// Sums over a group of rows. Wide enough that no sum of stored values
/// overflows; token sums of one rollup row saturate at 2^63 − 1 (migration
/// m0005).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: i128,
    pub prompt_tokens: i128,
    pub completion_tokens: i128,
    pub total_tokens: i128,
    pub cached_tokens: i128,
    pub cache_write_tokens: i128,
    pub reasoning_tokens: i128,
    pub cost_nano_usd: i128,
    pub unpriced_requests: i128,
}

/// One result of one bucket: the group's values (those grouped by; `None`
/// also where a row has none, as for `project_id`) and its sums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SummaryRow {
    pub bucket_start: i64,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    pub totals: Totals,
}

/// A read failed; nothing the caller did (HTTP: 503).
#[derive(Debug, thiserror::Error)]
#[error("storage is unavailable: {0}")]
pub struct ReadError(pub String);

pub type ReadFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ReadError>> + Send + 'a>>;

/// Stored usage, as the read endpoints see it.
pub trait UsageReader: Send + Sync + 'static {
    /// Up to `limit` rows of `filter`, newest first, strictly after `after`.
    fn records(
        &self,
        filter: UsageFilter,
        after: Option<RecordPosition>,
        limit: u32,
    ) -> ReadFuture<'_, Vec<StoredRecord>>;

    /// The non-empty (bucket, group) results of `query`, in bucket order.
    fn summary(&self, query: SummaryQuery) -> ReadFuture<'_, Vec<SummaryRow>>;
}
