//! What the stream sources of ingestd share, each in one place.
//!
//! A source (NATS JetStream in `ingest-nats`, Redis Streams in
//! `ingest-redis`) only speaks its protocol: it fetches a batch of messages,
//! hands them to [`process`], and acknowledges them when that returns `Ok`.
//! [`process`] does the rest the same way for both:
//!
//! 1. each message is read as a record, a `{"records": […]}` batch or an
//!    envelope (SPEC §5) by [`model::decode::stream_message`];
//! 2. records without a `request_id` get a deterministic id from the
//!    message's identity and their index ([`record_id`]), so a redelivered
//!    message maps to the same rows;
//! 3. all valid records of the batch go to the writer as **one** submission
//!    and are committed before `process` returns;
//! 4. a message that is not a valid document, or whose records fail
//!    validation, is written to the dead-letter table (its valid records are
//!    still stored);
//! 5. on any storage error nothing may be acknowledged: the source retries
//!    after a [`Backoff`] delay, and records already committed by an earlier
//!    attempt come back as duplicates;
//! 6. a panic while decoding a message dead-letters that message alone, and
//!    a record the database refuses fails alone (the writer isolates it):
//!    one bad message never stops the source or delays the others.
//!
//! A message that kills the source task itself is found by [`Quarantine`]:
//! once delivered more than `max_deliveries` times it is tried alone, and
//! only if the task dies under it then is it dead-lettered for its count.

mod backoff;
mod batch;
mod health;
mod quarantine;

pub use backoff::{Backoff, RetryConfig};
pub use batch::{BatchReport, Fate, Incoming, entry_id_ms, key_unix_ms, nats_key, process, record_id};
pub use health::Health;
pub use quarantine::{Held, Quarantine, Verdict};
