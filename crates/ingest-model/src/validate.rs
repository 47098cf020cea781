//! The rules a decoded record must satisfy (SPEC §1).
//!
//! Field rules are garde `custom` rules defined here, so that each failure
//! carries one of our stable [`ErrorCode`]s: a garde error's message is
//! written as `"<code>: <sentence>"` and split again in [`validate`]. garde
//! gives us the traversal and the field paths.

use garde::Validate as _;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::{ErrorCode, FieldError, UsageRecord};

/// Settings of the `[validation]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// How far in the future a record's `timestamp` may be, in seconds.
    pub max_future_skew_secs: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig { max_future_skew_secs: 300 }
    }
}

/// What the rules need besides the record: the clock and the limits.
#[derive(Clone, Debug)]
pub struct Context {
    pub now: OffsetDateTime,
    pub max_future_skew: Duration,
}

impl Context {
    pub fn new(config: &ValidationConfig, now: OffsetDateTime) -> Self {
        let secs = i64::try_from(config.max_future_skew_secs).unwrap_or(i64::MAX);
        Context { now, max_future_skew: Duration::seconds(secs) }
    }
}

/// Largest token count accepted: counts are stored in signed 64-bit columns.
pub const MAX_TOKENS: u64 = i64::MAX as u64;
/// Largest serialized `metadata` object, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest number of `tags`.
pub const MAX_TAGS: usize = 64;

/// Checks every rule and returns every failure (in garde's traversal order).
///
/// `skip` names fields that already failed to decode: a rule on such a field,
/// or one that compares against it, would only report noise about the
/// placeholder the decoder put there, so it is left out.
pub fn validate(record: &UsageRecord, ctx: &Context, skip: &[String]) -> Vec<FieldError> {
    let Err(report) = record.validate_with(ctx) else {
        return Vec::new();
    };
    report
        .into_inner()
        .into_iter()
        .filter_map(|(path, error)| {
            let field = path.to_string();
            if skip.iter().any(|s| depends_on(&field, s)) {
                return None;
            }
            Some(split(field, error.message()))
        })
        .collect()
}

/// Whether the rule reported at `field` reads `failed`.
fn depends_on(field: &str, failed: &str) -> bool {
    let same_or_inside =
        |a: &str, b: &str| a == b || (a.starts_with(b) && matches!(a.as_bytes()[b.len()], b'.' | b'['));
    if same_or_inside(field, failed) {
        return true;
    }
    let reads: &[&str] = match field {
        "usage.total_tokens" => &["usage.prompt_tokens", "usage.completion_tokens"],
        "usage.cached_tokens" => &["usage.prompt_tokens"],
        "usage.cache_write_tokens" => &["usage.prompt_tokens", "usage.cached_tokens"],
        "usage.reasoning_tokens" => &["usage.completion_tokens"],
        "performance.time_to_first_token_ms" => &["performance.latency_ms"],
        _ => &[],
    };
    reads.iter().any(|r| same_or_inside(r, failed))
}

fn split(field: String, message: &str) -> FieldError {
    match message.split_once(": ").and_then(|(c, m)| Some((ErrorCode::from_code(c)?, m))) {
        Some((code, message)) => FieldError::new(field, code, message),
        // Only our own rules are used, so this is unreachable in practice; a
        // foreign garde rule still yields a usable error rather than a panic.
        None => FieldError::new(field, ErrorCode::InvalidRecord, message),
    }
}

fn fail(code: ErrorCode, message: std::fmt::Arguments<'_>) -> garde::Result {
    Err(garde::Error::new(format!("{code}: {message}")))
}

fn check_text(value: &str, min: usize, max: usize) -> garde::Result {
    // Counting stops just past the limit: a 10 MiB string costs no more than a short one.
    let chars = value.chars().take(max + 1).count();
    if chars < min {
        return fail(ErrorCode::TooShort, format_args!("must be at least {min} character(s) long"));
    }
    if chars > max {
        return fail(ErrorCode::TooLong, format_args!("must be at most {max} characters long"));
    }
    Ok(())
}

fn check_identifier(value: &str, min: usize, max: usize) -> garde::Result {
    check_text(value, min, max)?;
    if value.chars().any(char::is_control) {
        return fail(ErrorCode::ControlCharacters, format_args!("must not contain control characters"));
    }
    Ok(())
}

/// The rule for identifiers such as `organization_id` (1 to 256 Unicode
/// scalar values, no control characters), for places outside a record that
/// name one, e.g. the admin API's paths. `Err` says what is wrong.
pub fn check_organization_id(value: &str) -> Result<(), String> {
    check_identifier(value, 1, 256).map_err(|e| message_of(&e))
}

/// The rule for free-form labels outside a record (at most 256 Unicode
/// scalar values, no control characters).
pub fn check_label(value: &str) -> Result<(), String> {
    check_identifier(value, 0, 256).map_err(|e| message_of(&e))
}

fn message_of(e: &garde::Error) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((_, message)) => message.to_owned(),
        None => text,
    }
}

