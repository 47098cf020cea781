//! Builds and spawns the Redis Streams source when `redis.url` is set and
//! `redis.consumer.enabled`.

use model::Ingestor;
use redis_source::RedisSource;
use source::SourceHealth;
use storage::{Store, WriterHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};

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
    let health = SourceHealth::new();
    let ingestor = Ingestor::new(writer, config.validation.clone());
    let source = RedisSource::new(&redis.url, consumer, ingestor, store.clone(), config.retry.clone(), health.clone());
    let url = config::mask_url(&redis.url);
    let task = tokio::spawn(async move {
        source.run(shutdown).await.map_err(|e| anyhow::Error::new(e).context(format!("redis source at {url}")))
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
