//! What to do with each JetStream message, without IO: its identity (the
//! key derived record ids and dead letters are keyed by), how often it was
//! delivered, and the ack that follows its fate.

use std::time::Duration;

use async_nats::jetstream::message::{AckKind, Info};
use broker::Fate;

/// `stream:sequence@published-ms` ([`broker::nats_key`]): the same for every
/// redelivery, different for a re-created stream's reused sequence numbers.
pub(crate) fn key_of(info: &Info<'_>) -> String {
    let published_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    broker::nats_key(info.stream, info.stream_sequence, published_ms)
}

/// How many times the server has delivered the message, this time included.
pub(crate) fn deliveries(info: &Info<'_>) -> u64 {
    u64::try_from(info.delivered).unwrap_or(0)
}

/// After a committed batch: a message dead-lettered whole is termed (never
/// redelivered), every other one acked.
pub(crate) fn ack_for(fate: &Fate) -> AckKind {
    match fate {
        Fate::DeadLettered => AckKind::Term,
        _ => AckKind::Ack,
    }
}

/// The shortest time the server waits for an ack: `ack_wait`, or the first
/// of the consumer's redelivery `backoff` steps when shorter. Progress acks
/// go out at half of it.
pub(crate) fn effective_ack_wait(ack_wait: Duration, backoff: &[Duration]) -> Duration {
    backoff.iter().copied().chain([ack_wait]).min().unwrap_or(ack_wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_message_dead_lettered_whole_is_termed() {
        assert!(matches!(ack_for(&Fate::DeadLettered), AckKind::Term));
        assert!(matches!(ack_for(&Fate::Stored { accepted: 1, duplicates: 0 }), AckKind::Ack));
        assert!(matches!(ack_for(&Fate::Partial { accepted: 1, duplicates: 0, rejected: 1 }), AckKind::Ack));
    }

    #[test]
    fn progress_is_paced_by_the_shortest_wait() {
        let s = Duration::from_secs;
        assert_eq!(effective_ack_wait(s(30), &[]), s(30));
        assert_eq!(effective_ack_wait(s(30), &[s(5), s(60)]), s(5));
        assert_eq!(effective_ack_wait(s(2), &[s(5)]), s(2));
    }

    #[test]
    fn the_key_carries_stream_sequence_and_publish_time() {
        let info = Info {
            domain: None,
            acc_hash: None,
            stream: "LLM_USAGE",
            consumer: "ingestd",
            stream_sequence: 42,
            consumer_sequence: 7,
            delivered: 3,
            pending: 0,
            published: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            token: None,
        };
        assert_eq!(key_of(&info), "LLM_USAGE:42@1700000000000");
        assert_eq!(deliveries(&info), 3);
    }
}
