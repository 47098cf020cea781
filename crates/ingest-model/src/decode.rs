//! JSON → [`UsageRecord`], reporting every field that is missing or of the
//! wrong type, then every rule that fails (see [`crate::validate`]).
//!
//! Documents are split into borrowed [`RawValue`]s first: one pass over the
//! bytes that checks the syntax, with serde_json's nesting limit (128) in
//! force, and nothing copied. Each field is then converted on its own, so one
//! bad field never hides another, and one bad record never fails its batch.

use serde::Deserialize;
use serde_json::value::RawValue;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use crate::validate::{self, Context, MAX_TOKENS};
use crate::{ErrorCode, FieldError, ModelInfo, Performance, TokenUsage, UsageRecord};

/// The request body could not be read as the expected document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Not JSON at all: the position is 1-based.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Syntax { line: usize, column: usize, message: String },
    /// JSON, but not of the expected shape (e.g. `records` is not an array).
    #[error("invalid {what}: {message}")]
    Shape { what: &'static str, message: String },
}

impl DocumentError {
    fn from_json(what: &'static str, err: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                let message = strip_position(&err.to_string());
                DocumentError::Syntax { line: err.line(), column: err.column(), message }
            }
            Category::Data => DocumentError::Shape { what, message: strip_position(&err.to_string()) },
        }
    }
}

/// serde_json appends " at line L column C"; the position is reported apart.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// A record that failed decoding or validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The record's `request_id`, when it had a valid one.
    pub request_id: Option<Uuid>,
    pub errors: Vec<FieldError>,
}

/// Checks that `body` is one JSON value and returns it undecoded.
pub fn single(body: &[u8]) -> Result<&RawValue, DocumentError> {
    serde_json::from_slice(body).map_err(|e| DocumentError::from_json("record", e))
}

/// `POST /v1/usage/batch` body.
#[derive(Debug, Deserialize)]
pub struct BatchEnvelope<'a> {
    #[serde(default)]
    pub batch_id: Option<Uuid>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(borrow)]
    pub records: Vec<&'a RawValue>,
}

/// Why a batch body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// `records` has more than the allowed number of records; parsing
    /// stopped at the first one too many.
    #[error("batch has more than {max} records; the maximum is {max}")]
    TooMany { max: usize },
}

/// Reads a batch envelope of at most `max` records; the records stay
/// undecoded. The records are counted while the body is parsed: record
/// `max + 1` ends the parse, so a body of a million records costs no more
/// than one of `max + 1`.
pub fn batch(body: &[u8], max: usize) -> Result<BatchEnvelope<'_>, BatchError> {
    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
    use std::cell::Cell;

    /// The `records` array, counted as it is read.
    struct Records<'c> {
        max: usize,
        over: &'c Cell<bool>,
    }
    impl<'de> DeserializeSeed<'de> for Records<'_> {
        type Value = Vec<&'de RawValue>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Records<'_> {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of records")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
            while let Some(record) = seq.next_element::<&'de RawValue>()? {
                if records.len() == self.max {
                    self.over.set(true);
                    return Err(A::Error::custom("too many records"));
                }
                records.push(record);
            }
            Ok(records)
        }
    }
    struct Envelope<'c> {
        max: usize,
        over: &'c Cell<bool>,
    }
    impl<'de> Visitor<'de> for Envelope<'_> {
        type Value = BatchEnvelope<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object {\"records\": […]}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut batch_id, mut source, mut records) = (None, None, None);
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                match key.as_ref() {
                    "batch_id" if batch_id.is_some() => return Err(A::Error::duplicate_field("batch_id")),
                    "batch_id" => batch_id = Some(map.next_value::<Option<Uuid>>()?),
                    "source" if source.is_some() => return Err(A::Error::duplicate_field("source")),
                    "source" => source = Some(map.next_value::<Option<String>>()?),
                    "records" if records.is_some() => return Err(A::Error::duplicate_field("records")),
                    "records" => records = Some(map.next_value_seed(Records { max: self.max, over: self.over })?),
                    _ => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
            }
            let records = records.ok_or_else(|| A::Error::missing_field("records"))?;
            Ok(BatchEnvelope { batch_id: batch_id.flatten(), source: source.flatten(), records })
        }
    }

    // serde would also take a struct from an array (`[batch_id, source, records]`).
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        // Not an object: say what it is, or where its syntax fails.
        let whole: &RawValue =
            serde_json::from_slice(body).map_err(|e| DocumentError::from_json("batch envelope", e))?;
        return Err(DocumentError::Shape {
            what: "batch envelope",
            message: format!("must be a JSON object {{\"records\": […]}}, found {}", kind(whole)),
        }
        .into());
    }
    let over = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde::Deserializer::deserialize_map(&mut de, Envelope { max, over: &over })
        .and_then(|envelope| de.end().map(|()| envelope));
    match parsed {
        Ok(envelope) => Ok(envelope),
        Err(_) if over.get() => Err(BatchError::TooMany { max }),
        // A shape error found before the end (a missing `records`) hides a
        // syntax error after it: malformed JSON is reported as such.
        Err(e) => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(syntax) if !syntax.is_data() => Err(DocumentError::from_json("batch envelope", syntax).into()),
            _ => Err(DocumentError::from_json("batch envelope", e).into()),
        },
    }
}

