//! ingestd's Redis Streams source (SPEC §5): a member of a consumer group
//! that commits what it reads before it acknowledges it.
//!
//! [`RedisSource::run`] creates the group when absent (`MKSTREAM`, from id
//! `0`, so entries written before the first start are read), then:
//!
//! 1. re-reads this consumer's own pending entries (`XREADGROUP … 0`) until
//!    none are left: what a killed process read but never acked. It does so
//!    again after every lost connection;
//! 2. every `claim_idle_secs / 2`, takes over entries idle for longer than
//!    `claim_idle_secs` at other (dead) consumers with `XAUTOCLAIM`;
//! 3. otherwise reads new entries with a blocking `XREADGROUP … >` on a
//!    connection of its own, so the block never delays other commands.
//!
//! Every batch goes through [`broker::process`] (decoding, derived ids,
//! **one** writer submission, dead letters) and is then acknowledged with
//! **one** `XACK`. An entry without a `payload` field, an invalid one, or one
//! delivered more than `max_deliveries` times goes to the dead-letter table
//! and is acked. An entry trimmed from the stream while pending is counted
//! and acked, never reported stored. A storage failure acks nothing and is
//! retried with capped exponential backoff; a lost connection is
//! re-established by fred's reconnect policy while the loop backs off and
//! reports itself disconnected.
//!
//! Replies are read from fred's untyped `Value` in [`entries`], in both
//! RESP2 and RESP3 shapes.
//!
//! Deliberately not here: the configuration's loading (ingestd), the
//! writer and the database (behind [`model::RecordSink`] and
//! [`model::DeadLetterSink`]), and the Redis rate limiter, which only
//! shares the URL.

mod config;
mod consumer;
pub mod entries;

pub use config::RedisConsumerConfig;
pub use consumer::{Counts, Error, RedisSource, Stats};