pub(crate) fn identifier<C>(min: usize, max: usize) -> impl FnOnce(&str, &C) -> garde::Result {
    move |value, _| check_identifier(value, min, max)
}

pub(crate) fn optional_identifier<C>(max: usize) -> impl FnOnce(&Option<String>, &C) -> garde::Result {
    move |value, _| value.as_deref().map_or(Ok(()), |v| check_identifier(v, 0, max))
}

pub(crate) fn max_items<C>(max: usize) -> impl FnOnce(&Vec<String>, &C) -> garde::Result {
    move |value, _| {
        if value.len() > max {
            return fail(ErrorCode::TooManyItems, format_args!("has {} items; at most {max} are allowed", value.len()));
        }
        Ok(())
    }
}

pub(crate) fn positive<C>(value: &Option<u64>, _: &C) -> garde::Result {
    match value {
        Some(0) => fail(ErrorCode::OutOfRange, format_args!("must be at least 1")),
        _ => Ok(()),
    }
}

pub(crate) fn metadata_size<C>(value: &Option<serde_json::Map<String, serde_json::Value>>, _: &C) -> garde::Result {
    let Some(map) = value else { return Ok(()) };
    let len = serialized_len(map);
    if len > MAX_METADATA_BYTES {
        return fail(
            ErrorCode::TooLarge,
            format_args!("is {len} bytes when serialized; at most {MAX_METADATA_BYTES} are allowed"),
        );
    }
    Ok(())
}

fn serialized_len(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail and a map of JSON values always serializes.
    let _ = serde_json::to_writer(&mut counter, map);
    counter.0
}

pub(crate) fn token_sum<C>(prompt: u64, completion: u64) -> impl FnOnce(&u64, &C) -> garde::Result {
    move |total, _| match prompt.checked_add(completion) {
        Some(sum) if sum == *total => Ok(()),
        Some(_) => fail(
            ErrorCode::TokenSumMismatch,
            format_args!(
                "total_tokens ({total}) must equal prompt_tokens ({prompt}) + completion_tokens ({completion})"
            ),
        ),
        None => fail(
            ErrorCode::TokenSumMismatch,
            format_args!(
                "prompt_tokens ({prompt}) + completion_tokens ({completion}) overflows; total_tokens is {total}"
            ),
        ),
    }
}

pub(crate) fn cached_within<C>(prompt: u64) -> impl FnOnce(&Option<u64>, &C) -> garde::Result {
    move |cached, _| match *cached {
        Some(cached) if cached > prompt => fail(
            ErrorCode::CachedExceedsPrompt,
            format_args!("cached_tokens ({cached}) must not exceed prompt_tokens ({prompt})"),
        ),
        _ => Ok(()),
    }
}

/// Cached and cache-write tokens are both part of the prompt. A cached
/// count that alone exceeds the prompt is reported on `cached_tokens` only.
pub(crate) fn cache_write_within<C>(
    prompt: u64,
    cached: Option<u64>,
) -> impl FnOnce(&Option<u64>, &C) -> garde::Result {
    move |write, _| {
        let (Some(write), cached) = (*write, cached.unwrap_or(0)) else { return Ok(()) };
        if cached > prompt || cached.checked_add(write).is_some_and(|sum| sum <= prompt) {
            return Ok(());
        }
        fail(
            ErrorCode::CacheExceedsPrompt,
            format_args!(
                "cached_tokens ({cached}) + cache_write_tokens ({write}) must not exceed prompt_tokens ({prompt})"
            ),
        )
    }
}

pub(crate) fn reasoning_within<C>(completion: u64) -> impl FnOnce(&Option<u64>, &C) -> garde::Result {
    move |reasoning, _| match *reasoning {
        Some(reasoning) if reasoning > completion => fail(
            ErrorCode::ReasoningExceedsCompletion,
            format_args!("reasoning_tokens ({reasoning}) must not exceed completion_tokens ({completion})"),
        ),
        _ => Ok(()),
    }
}

pub(crate) fn ttft_within<C>(latency: Option<f64>) -> impl FnOnce(&Option<f64>, &C) -> garde::Result {
    move |ttft, _| match (*ttft, latency) {
        (Some(ttft), Some(latency)) if ttft > latency => fail(
            ErrorCode::TtftExceedsLatency,
            format_args!("time_to_first_token_ms ({ttft}) must not exceed latency_ms ({latency})"),
        ),
        _ => Ok(()),
    }
}

pub(crate) fn not_in_future(value: &OffsetDateTime, ctx: &Context) -> garde::Result {
    // A skew that reaches past the representable range allows everything
    // (`config check` refuses such settings; this keeps them from panicking).
    let Some(limit) = ctx.now.checked_add(ctx.max_future_skew) else { return Ok(()) };
    if *value > limit {
        let ahead = (*value - ctx.now).whole_seconds();
        return fail(
            ErrorCode::TimestampInFuture,
            format_args!("is {ahead} s in the future; at most {} s are allowed", ctx.max_future_skew.whole_seconds()),
        );
    }
    Ok(())
}
