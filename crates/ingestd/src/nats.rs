//! Builds and spawns the NATS JetStream source when `nats.url` is set.

use broker::{Health, Quarantine};
use ingest_nats::NatsSource;
use model::Ingestor;
use storage::{Store, WriterHandle};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::supervise::supervise;

pub(crate) fn spawn(
    config: &Config,
    writer: WriterHandle,
    store: &Store,
    shutdown: CancellationToken,
) -> Option<crate::Spawned> {
    if !config.nats.enabled() {
        return None;
    }
    let health = Health::new();
    let quarantine = Quarantine::new();
    let (nats, validation, store, retry) =
        (config.nats.clone(), config.validation.clone(), store.clone(), config.retry.clone());
    let task = supervise("nats", health.clone(), config.retry.clone(), shutdown.clone(), {
        let health = health.clone();
        move || {
            let source = NatsSource::new(
                nats.clone(),
                Ingestor::new(writer.clone(), validation.clone()),
                store.clone(),
                retry.clone(),
                health.clone(),
            )
            .with_quarantine(quarantine.clone());
            let shutdown = shutdown.clone();
            async move { Ok(source.run(shutdown).await?) }
        }
    });
    Some(("nats", task, health))
}
