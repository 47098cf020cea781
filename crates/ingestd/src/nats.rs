//! Builds and spawns the NATS JetStream source when `nats.url` is set:
//! `nats.fetchers` fetch loops on the durable consumer.

use broker::{Health, Quarantine};
use ingest_nats::NatsSource;
use model::Ingestor;
use storage::{Store, WriterHandle};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::supervise::{join_members, supervise};

pub(crate) fn spawn(
    config: &Config,
    writer: WriterHandle,
    store: &Store,
    shutdown: CancellationToken,
) -> Option<crate::Spawned> {
    if !config.nats.enabled() {
        return None;
    }
    // One health for all the fetch loops, as for the Redis members: each
    // reports into it, and the latest report stands.
    let health = Health::new();
    // Each loop is supervised on its own, with its own connection and its
    // own quarantine: a quarantine follows the one batch its loop has in hand.
    let members = (0..config.nats.fetchers)
        .map(|_| {
            let quarantine = Quarantine::new();
            let (nats, validation, store, retry, writer) =
                (config.nats.clone(), config.validation.clone(), store.clone(), config.retry.clone(), writer.clone());
            supervise("nats", health.clone(), config.retry.clone(), shutdown.clone(), {
                let (health, shutdown) = (health.clone(), shutdown.clone());
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
            })
        })
        .collect();
    Some(("nats", join_members(members), health))
}
