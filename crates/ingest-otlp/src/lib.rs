//! OpenTelemetry in (SPEC §11): an OTLP/HTTP trace export request, in
//! protobuf or JSON, read into ingestd usage records.
//!
//! [`decode`] reads the body into the part of an `ExportTraceServiceRequest`
//! that ingestd maps (`wire.rs`: prost messages with OTLP's field numbers,
//! and lenient serde for OTLP/JSON: hex trace and span ids, integer enums,
//! 64-bit integers as decimal strings, unknown members ignored), after
//! bounding its spans and attributes. [`usage_spans`] maps each
//! span that carries token usage to a record in ingestd's own JSON (SPEC §1)
//! and counts the others; the caller hands those records to the one decoder
//! every source uses (`model::Ingestor::decode`), so an OTLP record obeys
//! exactly the rules a JSON record does and a bad attribute comes back as the
//! same coded error. [`response`] writes the `ExportTraceServiceResponse`.
//!
//! The attribute precedence (current GenAI names, then older spellings,
//! then OpenLLMetry's `llm.usage.*`) is the table in docs/otlp.md; it lives
//! here as data ([`ATTRIBUTES`]), read in one pass over each span.
//!
//! No IO, no async.

use std::fmt;

use prost::Message as _;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod wire;

pub use wire::{ExportRequest, MAX_ATTRIBUTES, MAX_SPANS};
use wire::{KeyValue, Span, Value as Any};

/// The body's encoding, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`
    Protobuf,
    /// `application/json`
    Json,
}

impl Encoding {
    /// The media types accepted, in the order error messages name them.
    pub const MEDIA_TYPES: &'static str = "application/x-protobuf or application/json";

    /// The encoding of a media type's essence (`type/subtype`, any case).
    pub fn from_media_type(essence: &str) -> Option<Encoding> {
        if essence.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Encoding::Protobuf)
        } else if essence.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    /// The response's `Content-Type`: the request's.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "JSON",
        }
    }
}

/// A body that is not an `ExportTraceServiceRequest` in its encoding, or
/// one over [`MAX_SPANS`] or [`MAX_ATTRIBUTES`].
#[derive(Debug)]
pub enum DecodeError {
    Malformed { encoding: Encoding, message: String },
    TooMany { what: &'static str, max: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed { encoding, message } => {
                write!(f, "not an OTLP ExportTraceServiceRequest in {}: {message}", encoding.name())
            }
            DecodeError::TooMany { what, max } => {
                write!(f, "the request has more than {max} {what}; the maximum is {max}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a whole (already decompressed) request body: only what ingestd
/// reads is built (`wire`), after the spans, attributes and span lists are
/// counted. Nested values are skipped without being built or recursed into
/// (prost skips a field by its length, serde_json skips in a loop).
pub fn decode(body: &[u8], encoding: Encoding) -> Result<ExportRequest, DecodeError> {
    let result = match encoding {
        Encoding::Protobuf => wire::decode_protobuf(body),
        Encoding::Json => wire::decode_json(body),
    };
    result.map_err(|refusal| match refusal {
        wire::Refusal::Malformed(message) => DecodeError::Malformed { encoding, message },
        wire::Refusal::TooMany { what, max } => DecodeError::TooMany { what, max },
    })
}

/// The `ExportTraceServiceResponse` body in `encoding`: `partial_success` is
/// set only when `rejected > 0` (OTLP: an empty one would mean "all
/// accepted" anyway, and some clients log any that is present).
pub fn response(encoding: Encoding, rejected: u64, message: &str) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => wire::ExportResponse {
            partial_success: (rejected > 0).then(|| wire::PartialSuccess {
                rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
                error_message: message.to_owned(),
            }),
        }
        .encode_to_vec(),
        // OTLP/JSON encodes int64 as a decimal string.
        Encoding::Json if rejected == 0 => b"{}".to_vec(),
        Encoding::Json => serde_json::to_vec(&json!({
            "partialSuccess": { "rejectedSpans": rejected.to_string(), "errorMessage": message }
        }))
        .unwrap_or_default(),
    }
}

/// What a request's spans came to.
#[derive(Debug, Default)]
pub struct Spans {
    /// One per span that carries token usage, in request order.
    pub usage: Vec<UsageSpan>,
    /// Spans without token usage: skipped, not rejected.
    pub without_usage: u64,
}

/// A span that carries token usage.
#[derive(Debug)]
pub struct UsageSpan {
    /// Hex, as OTLP/JSON writes them (for messages and logs).
    pub trace_id: String,
    pub span_id: String,
    /// The record in ingestd's JSON (SPEC §1), for `model::Ingestor::decode`;
    /// `Err`: the span cannot be a record whatever its attributes say.
    pub record: Result<Box<RawValue>, SpanProblem>,
}

/// Why a usage span cannot become a record at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanProblem {
    /// Its trace id is not 16 bytes or its span id not 8 (or either is all
    /// zeros): the record's id derives from both.
    InvalidSpanId,
}

