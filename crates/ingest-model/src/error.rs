use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// Stable, machine-readable reason a record was rejected.
        ///
        /// The serialized names are part of the API (see `docs/errors.md`):
        /// variants may be added, never renamed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            pub fn from_code(code: &str) -> Option<Self> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// The record is not a JSON object, or is not well formed as one (e.g. a key appears twice).
    InvalidRecord => "invalid_record",
    /// A required field is absent or `null`.
    MissingField => "missing_field",
    /// A field has the wrong JSON type.
    InvalidType => "invalid_type",
    /// `request_id` is not a UUID.
    InvalidUuid => "invalid_uuid",
    /// `timestamp` is not an RFC 3339 date-time, or its UTC form falls outside years 0001–9999.
    InvalidTimestamp => "invalid_timestamp",
    /// A number that must not be negative is negative.
    NegativeNumber => "negative_number",
    /// An integer field holds a fractional number.
    NotAnInteger => "not_an_integer",
    /// A number is outside the allowed range (token counts above 2^63−1, `context_window` below 1).
    OutOfRange => "out_of_range",
    /// A string is shorter than its minimum length (usually: empty).
    TooShort => "too_short",
    /// A string is longer than its maximum length (counted in characters).
    TooLong => "too_long",
    /// A string field contains control characters (U+0000–U+001F, U+007F–U+009F).
    ControlCharacters => "control_characters",
    /// `tags` has more items than allowed.
    TooManyItems => "too_many_items",
    /// `metadata` is larger than allowed when serialized.
    TooLarge => "too_large",
    /// `usage.total_tokens` is not `prompt_tokens + completion_tokens`.
    TokenSumMismatch => "token_sum_mismatch",
    /// `usage.cached_tokens` exceeds `usage.prompt_tokens`.
    CachedExceedsPrompt => "cached_exceeds_prompt",
    /// `usage.cached_tokens + usage.cache_write_tokens` exceeds `usage.prompt_tokens`.
    CacheExceedsPrompt => "cache_exceeds_prompt",
    /// `usage.reasoning_tokens` exceeds `usage.completion_tokens`.
    ReasoningExceedsCompletion => "reasoning_exceeds_completion",
    /// `performance.time_to_first_token_ms` exceeds `performance.latency_ms`.
    TtftExceedsLatency => "ttft_exceeds_latency",
    /// `timestamp` is further in the future than `validation.max_future_skew_secs` allows.
    TimestampInFuture => "timestamp_in_future",
    /// The caller may not write records for this organization.
    OrganizationForbidden => "organization_forbidden",
    /// A `metadata` key or string value contains U+0000, which PostgreSQL's `jsonb` cannot store.
    NulCharacter => "nul_character",
    /// The database refused the record although it passed validation; the
    /// other records of the request, and of other requests, are not affected.
    StorageRefused => "storage_refused",
    /// An OTLP span that carries token usage has no valid trace id (16
    /// bytes) or span id (8 bytes), from which its record's id derives.
    InvalidSpanId => "invalid_span_id",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one field of one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path of the field (`usage.total_tokens`, `tags[3]`); empty for the record itself.
    pub field: String,
    pub code: ErrorCode,
    /// A sentence for people; not stable.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), code, message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.code, self.message)
        } else {
            write!(f, "{}: {}: {}", self.field, self.code, self.message)
        }
    }
}
