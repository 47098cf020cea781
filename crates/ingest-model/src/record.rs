use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A decoded usage record. Strings are as stored: `provider` is trimmed and
/// lower-cased, `timestamp` is in UTC. Whether it satisfies the rules is
/// decided by [`crate::validate::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, garde::Validate)]
#[garde(context(crate::validate::Context as ctx))]
pub struct UsageRecord {
    #[garde(skip)]
    pub request_id: Uuid,
    #[garde(custom(crate::validate::not_in_future))]
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// Checked as sent by the decoder (no control characters, 1 to 64
    /// characters once trimmed); stored trimmed and lower-cased, which may
    /// lengthen it (`İ` → `i̇`).
    #[garde(skip)]
    pub provider: String,
    #[garde(dive)]
    pub model: ModelInfo,
    #[garde(custom(crate::validate::identifier(1, 256)))]
    pub organization_id: String,
    #[garde(custom(crate::validate::optional_identifier(256)))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[garde(custom(crate::validate::optional_identifier(256)))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[garde(dive)]
    pub usage: TokenUsage,
    #[garde(dive)]
    #[serde(default)]
    pub performance: Performance,
    #[garde(custom(crate::validate::max_items(64)), inner(custom(crate::validate::identifier(1, 128))))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[garde(custom(crate::validate::metadata_size))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// What the record costs (SPEC §9): set by storage from the price in
    /// force at `timestamp`, just before the commit; never read from input.
    #[garde(skip)]
    #[serde(skip)]
    pub cost: Option<Cost>,
}

/// A record's cost: exact nano-USD (10⁻⁹ USD) under one stored price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// The `prices` row used.
    pub price_id: i64,
    pub nano_usd: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, garde::Validate)]
#[garde(context(crate::validate::Context))]
pub struct ModelInfo {
    #[garde(custom(crate::validate::identifier(1, 256)))]
    pub name: String,
    #[garde(custom(crate::validate::optional_identifier(128)))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[garde(custom(crate::validate::positive))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
}

/// Token counts. Every count is at most `i64::MAX` (checked while decoding) so
/// it fits a 64-bit signed database column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, garde::Validate)]
#[garde(context(crate::validate::Context))]
pub struct TokenUsage {
    #[garde(skip)]
    pub prompt_tokens: u64,
    #[garde(skip)]
    pub completion_tokens: u64,
    #[garde(custom(crate::validate::token_sum(self.prompt_tokens, self.completion_tokens)))]
    pub total_tokens: u64,
    #[garde(custom(crate::validate::cached_within(self.prompt_tokens)))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to a prompt cache (Anthropic's cache creation).
    #[garde(custom(crate::validate::cache_write_within(self.prompt_tokens, self.cached_tokens)))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    #[garde(custom(crate::validate::reasoning_within(self.completion_tokens)))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, garde::Validate)]
#[garde(context(crate::validate::Context))]
pub struct Performance {
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[garde(custom(crate::validate::ttft_within(self.latency_ms)))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_ms: Option<f64>,
}

/// Where a record entered ingestd; stored in the `source` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Http,
    Nats,
    Redis,
    /// OTLP/HTTP trace export (`POST /v1/traces`, SPEC §11).
    Otlp,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Nats => "nats",
            Source::Redis => "redis",
            Source::Otlp => "otlp",
        }
    }
}
