//! Builds and spawns the NATS JetStream source when `nats.url` is set.

use model::Ingestor;
use nats_source::NatsSource;
use source::SourceHealth;
use storage::{Store, WriterHandle};
use tokio_util::sync::CancellationToken;

use crate::Config;

pub(crate) fn spawn(
    config: &Config,
    writer: WriterHandle,
    store: &Store,
    shutdown: CancellationToken,
) -> Option<crate::Spawned> {
    if !config.nats.enabled() {
        return None;
    }
    let health = SourceHealth::new();
    let source = NatsSource::new(
        config.nats.clone(),
        Ingestor::new(writer, config.validation.clone()),
        store.clone(),
        config.retry.clone(),
        health.clone(),
    );
    let task = tokio::spawn(async move { Ok(source.run(shutdown).await?) });
    Some(("nats", task, health))
}