impl fmt::Display for SpanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpanProblem::InvalidSpanId => f.write_str(
                "the span needs a valid trace id (16 bytes, not all zero) and span id (8 bytes, not all zero)",
            ),
        }
    }
}

/// A record field that span attributes fill, and the attributes that give
/// it, first match wins (SPEC §11; docs/otlp.md's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Provider,
    Model,
    PromptTokens,
    CompletionTokens,
    CachedTokens,
    CacheWriteTokens,
    ReasoningTokens,
    UserId,
}

const FIELDS: usize = 8;

/// Each field's attributes, in precedence order.
pub const ATTRIBUTES: [(Field, &[&str]); FIELDS] = [
    (Field::Provider, &["gen_ai.provider.name", "gen_ai.system"]),
    (Field::Model, &["gen_ai.response.model", "gen_ai.request.model"]),
    (Field::PromptTokens, &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"]),
    (
        Field::CompletionTokens,
        &["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"],
    ),
    (Field::CachedTokens, &["gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"]),
    (
        Field::CacheWriteTokens,
        &["gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"],
    ),
    (
        Field::ReasoningTokens,
        &["gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens", "llm.usage.reasoning_tokens"],
    ),
    (Field::UserId, &["user.id"]),
];

/// Resource attributes read.
pub const SERVICE_NAME: &str = "service.name";
pub const USER_ID: &str = "user.id";
pub const ORGANIZATION_ID: &str = "ingestd.organization_id";

/// The attributes of one span (or resource) that matter, found in one pass.
#[derive(Default)]
struct Found<'a> {
    /// `slots[field][rank]`: the value of the field's `rank`-th attribute.
    slots: [[Option<&'a Any>; 3]; FIELDS],
}

impl<'a> Found<'a> {
    fn of(attributes: &'a [KeyValue]) -> Found<'a> {
        let mut found = Found::default();
        for kv in attributes {
            // An empty value (or one of a type not read) is no value: the
            // next spelling, or absence.
            let Some(value) = kv.value.as_ref().and_then(|v| v.value.as_ref()) else { continue };
            if let Some((field, rank)) = slot(&kv.key) {
                // The first occurrence of a repeated key wins, as the first
                // spelling does.
                found.slots[field][rank].get_or_insert(value);
            }
        }
        found
    }

    fn get(&self, field: Field) -> Option<&'a Any> {
        self.slots[field as usize].iter().flatten().next().copied()
    }
}

fn slot(key: &str) -> Option<(usize, usize)> {
    // Every attribute this reads starts with one of three prefixes; most
    // span attributes (http.*, db.*, …) leave at the first comparison.
    if !(key.starts_with("gen_ai.") || key.starts_with("llm.") || key == USER_ID) {
        return None;
    }
    ATTRIBUTES.iter().enumerate().find_map(|(i, (_, keys))| keys.iter().position(|k| *k == key).map(|rank| (i, rank)))
}

/// Maps every span of `request` (SPEC §11). `organization`: the one every
/// record gets (an organization key's own, or a service key's
/// `X-Organization-Id`); `None`: each resource's `ingestd.organization_id`.
pub fn usage_spans(request: &ExportRequest, organization: Option<&str>) -> Spans {
    let mut spans = Spans::default();
    for resource_spans in &request.resource_spans {
        let resource: &[KeyValue] = resource_spans.resource.as_ref().map_or(&[], |r| &r.attributes);
        let resource = Resource::of(resource);
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                match usage_span(span, &resource, organization) {
                    Some(usage) => spans.usage.push(usage),
                    None => spans.without_usage += 1,
                }
            }
        }
    }
    spans
}

