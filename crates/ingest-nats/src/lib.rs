//! ingestd's NATS JetStream source (SPEC §5).
//!
//! A durable **pull** consumer with explicit acks. Each fetch of up to
//! `fetch_batch` messages goes through [`broker::process`] (decode, derived
//! ids, one writer submission, dead letters) and only when that returned —
//! every record committed, every dead letter written — is each message acked
//! (`+ACK`, or `+TERM` for a message dead-lettered whole). When storage fails
//! or the writer is overloaded the whole fetch is `-NAK`ed with a capped
//! exponential delay (`[retry]`), and the loop waits as long before fetching
//! again. Nothing is acked that is not committed, so a crash, a lost
//! connection or a lost ack only ever causes a redelivery, and a redelivery
//! derives the same record ids (`stream:sequence@published-ms`, index), so
//! it stores nothing twice. The publish time makes those ids time-ordered
//! UUID v8 (cheap for the unique index) and keeps a re-created stream's
//! reused sequence numbers from matching old rows.
//!
//! Layout, as in `ingest-redis`: `config` (the `[nats]` section), `setup`
//! (stream and consumer), `messages` (what to do with each message, no IO)
//! and `consumer` (connect, fetch, commit, ack).
//!
//! What it deliberately does not do: create or change anything on an existing
//! stream or consumer (they are used as they are; mismatches that matter are
//! reported), keep messages in memory beyond one fetch, or know about HTTP.

mod config;
mod consumer;
mod messages;
mod setup;

pub use config::NatsConfig;
pub use consumer::NatsSource;

/// Why [`NatsSource::run`] stopped: never, today. Connection, setup and
/// storage failures are retried (and reported through its
/// [`Health`](broker::Health)) until shutdown; the type keeps `run`'s
/// signature that of the other sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
