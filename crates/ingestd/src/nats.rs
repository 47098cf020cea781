//! Builds and spawns the NATS JetStream source when `nats.url` is set.

use anyhow::Result;
use model::Ingestor;
use nats_source::NatsSource;
use source::SourceHealth;
use storage::{Store, WriterHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Config;

/// The running source: its name (readiness, metrics), task and health.
pub(crate) type Spawned = (&'static str, JoinHandle<Result<()>>, SourceHealth);

pub(crate) fn spawn(
    config: &Config,
    writer: WriterHandle,
    store: &Store,
    shutdown: CancellationToken,
) -> Option<Spawned> {
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