/// The resource attributes every span of a resource shares. They are
/// copied into each span's record, so a string is cut once here to one
/// character more than any identifier may have (SPEC §1: 256): the record
/// decoder still refuses it as `too_long`, and a long value sent once cannot
/// be multiplied by the number of spans.
struct Resource {
    service_name: Option<Any>,
    user_id: Option<Any>,
    organization: Option<Any>,
}

const LONGEST_IDENTIFIER: usize = 256;

impl Resource {
    fn of(attributes: &[KeyValue]) -> Resource {
        let get = |key: &str| {
            let value = attributes.iter().filter(|kv| kv.key == key).find_map(|kv| kv.value.as_ref()?.value.as_ref());
            value.map(|v| match v {
                Any::String(s) => Any::String(s.chars().take(LONGEST_IDENTIFIER + 1).collect()),
                other => other.clone(),
            })
        };
        Resource { service_name: get(SERVICE_NAME), user_id: get(USER_ID), organization: get(ORGANIZATION_ID) }
    }
}

/// One span's record, or `None` when it carries no token usage.
fn usage_span(span: &Span, resource: &Resource, organization: Option<&str>) -> Option<UsageSpan> {
    let found = Found::of(&span.attributes);
    let (prompt, completion) = (found.get(Field::PromptTokens), found.get(Field::CompletionTokens));
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let trace_id = hex_short(&span.trace_id);
    let span_id = hex_short(&span.span_id);
    let valid_ids = span.trace_id.len() == 16
        && span.span_id.len() == 8
        && span.trace_id.iter().any(|b| *b != 0)
        && span.span_id.iter().any(|b| *b != 0);
    if !valid_ids {
        return Some(UsageSpan { trace_id, span_id, record: Err(SpanProblem::InvalidSpanId) });
    }

    let end = span.end_time_unix_nano;
    // SPEC §11: a UUID v8 from the trace and span ids, ordered by the end
    // time, so a retried or repeated export is a duplicate.
    let request_id = model::ids::derived_ordered(end / 1_000_000, &[b"otlp", &span.trace_id, &span.span_id]);
    let timestamp = (end > 0)
        .then(|| OffsetDateTime::from_unix_timestamp_nanos(i128::from(end)).ok()?.format(&Rfc3339).ok())
        .flatten();
    let start = span.start_time_unix_nano;
    let record = Record {
        request_id,
        timestamp,
        provider: found.get(Field::Provider).map(Attr),
        model: found.get(Field::Model).map(|name| Model { name: Attr(name) }),
        organization_id: match organization {
            Some(org) => Some(Text::Given(org)),
            None => resource.organization.as_ref().map(|v| Text::Sent(Attr(v))),
        },
        project_id: resource.service_name.as_ref().map(Attr),
        user_id: found.get(Field::UserId).or(resource.user_id.as_ref()).map(Attr),
        usage: usage(&found, prompt, completion),
        // Not money: a duration, kept as the float the record holds.
        performance: (start > 0 && end >= start).then(|| Performance { latency_ms: (end - start) as f64 / 1e6 }),
        metadata: Metadata { otel: Otel { trace_id: &trace_id, span_id: &span_id } },
    };
    // Serializing these types cannot fail; were it to, the decoder refuses
    // the `null` as an invalid record.
    let record = serde_json::value::to_raw_value(&record).unwrap_or_else(|_| RawValue::NULL.to_owned());
    Some(UsageSpan { trace_id, span_id, record: Ok(record) })
}

