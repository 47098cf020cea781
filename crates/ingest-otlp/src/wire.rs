//! The part of an OTLP `ExportTraceServiceRequest` ingestd reads, in both
//! encodings, decoded without building what it never reads.
//!
//! Protobuf: prost messages with the field numbers of
//! `opentelemetry/proto/trace/v1/trace.proto` (v1), only the fields mapped;
//! prost skips every other field without allocating (span names, events,
//! links, nested `arrayValue`/`kvlistValue`, …). A test decodes requests
//! encoded with `opentelemetry-proto`'s own types to hold the numbers right.
//!
//! JSON (OTLP/JSON): serde over the same structs, lenient where the OTLP
//! JSON mapping is (`null` is the default; 64-bit integers as strings or
//! numbers; `"NaN"`/`"Infinity"` doubles; hex ids in any case; unknown
//! members ignored, also inside values). A value of a type ingestd does not
//! read (an array, a map, bytes) is absent.
//!
//! Why not `opentelemetry-proto`'s types: they decode every field, nested
//! values included; their serde derive copies each nested `AnyValue` once
//! per level (`flatten`) and refuses valid OTLP/JSON (`{"arrayValue":{}}`,
//! `"doubleValue":"NaN"`, `null` members). Measured in docs/benchmarks.md.
//!
//! Amplification is bounded before anything is built: at most [`MAX_SPANS`]
//! spans, [`MAX_SPANS`] resource and scope span lists together, and
//! [`MAX_ATTRIBUTES`] attributes per request (a protobuf body is counted by
//! a pass over its wire format, a JSON body while it is read).

use std::cell::Cell;
use std::fmt;

use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Most spans one request may carry (an SDK exports 512 at a time by
/// default; set an OpenTelemetry Collector's `send_batch_max_size` at or
/// below this).
pub const MAX_SPANS: usize = 10_000;
/// Most attributes (of spans and resources together) one request may carry.
pub const MAX_ATTRIBUTES: usize = 500_000;

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ExportRequest {
    #[prost(message, repeated, tag = "1")]
    #[serde(deserialize_with = "list")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    #[serde(deserialize_with = "list")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    #[serde(deserialize_with = "attributes")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    #[serde(deserialize_with = "spans")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    #[serde(deserialize_with = "hex_id")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(deserialize_with = "hex_id")]
    pub span_id: Vec<u8>,
    #[prost(fixed64, tag = "7")]
    #[serde(deserialize_with = "unix_nanos")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    #[serde(deserialize_with = "unix_nanos")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    #[serde(deserialize_with = "attributes")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    #[serde(deserialize_with = "text")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// An attribute's value; `None` when it is empty or of a type ingestd does
/// not read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

/// `ExportTraceServiceResponse` (field 1: `partial_success`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<PartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_spans: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// Why a body was not decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed(String),
    /// More than the maximum of spans or attributes (`what`).
    TooMany {
        what: &'static str,
        max: usize,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed(m) => f.write_str(m),
            Refusal::TooMany { what, max } => write!(f, "the request has more than {max} {what}; the maximum is {max}"),
        }
    }
}

pub fn decode_protobuf(body: &[u8]) -> Result<ExportRequest, Refusal> {
    let mut counts = Counts::default();
    count_request(body, &mut counts).map_err(Refusal::Malformed)?;
    counts.check()?;
    <ExportRequest as prost::Message>::decode(body).map_err(|e| Refusal::Malformed(e.to_string()))
}

pub fn decode_json(body: &[u8]) -> Result<ExportRequest, Refusal> {
    BUDGET.set(Some(Counts::default()));
    let result = serde_json::from_slice::<ExportRequest>(body);
    let counts = BUDGET.take().unwrap_or_default();
    counts.check()?;
    result.map_err(|e| Refusal::Malformed(e.to_string()))
}

#[derive(Clone, Copy, Default)]
struct Counts {
    spans: usize,
    attributes: usize,
    /// `ResourceSpans` and `ScopeSpans`.
    lists: usize,
}

