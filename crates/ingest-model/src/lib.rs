//! The usage-record model of ingestd: what a record is, how it is decoded from
//! JSON, which rules it must satisfy, and the one ingestion path every adapter
//! (HTTP, NATS, Redis) shares.
//!
//! This crate does no IO. Storage is reached through the [`RecordSink`] and
//! [`DeadLetterSink`] traits, which `ingest-storage` implements; adapters call [`Ingestor::ingest`].
//!
//! Decoding is two-staged so that every problem in a record is reported at
//! once, each with a field path and a stable [`ErrorCode`]:
//! 1. [`decode`] splits the document into borrowed raw values (one pass, no
//!    copies) and converts each field to its type, noting type errors per field;
//! 2. [`validate`] runs the garde rules and the business rules on the typed
//!    record.

mod component;
pub mod decode;
mod error;
pub mod ids;
mod ingest;
pub mod read;
mod record;
mod response;
pub mod validate;

pub use component::{Component, Readiness};
pub use error::{ErrorCode, FieldError};
pub use ingest::{
    DeadLetter, DeadLetterSink, Deadline, IngestReport, Ingestor, RecordOutcome, RecordSink, SinkError, StoreOutcome,
};
pub use read::{UsageFilter, UsageReader};
pub use record::{Cost, ModelInfo, Performance, Source, TokenUsage, UsageRecord};
pub use response::{IngestionResponse, RecordError, ResponseStatus};
pub use validate::ValidationConfig;

/// The text of a panic payload (`panic!("…")` carries a `&str` or a
/// `String`), for the adapters that turn a caught panic into an answer.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// A connection URL fit for logs and `config check`: the user info's
/// secret masked, `scheme://user:secret@host` → `scheme://user:***@host`;
/// user info without a colon (`nats://TOKEN@host`, and so also a bare user
/// name) → `scheme://***@host`. A list of URLs (`nats://a,nats://b`) is
/// masked URL by URL. The user info ends at the last `@` (a password may
/// hold `@` or `/`); a URL whose `//` is followed by `/` has none. Every
/// crate that prints a URL goes through this.
pub fn mask_url(url: &str) -> String {
    url.split(',').map(mask_one).collect::<Vec<_>>().join(",")
}

fn mask_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    if rest.starts_with('/') {
        return url.to_owned();
    }
    let Some((userinfo, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) if !user.is_empty() => format!("{scheme}://{user}:***@{host}"),
        _ => format!("{scheme}://***@{host}"),
    }
}

#[cfg(test)]
mod tests;