/// A record in ingestd's JSON (SPEC §1), written straight from the span:
/// no intermediate `serde_json::Value`.
#[derive(Serialize)]
struct Record<'a> {
    request_id: uuid::Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<Attr<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<Model<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    organization_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<Attr<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<Attr<'a>>,
    usage: Usage<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    performance: Option<Performance>,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Model<'a> {
    name: Attr<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Text<'a> {
    Given(&'a str),
    Sent(Attr<'a>),
}

#[derive(Serialize)]
struct Usage<'a> {
    prompt_tokens: Count<'a>,
    completion_tokens: Count<'a>,
    total_tokens: Count<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_tokens: Option<Attr<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_write_tokens: Option<Attr<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<Attr<'a>>,
}

/// A token count: computed here, or an attribute passed on as sent.
#[derive(Clone, Copy, Serialize)]
#[serde(untagged)]
enum Count<'a> {
    Computed(u64),
    Sent(Attr<'a>),
}

#[derive(Serialize)]
struct Performance {
    latency_ms: f64,
}

#[derive(Serialize)]
struct Metadata<'a> {
    otel: Otel<'a>,
}

#[derive(Serialize)]
struct Otel<'a> {
    trace_id: &'a str,
    span_id: &'a str,
}

/// An attribute value as JSON, for the record decoder to take or refuse
/// with its own error (a provider sent as a number is `invalid_type`).
/// NaN and the infinities are no JSON number: `null`, which the decoder
/// refuses as missing.
#[derive(Clone, Copy)]
struct Attr<'a>(&'a Any);

impl Serialize for Attr<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Any::String(v) => s.serialize_str(v),
            Any::Bool(v) => s.serialize_bool(*v),
            Any::Int(v) => s.serialize_i64(*v),
            Any::Double(v) if v.is_finite() => s.serialize_f64(*v),
            Any::Double(_) => s.serialize_unit(),
        }
    }
}

/// The `usage` object. Input tokens include cache tokens, as the GenAI
/// conventions say; where cache read + cache write exceed the input count,
/// the instrumentation reported them separately and both are added to it.
/// A count that is not a whole non-negative number is passed on as sent,
/// for the record decoder to reject with its coded error.
fn usage<'a>(found: &Found<'a>, prompt: Option<&'a Any>, completion: Option<&'a Any>) -> Usage<'a> {
    let count = |v: Option<&Any>| v.map_or(Some(0), whole);
    let (cached, cache_write) = (found.get(Field::CachedTokens), found.get(Field::CacheWriteTokens));
    let sent = |v: Option<&'a Any>| {
        v.map_or(Count::Computed(0), |v| count(Some(v)).map_or(Count::Sent(Attr(v)), Count::Computed))
    };
    let mut prompt_tokens = sent(prompt);
    let completion_tokens = sent(completion);
    // A count the decoder will refuse stands in for the total too, so the
    // one problem is reported, not a second "missing total".
    let total_tokens = match (count(prompt), count(completion)) {
        (Some(input), Some(output)) => {
            let mut input = input;
            if let (Some(c), Some(w)) = (count(cached), count(cache_write))
                && c.saturating_add(w) > input
            {
                input = input.saturating_add(c).saturating_add(w);
                prompt_tokens = Count::Computed(input);
            }
            Count::Computed(input.saturating_add(output))
        }
        (None, _) => prompt_tokens,
        (Some(_), None) => completion_tokens,
    };
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cached_tokens: cached.map(Attr),
        cache_write_tokens: cache_write.map(Attr),
        reasoning_tokens: found.get(Field::ReasoningTokens).map(Attr),
    }
}

/// A token count: a non-negative `intValue`, or a `doubleValue` that is a
/// whole non-negative number below 2^64.
fn whole(v: &Any) -> Option<u64> {
    match v {
        Any::Int(i) => u64::try_from(*i).ok(),
        Any::Double(d) if d.is_finite() && *d >= 0.0 && d.fract() == 0.0 && *d < 18_446_744_073_709_551_616.0 => {
            // Exact: a whole double below 2^64 converts without rounding.
            Some(*d as u64)
        }
        _ => None,
    }
}

/// An id for messages and logs: hex, cut after 16 bytes (an invalid id may
/// be of any length).
fn hex_short(bytes: &[u8]) -> String {
    let mut s = hex(&bytes[..bytes.len().min(16)]);
    if bytes.len() > 16 {
        s.push('…');
    }
    s
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