impl Counts {
    fn check(self) -> Result<(), Refusal> {
        if self.spans > MAX_SPANS {
            return Err(Refusal::TooMany { what: "spans", max: MAX_SPANS });
        }
        if self.lists > MAX_SPANS {
            return Err(Refusal::TooMany { what: "resource and scope span lists", max: MAX_SPANS });
        }
        if self.attributes > MAX_ATTRIBUTES {
            return Err(Refusal::TooMany { what: "attributes", max: MAX_ATTRIBUTES });
        }
        Ok(())
    }

    fn over(self) -> bool {
        self.spans > MAX_SPANS || self.lists > MAX_SPANS || self.attributes > MAX_ATTRIBUTES
    }
}

// ---- protobuf: counting over the wire format, before decoding ----

/// Calls `each(tag, field bytes)` for every length-delimited field of a
/// message and skips the others.
fn fields(mut buf: &[u8], mut each: impl FnMut(u32, &[u8]) -> Result<(), String>) -> Result<(), String> {
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|e| e.to_string())?;
            }
            WireType::SixtyFourBit => skip(&mut buf, 8)?,
            WireType::ThirtyTwoBit => skip(&mut buf, 4)?,
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).map_err(|e| e.to_string())?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > buf.len() {
                    return Err("buffer underflow".into());
                }
                let (field, rest) = buf.split_at(len);
                each(tag, field)?;
                buf = rest;
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err("groups are not used by OTLP".into());
            }
        }
    }
    Ok(())
}

fn skip(buf: &mut &[u8], n: usize) -> Result<(), String> {
    if buf.len() < n {
        return Err("buffer underflow".into());
    }
    buf.advance(n);
    Ok(())
}

fn count_request(body: &[u8], counts: &mut Counts) -> Result<(), String> {
    fields(body, |tag, resource_spans| {
        if tag != 1 {
            return Ok(());
        }
        counts.lists += 1;
        fields(resource_spans, |tag, field| match tag {
            // Resource: its attributes (field 1).
            1 => fields(field, |tag, _| {
                counts.attributes += usize::from(tag == 1);
                Ok(())
            }),
            // ScopeSpans: its spans (field 2), each with attributes (field 9).
            2 => {
                counts.lists += 1;
                fields(field, |tag, span| {
                    if tag != 2 {
                        return Ok(());
                    }
                    counts.spans += 1;
                    if counts.over() {
                        return Err("too many".into());
                    }
                    fields(span, |tag, _| {
                        counts.attributes += usize::from(tag == 9);
                        Ok(())
                    })
                })
            }
            _ => Ok(()),
        })
    })
    // Stopped early at a limit: the caller reports the limit, not this.
    .or_else(|e| if counts.over() { Ok(()) } else { Err(e) })
}

// ---- JSON: lenient members, counted lists ----

thread_local! {
    /// What the JSON being read on this thread by [`decode_json`] has used
    /// of its limits; `None` outside it (nothing is counted).
    static BUDGET: Cell<Option<Counts>> = const { Cell::new(None) };
}

/// Spends one item of a kind; false once over a limit.
fn spend(item: Item) -> bool {
    BUDGET.with(|b| {
        let Some(mut c) = b.get() else { return true };
        match item {
            Item::List => c.lists += 1,
            Item::Span => c.spans += 1,
            Item::Attribute => c.attributes += 1,
        }
        b.set(Some(c));
        !c.over()
    })
}

#[derive(Clone, Copy)]
enum Item {
    List,
    Span,
    Attribute,
}

/// A list whose elements each spend one `item` of the budget (`null`: empty).
fn counted<'de, D, T>(d: D, item: Item) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct List<T>(Item, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if !spend(self.0) {
                    return Err(de::Error::custom("over the limit"));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_any(List(item, std::marker::PhantomData))
}

fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    counted(d, Item::List)
}