/// Reads a stream message (SPEC §5): one record, `{"records": […]}`, or an
/// envelope `{"message_id", "event_type": "usage" | "batch", "payload"}`
/// whose payload is a record, a `{"records": […]}` object or an array.
///
/// The shape is decided in this order: an object with a `usage` member is a
/// record (its other members, `records` and `payload` included, are fields
/// of the record, unknown ones ignored); else one with a `payload` member is
/// an envelope; else one with a `records` member is a batch; else it is a
/// record, and fails validation with its missing fields.
pub fn stream_message(body: &[u8]) -> Result<Vec<&RawValue>, DocumentError> {
    /// Present, even as `null`.
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default, deserialize_with = "present")]
        usage: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        records: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        payload: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "present")]
        event_type: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        records: Vec<&'a RawValue>,
    }
    let shape = |message: String| DocumentError::Shape { what: "stream message", message };
    let whole: &RawValue = serde_json::from_slice(body).map_err(|e| DocumentError::from_json("stream message", e))?;
    if !whole.get().starts_with('{') {
        return Err(shape(format!("must be a JSON object, found {}", kind(whole))));
    }
    let probe: Probe<'_> =
        serde_json::from_str(whole.get()).map_err(|e| DocumentError::from_json("stream message", e))?;
    if probe.usage.is_some() {
        return Ok(vec![whole]);
    }
    if let Some(payload) = probe.payload {
        let event_type = probe.event_type.and_then(|e| serde_json::from_str::<String>(e.get()).ok());
        return match event_type.as_deref() {
            Some("usage") => Ok(vec![payload]),
            Some("batch") => {
                let records = if payload.get().starts_with('[') {
                    serde_json::from_str::<Vec<&RawValue>>(payload.get()).ok()
                } else {
                    serde_json::from_str::<Batch<'_>>(payload.get()).ok().map(|b| b.records)
                };
                records.ok_or_else(|| shape("a batch payload must be an array of records or {\"records\": […]}".into()))
            }
            Some(other) => Err(shape(format!("unknown event_type {other:?}; expected \"usage\" or \"batch\""))),
            None => Err(shape("an envelope needs an event_type (\"usage\" or \"batch\")".into())),
        };
    }
    if let Some(records) = probe.records {
        return serde_json::from_str::<Vec<&RawValue>>(records.get())
            .map_err(|_| shape(format!("records must be an array of records, found {}", kind(records))));
    }
    Ok(vec![whole])
}

/// Decodes and validates one record. `default_id` is called only when the
/// record has no `request_id`.
pub fn record(raw: &RawValue, ctx: &Context, default_id: impl FnOnce() -> Uuid) -> Result<UsageRecord, Rejected> {
    record_with(raw, ctx, |_| default_id())
}

