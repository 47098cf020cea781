//! Builds and spawns the Redis Streams source when `redis.url` is set and
//! `redis.consumer.enabled`.

use broker::{Health, Quarantine};
use ingest_redis::RedisSource;
use model::Ingestor;
use storage::{Store, WriterHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::supervise::supervise;

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
    let mut consumer = redis.consumer.clone();
    consumer.name = consumer.consumer_name(&hostname());
    let health = Health::new();
    let quarantine = Quarantine::new();
    let (url, validation, store, retry) =
        (redis.url.clone(), config.validation.clone(), store.clone(), config.retry.clone());
    let task = supervise("redis", health.clone(), config.retry.clone(), shutdown.clone(), {
        let health = health.clone();
        move || {
            let ingestor = Ingestor::new(writer.clone(), validation.clone());
            let source =
                RedisSource::new(&url, consumer.clone(), ingestor, store.clone(), retry.clone(), health.clone())
                    .with_quarantine(quarantine.clone());
            let (shutdown, masked) = (shutdown.clone(), config::mask_url(&url));
            async move {
                source
                    .run(shutdown)
                    .await
                    .map_err(|e| anyhow::Error::new(e).context(format!("redis source at {masked}")))
            }
        }
    });
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