fn spans<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Span>, D::Error> {
    counted(d, Item::Span)
}

fn attributes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KeyValue>, D::Error> {
    counted(d, Item::Attribute)
}

/// Any JSON value, kept only when it is a scalar; arrays and objects are
/// read past without being built.
enum Scalar {
    Str(String),
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Other,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Scalar::deserialize(d)? {
        Scalar::Str(s) => s,
        _ => String::new(),
    })
}

/// A hex id (any case); anything else (not hex, odd length, not a string) is
/// empty, so that a usage span with it is rejected alone (`invalid_span_id`)
/// and the other spans are read.
fn hex_id<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let Scalar::Str(s) = Scalar::deserialize(d)? else { return Ok(Vec::new()) };
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Vec::new());
    }
    Ok((0..s.len()).step_by(2).filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect())
}

/// Nanoseconds since the epoch: a decimal string or a number; anything
/// else is 0 (no time: the span's record lacks a timestamp).
fn unix_nanos<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match Scalar::deserialize(d)? {
        Scalar::Str(s) => s.parse().unwrap_or(0),
        Scalar::UInt(n) => n,
        Scalar::Int(n) => u64::try_from(n).unwrap_or(0),
        Scalar::Float(f) => whole_i64(f).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        _ => 0,
    })
}

/// A float that is a whole number within `i64` (`1e3`, `12.0`).
fn whole_i64(f: f64) -> Option<i64> {
    // Exact: a whole float in (-2^63, 2^63) converts without rounding.
    (f.fract() == 0.0 && f > -9_223_372_036_854_775_808.0 && f < 9_223_372_036_854_775_808.0).then_some(f as i64)
}

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnyValue, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an AnyValue object")
            }
            // Not an object: an empty value (null included).
            fn visit_unit<E: de::Error>(self) -> Result<AnyValue, E> {
                Ok(AnyValue { value: None })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyValue, E> {
                Ok(AnyValue { value: None })
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyValue, E> {
                Ok(AnyValue { value: None })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyValue, E> {
                Ok(AnyValue { value: None })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyValue, E> {
                Ok(AnyValue { value: None })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<AnyValue, E> {
                Ok(AnyValue { value: None })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AnyValue { value: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let read = match key.as_ref() {
                        "stringValue" => match map.next_value::<Scalar>()? {
                            Scalar::Str(s) => Some(Value::String(s)),
                            _ => None,
                        },
                        "boolValue" => match map.next_value::<Scalar>()? {
                            Scalar::Bool(b) => Some(Value::Bool(b)),
                            _ => None,
                        },
                        "intValue" => match map.next_value::<Scalar>()? {
                            Scalar::Int(i) => Some(Value::Int(i)),
                            Scalar::UInt(u) => i64::try_from(u).ok().map(Value::Int),
                            Scalar::Str(s) => s.parse().ok().map(Value::Int),
                            // ProtoJSON allows `1e3` and `12.0` for integers.
                            Scalar::Float(f) => whole_i64(f).map(Value::Int),
                            _ => None,
                        },
                        "doubleValue" => match map.next_value::<Scalar>()? {
                            Scalar::Float(f) => Some(Value::Double(f)),
                            Scalar::Int(i) => Some(Value::Double(i as f64)),
                            Scalar::UInt(u) => Some(Value::Double(u as f64)),
                            Scalar::Str(s) => match s.as_str() {
                                "NaN" => Some(Value::Double(f64::NAN)),
                                "Infinity" => Some(Value::Double(f64::INFINITY)),
                                "-Infinity" => Some(Value::Double(f64::NEG_INFINITY)),
                                other => other.parse().ok().map(Value::Double),
                            },
                            _ => None,
                        },
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            None
                        }
                    };
                    // As in protobuf, the last member set wins.
                    if read.is_some() {
                        value = read;
                    }
                }
                Ok(AnyValue { value })
            }
        }
        d.deserialize_any(V)
    }
}