/// [`record`], where the id of a record without one may depend on the
/// record's other fields (its organization, its timestamp): an
/// `Idempotency-Key` derives ids from both.
pub fn record_with(
    raw: &RawValue,
    ctx: &Context,
    default_id: impl FnOnce(&UsageRecord) -> Uuid,
) -> Result<UsageRecord, Rejected> {
    let mut d = Decoder { errors: Vec::new(), failed: Vec::new() };
    let Some(fields) = d.object::<RawRecord<'_>>("", raw) else {
        return Err(Rejected { request_id: None, errors: d.errors });
    };
    let request_id = d.optional("request_id", fields.request_id, Decoder::uuid);
    let mut record = UsageRecord {
        request_id: request_id.unwrap_or(Uuid::nil()),
        timestamp: d.required("timestamp", fields.timestamp, Decoder::timestamp).unwrap_or(ctx.now),
        provider: d.required("provider", fields.provider, Decoder::provider).unwrap_or_default(),
        model: d.required("model", fields.model, Decoder::model).unwrap_or_else(|| ModelInfo {
            name: String::new(),
            version: None,
            context_window: None,
        }),
        organization_id: d.required("organization_id", fields.organization_id, Decoder::string).unwrap_or_default(),
        project_id: d.optional("project_id", fields.project_id, Decoder::string),
        user_id: d.optional("user_id", fields.user_id, Decoder::string),
        usage: d.required("usage", fields.usage, Decoder::usage).unwrap_or(TokenUsage {
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cached_tokens: None,
            cache_write_tokens: None,
            reasoning_tokens: None,
        }),
        performance: d.optional("performance", fields.performance, Decoder::performance).unwrap_or_default(),
        tags: d.optional("tags", fields.tags, Decoder::tags).unwrap_or_default(),
        metadata: d.optional("metadata", fields.metadata, Decoder::metadata),
        cost: None,
    };
    if request_id.is_none() {
        record.request_id = default_id(&record);
    }
    let mut errors = d.errors;
    errors.extend(validate::validate(&record, ctx, &d.failed));
    if !errors.is_empty() {
        return Err(Rejected { request_id, errors });
    }
    // Kept to the microsecond, PostgreSQL's precision, so every backend
    // stores (and every answer shows) the same instant; dropped after the
    // rules are checked on the instant as sent.
    let t = record.timestamp;
    record.timestamp = t.replace_microsecond(t.microsecond()).unwrap_or(t);
    Ok(record)
}

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(borrow, default)]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    provider: Option<&'a RawValue>,
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    organization_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    project_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    performance: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tags: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawModel<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context_window: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawUsage<'a> {
    #[serde(borrow, default)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    completion_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    total_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cached_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_write_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_tokens: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawPerformance<'a> {
    #[serde(borrow, default)]
    latency_ms: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time_to_first_token_ms: Option<&'a RawValue>,
}

/// The JSON type of a raw value, for messages.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

struct Decoder {
    errors: Vec<FieldError>,
    /// Paths that failed to decode; their rules are not checked.
    failed: Vec<String>,
}

type Convert<T> = fn(&mut Decoder, &str, &RawValue) -> Option<T>;

