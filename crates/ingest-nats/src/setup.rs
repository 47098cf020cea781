//! Finding or creating the stream and the durable pull consumer, and
//! reporting the mismatches that matter (IO against the JetStream API).
//! Nothing existing is ever changed.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, stream};

use crate::NatsConfig;
use crate::messages;

/// Why the stream or consumer cannot be used (yet).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("{0}")]
    Mismatch(String),
    #[error("{what}: {source}")]
    Server {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SetupError {
    pub(crate) fn server(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SetupError::Server { what: what.into(), source: source.into() }
    }
}

/// Finds or creates the stream and the durable consumer; returns the
/// consumer and the shortest time the server waits for an ack (progress
/// acks are paced by it).
pub(crate) async fn setup(cfg: &NatsConfig, js: &jetstream::Context) -> Result<(PullConsumer, Duration), SetupError> {
    let stream = match js.get_stream(&cfg.stream).await {
        Ok(stream) => {
            let config = &stream.cached_info().config;
            let subjects = &config.subjects;
            if !subjects.iter().any(|p| crate::config::subject_matches(p, &cfg.subject)) {
                return Err(SetupError::Mismatch(format!(
                    "stream {} exists with subjects {subjects:?}, which do not include nats.subject {:?}",
                    cfg.stream, cfg.subject
                )));
            }
            if config.num_replicas.max(1) != cfg.stream_replicas {
                tracing::warn!(
                    stream = %cfg.stream, replicas = config.num_replicas.max(1), wanted = cfg.stream_replicas,
                    "the existing NATS stream has another number of replicas than nats.stream_replicas; \
                     using it as it is (change it with `nats stream edit --replicas`)"
                );
            }
            stream
        }
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.code() == 404) => {
            tracing::info!(
                stream = %cfg.stream, subject = %cfg.subject, replicas = cfg.stream_replicas,
                "creating the NATS stream"
            );
            match js
                .create_stream(stream::Config {
                    name: cfg.stream.clone(),
                    subjects: vec![cfg.subject.clone()],
                    storage: stream::StorageType::File,
                    num_replicas: cfg.stream_replicas,
                    ..Default::default()
                })
                .await
            {
                Ok(stream) => stream,
                // Another fetch loop or process created it first.
                Err(e) => js
                    .get_stream(&cfg.stream)
                    .await
                    .map_err(|_| SetupError::server(format!("creating stream {}", cfg.stream), e))?,
            }
        }
        Err(e) => return Err(SetupError::server(format!("reading stream {}", cfg.stream), e)),
    };
    let wanted = pull::Config {
        durable_name: Some(cfg.consumer.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(cfg.ack_wait_secs),
        max_deliver: cfg.max_deliver,
        backoff: cfg.backoff_secs.iter().map(|s| Duration::from_secs(*s)).collect(),
        filter_subject: cfg.subject.clone(),
        // Room for a fetch in hand and one being fetched per fetch loop, for
        // ten processes.
        max_ack_pending: (cfg.fetch_batch as i64).saturating_mul(2 * 10 * cfg.fetchers as i64).max(10_000),
        ..Default::default()
    };
    let consumer: PullConsumer = stream.get_or_create_consumer(&cfg.consumer, wanted).await.map_err(|e| {
        SetupError::server(format!("finding or creating consumer {} on stream {}", cfg.consumer, cfg.stream), e)
    })?;
    let found = &consumer.cached_info().config;
    if found.ack_policy != AckPolicy::Explicit {
        return Err(SetupError::Mismatch(format!(
            "consumer {} exists with ack policy {:?}; ingestd needs explicit acks to ack only what it committed",
            cfg.consumer, found.ack_policy
        )));
    }
    if !found.filter_subject.is_empty() && found.filter_subject != cfg.subject {
        tracing::warn!(
            consumer = %cfg.consumer, filter = %found.filter_subject, subject = %cfg.subject,
            "the existing NATS consumer filters another subject than nats.subject; using it as it is"
        );
    }
    if found.max_deliver > 0 {
        tracing::warn!(
            consumer = %cfg.consumer, max_deliver = found.max_deliver,
            "the existing NATS consumer gives messages up after max_deliver deliveries; \
             a storage outage that long drops them (ingestd creates consumers with -1)"
        );
    }
    let ack_wait = messages::effective_ack_wait(found.ack_wait, &found.backoff);
    tracing::info!(stream = %cfg.stream, consumer = %cfg.consumer, ?ack_wait, "NATS consumer ready");
    Ok((consumer, ack_wait))
}
