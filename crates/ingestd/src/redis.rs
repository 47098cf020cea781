//! Builds and spawns the Redis Streams source when `redis.url` is set and
//! `redis.consumer.enabled`.

use broker::{Health, Quarantine};
use ingest_redis::{RedisConsumerConfig, RedisSource};
use model::Ingestor;
use storage::{Store, WriterHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::supervise::{join_members, supervise};

pub(crate) fn spawn(
    config: &Config,
    writer: WriterHandle,
    store: &Store,
    shutdown: CancellationToken,
) -> Option<crate::Spawned> {
    let redis = &config.redis;
    if redis.url.is_empty() || !redis.consumer.enabled {
        return None;
    }
    // One health for all the members, as for one source: each member
    // reports into it (up when it reads; down while it reconnects or is
    // restarted), and the latest report stands.
    let health = Health::new();
    // Each consumer is supervised on its own, with its own quarantine: a
    // quarantine follows the one batch its source has in hand.
    let members: Vec<_> = redis
        .consumer
        .consumer_names(&hostname())
        .into_iter()
        .map(|name| {
            let consumer = RedisConsumerConfig { name, ..redis.consumer.clone() };
            let quarantine = Quarantine::new();
            let (url, validation, store, retry, writer) =
                (redis.url.clone(), config.validation.clone(), store.clone(), config.retry.clone(), writer.clone());
            supervise("redis", health.clone(), config.retry.clone(), shutdown.clone(), {
                let (health, shutdown) = (health.clone(), shutdown.clone());
                move || {
                    let ingestor = Ingestor::new(writer.clone(), validation.clone());
                    let source = RedisSource::new(
                        &url,
                        consumer.clone(),
                        ingestor,
                        store.clone(),
                        retry.clone(),
                        health.clone(),
                    )
                    .with_quarantine(quarantine.clone());
                    let (shutdown, masked) = (shutdown.clone(), config::mask_url(&url));
                    async move {
                        source
                            .run(shutdown)
                            .await
                            .map_err(|e| anyhow::Error::new(e).context(format!("redis source at {masked}")))
                    }
                }
            })
        })
        .collect();
    let task = join_members(members);
    Some(("redis", task, health))
}

/// `HOSTNAME`, else the kernel's host name: stable across restarts of the
/// same host or container, unlike a suffix kept in a file, which a
/// container with a read-only or fresh file system would lose.
fn hostname() -> String {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.trim().is_empty()
    {
        return h.trim().to_owned();
    }
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
        .unwrap_or_default()
}