impl Decoder {
    fn fail(&mut self, field: &str, code: ErrorCode, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, code, message));
        self.failed.push(field.to_owned());
    }

    fn required<T>(&mut self, field: &str, raw: Option<&RawValue>, convert: Convert<T>) -> Option<T> {
        match raw {
            Some(raw) if !is_null(raw) => convert(self, field, raw),
            _ => {
                self.fail(field, ErrorCode::MissingField, "is required");
                None
            }
        }
    }

    fn optional<T>(&mut self, field: &str, raw: Option<&RawValue>, convert: Convert<T>) -> Option<T> {
        raw.filter(|r| !is_null(r)).and_then(|raw| convert(self, field, raw))
    }

    fn object<'a, T: Deserialize<'a>>(&mut self, field: &str, raw: &'a RawValue) -> Option<T> {
        if !raw.get().starts_with('{') {
            let what = if field.is_empty() { "a record" } else { "this field" };
            self.fail(field, ErrorCode::InvalidType, format!("{what} must be an object, found {}", kind(raw)));
            return None;
        }
        match serde_json::from_str(raw.get()) {
            Ok(fields) => Some(fields),
            // The syntax was checked already, so this is a repeated key.
            Err(e) => {
                self.fail(field, ErrorCode::InvalidRecord, strip_position(&e.to_string()));
                None
            }
        }
    }

    fn string(&mut self, field: &str, raw: &RawValue) -> Option<String> {
        if !raw.get().starts_with('"') {
            self.fail(field, ErrorCode::InvalidType, format!("must be a string, found {}", kind(raw)));
            return None;
        }
        match serde_json::from_str(raw.get()) {
            Ok(s) => Some(s),
            Err(e) => {
                self.fail(field, ErrorCode::InvalidType, strip_position(&e.to_string()));
                None
            }
        }
    }

    /// `provider` is stored trimmed and lower-cased; control characters are
    /// looked for in the value as sent, so `"openai\n"` is refused rather
    /// than silently trimmed (SPEC §1).
    fn provider(&mut self, field: &str, raw: &RawValue) -> Option<String> {
        let sent = self.string(field, raw)?;
        if sent.chars().any(char::is_control) {
            self.fail(field, ErrorCode::ControlCharacters, "must not contain control characters");
            return None;
        }
        // 1 to 64 characters once trimmed, counted before lower-casing:
        // `İ` lower-cases to two characters, and a provider that fits the
        // limit as sent must not be refused for what ingestd does to it.
        let trimmed = sent.trim();
        match trimmed.chars().take(65).count() {
            0 => self.fail(field, ErrorCode::TooShort, "must be at least 1 character(s) long"),
            65.. => self.fail(field, ErrorCode::TooLong, "must be at most 64 characters long"),
            _ => return Some(trimmed.to_lowercase()),
        }
        None
    }

    fn uuid(&mut self, field: &str, raw: &RawValue) -> Option<Uuid> {
        let s = self.string(field, raw)?;
        match Uuid::try_parse(&s) {
            Ok(id) => Some(id),
            Err(_) => {
                self.fail(
                    field,
                    ErrorCode::InvalidUuid,
                    "must be a UUID such as \"0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e\"",
                );
                None
            }
        }
    }

    fn timestamp(&mut self, field: &str, raw: &RawValue) -> Option<OffsetDateTime> {
        let s = self.string(field, raw)?;
        match OffsetDateTime::parse(&s, &Rfc3339) {
            // `to_offset` panics when the UTC form leaves the representable
            // range (`9999-12-31T23:59:59-01:00`): checked, and the years
            // every backend stores (SPEC §1) enforced here.
            Ok(t) => match t.checked_to_offset(time::UtcOffset::UTC) {
                Some(utc) if (1..=9999).contains(&utc.year()) => Some(utc),
                _ => {
                    self.fail(
                        field,
                        ErrorCode::InvalidTimestamp,
                        format!("{s:?} is outside the years 0001–9999 once converted to UTC"),
                    );
                    None
                }
            },
            Err(e) => {
                self.fail(
                    field,
                    ErrorCode::InvalidTimestamp,
                    format!("must be an RFC 3339 date-time such as \"2026-01-31T12:00:00Z\" ({e})"),
                );
                None
            }
        }
    }

    fn number(&mut self, field: &str, raw: &RawValue) -> Option<serde_json::Number> {
        if kind(raw) != "a number" {
            self.fail(field, ErrorCode::InvalidType, format!("must be a number, found {}", kind(raw)));
            return None;
        }
        match serde_json::from_str(raw.get()) {
            Ok(n) => Some(n),
            Err(e) => {
                self.fail(field, ErrorCode::OutOfRange, strip_position(&e.to_string()));
                None
            }
        }
    }

    fn count(&mut self, field: &str, raw: &RawValue) -> Option<u64> {
        let n = self.number(field, raw)?;
        if let Some(v) = n.as_u64() {
            if v <= MAX_TOKENS {
                return Some(v);
            }
            self.fail(field, ErrorCode::OutOfRange, format!("must be at most {MAX_TOKENS}"));
            return None;
        }
        let f = n.as_f64().unwrap_or(f64::NAN);
        if n.is_i64() || f < 0.0 {
            self.fail(field, ErrorCode::NegativeNumber, format!("must not be negative, found {n}"));
            return None;
        }
        match whole_number(raw.get()) {
            Some(Some(v)) if v <= MAX_TOKENS => return Some(v),
            Some(_) => self.fail(field, ErrorCode::OutOfRange, format!("must be at most {MAX_TOKENS}")),
            None => self.fail(field, ErrorCode::NotAnInteger, format!("must be a whole number, found {n}")),
        }
        None
    }

    fn millis(&mut self, field: &str, raw: &RawValue) -> Option<f64> {
        let n = self.number(field, raw)?;
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f < 0.0 {
            self.fail(field, ErrorCode::NegativeNumber, format!("must not be negative, found {n}"));
            return None;
        }
        Some(f)
    }

    fn model(&mut self, field: &str, raw: &RawValue) -> Option<ModelInfo> {
        let m = self.object::<RawModel<'_>>(field, raw)?;
        Some(ModelInfo {
            name: self.required("model.name", m.name, Decoder::string).unwrap_or_default(),
            version: self.optional("model.version", m.version, Decoder::string),
            context_window: self.optional("model.context_window", m.context_window, Decoder::count),
        })
    }

    fn usage(&mut self, field: &str, raw: &RawValue) -> Option<TokenUsage> {
        let u = self.object::<RawUsage<'_>>(field, raw)?;
        Some(TokenUsage {
            prompt_tokens: self.required("usage.prompt_tokens", u.prompt_tokens, Decoder::count).unwrap_or(0),
            completion_tokens: self
                .required("usage.completion_tokens", u.completion_tokens, Decoder::count)
                .unwrap_or(0),
            total_tokens: self.required("usage.total_tokens", u.total_tokens, Decoder::count).unwrap_or(0),
            cached_tokens: self.optional("usage.cached_tokens", u.cached_tokens, Decoder::count),
            cache_write_tokens: self.optional("usage.cache_write_tokens", u.cache_write_tokens, Decoder::count),
            reasoning_tokens: self.optional("usage.reasoning_tokens", u.reasoning_tokens, Decoder::count),
        })
    }

    fn performance(&mut self, field: &str, raw: &RawValue) -> Option<Performance> {
        let p = self.object::<RawPerformance<'_>>(field, raw)?;
        Some(Performance {
            latency_ms: self.optional("performance.latency_ms", p.latency_ms, Decoder::millis),
            time_to_first_token_ms: self.optional(
                "performance.time_to_first_token_ms",
                p.time_to_first_token_ms,
                Decoder::millis,
            ),
        })
    }

    fn tags(&mut self, field: &str, raw: &RawValue) -> Option<Vec<String>> {
        if !raw.get().starts_with('[') {
            self.fail(field, ErrorCode::InvalidType, format!("must be an array of strings, found {}", kind(raw)));
            return None;
        }
        let items: Vec<&RawValue> = serde_json::from_str(raw.get()).ok()?;
        let mut tags = Vec::with_capacity(items.len().min(validate::MAX_TAGS + 1));
        for (i, item) in items.into_iter().enumerate() {
            // Placeholders keep the indices of later tags right.
            tags.push(self.string(&format!("{field}[{i}]"), item).unwrap_or_else(|| "?".to_owned()));
        }
        Some(tags)
    }

    fn metadata(&mut self, field: &str, raw: &RawValue) -> Option<serde_json::Map<String, serde_json::Value>> {
        if !raw.get().starts_with('{') {
            self.fail(field, ErrorCode::InvalidType, format!("must be an object, found {}", kind(raw)));
            return None;
        }
        let map: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(raw.get()) {
            Ok(map) => map,
            Err(e) => {
                self.fail(field, ErrorCode::InvalidRecord, strip_position(&e.to_string()));
                return None;
            }
        };
        // PostgreSQL's `jsonb` refuses U+0000 anywhere in a string; refused
        // on every backend, so a record is stored alike everywhere. JSON
        // can only write it as `\u0000`, so most metadata is never walked.
        if raw.get().contains("\\u0000")
            && let Some(path) = nul_path(field, &map)
        {
            self.fail(&path, ErrorCode::NulCharacter, "a metadata key or string value must not contain U+0000");
            return None;
        }
        Some(map)
    }
}

/// The path of the first key or string value under `map` that contains
/// U+0000 (`metadata.a.b[2]`), if any.
fn nul_path(field: &str, map: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    use serde_json::{Map, Value};
    fn object(path: &mut String, map: &Map<String, Value>) -> bool {
        map.iter().any(|(key, item)| {
            let len = path.len();
            path.push('.');
            path.push_str(key);
            let found = key.contains('\0') || value(path, item);
            if !found {
                path.truncate(len);
            }
            found
        })
    }
    fn value(path: &mut String, v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = value(path, item);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(map) => object(path, map),
            _ => false,
        }
    }
    let mut path = field.to_owned();
    object(&mut path, map).then_some(path)
}

/// The exact value of a non-negative JSON number written with a fraction or an
/// exponent when it is a whole number (`7990.0`, `1e3`, `2.50E2`): JSON has
/// one number type and JSON Schema counts these as integers. Computed from the
/// text, never through a float, so `9007199254740993.0` stays exact.
/// `None`: it has a fraction (or `text` is not a JSON number); `Some(None)`:
/// whole, but above `u64::MAX`. The sign is ignored: callers refuse negative
/// numbers first.
pub fn whole_number(text: &str) -> Option<Option<u64>> {
    let text = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, "0"),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let exponent_digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if int.is_empty()
        || !digits_only(int)
        || !digits_only(frac)
        || exponent_digits.is_empty()
        || !digits_only(exponent_digits)
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Some(Some(0));
    }
    // Value = significant · 10^shift.
    let trailing = (digits.len() - significant.len()) as i128;
    let exponent: i128 = match exponent.parse::<i64>() {
        Ok(e) => e.into(),
        // Beyond i64: a huge exponent is a huge number, a hugely negative one a fraction.
        Err(_) if exponent.starts_with('-') => return None,
        Err(_) => return Some(None),
    };
    let shift = exponent - frac.len() as i128 + trailing;
    if shift < 0 {
        return None;
    }
    if significant.len() as i128 + shift > 20 {
        return Some(None);
    }
    let mut value: u128 = significant.parse().ok()?;
    for _ in 0..shift {
        value *= 10;
    }
    Some(u64::try_from(value).ok())
}
