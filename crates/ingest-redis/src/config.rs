use serde::{Deserialize, Serialize};

/// `[redis.consumer]` (SPEC §7). The source runs when `redis.url` is set
/// and `enabled` is true; the URL lives in ingestd's `[redis]` section
/// because the Redis rate limiter uses it too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConsumerConfig {
    pub enabled: bool,
    /// `REDIS_STREAM_KEY`.
    pub stream_key: String,
    /// The consumer group; created (with `MKSTREAM`, from id `0`) when absent.
    pub group: String,
    /// This process's (first) consumer name in the group. Empty: `ingestd-<host
    /// name>` (`HOSTNAME`, else the kernel's host name), which is stable
    /// across restarts of the same host or container, so a restarted process
    /// finds and drains its own pending entries. Give each process on one
    /// host its own name.
    pub name: String,
    /// Consumers of the group this process runs, each with its own loop,
    /// connections and pending list: `<name>`, then `<name>#2` …
    /// `<name>#N` (`#` cannot occur in a host name). One consumer leaves the
    /// writer idle while it reads, decodes and acknowledges; several keep a
    /// batch committing while the next is read (docs/benchmarks.md, "Redis
    /// Streams source"). Lowering it leaves the pending entries of the
    /// names dropped to `XAUTOCLAIM` by the others after `claim_idle_secs`.
    pub consumers: usize,
    /// Entries per `XREADGROUP` (and per writer submission).
    pub read_batch: usize,
    /// How long one blocking read waits for new entries.
    pub block_ms: u64,
    /// Entries pending this long with another consumer are taken over
    /// (`XAUTOCLAIM`); the claim runs every `claim_idle_secs / 2` (0.5 s ..= 30 s).
    pub claim_idle_secs: u64,
    /// An entry delivered more often than this is dead-lettered and acked.
    pub max_deliveries: u64,
}

impl Default for RedisConsumerConfig {
    fn default() -> Self {
        RedisConsumerConfig {
            enabled: true,
            stream_key: "llm:usage".into(),
            group: "ingestd".into(),
            name: String::new(),
            consumers: 4,
            read_batch: 1000,
            block_ms: 1000,
            claim_idle_secs: 60,
            max_deliveries: 5,
        }
    }
}

impl RedisConsumerConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let err = |key: &str, msg: &str| Err(format!("redis.consumer.{key}: {msg}"));
        if self.stream_key.is_empty() {
            return err("stream_key", "must not be empty");
        }
        if self.group.is_empty() {
            return err("group", "must not be empty");
        }
        if !(1..=64).contains(&self.consumers) {
            return err("consumers", "must be between 1 and 64");
        }
        if self.read_batch == 0 {
            return err("read_batch", "must be at least 1");
        }
        if !(1..=600_000).contains(&self.block_ms) {
            // BLOCK 0 waits forever, and shutdown could not interrupt it politely.
            return err("block_ms", "must be between 1 and 600000");
        }
        if !(1..=604_800).contains(&self.claim_idle_secs) {
            return err("claim_idle_secs", "must be between 1 and 604800 (a week)");
        }
        if self.max_deliveries == 0 {
            return err("max_deliveries", "must be at least 1");
        }
        Ok(())
    }

    /// The consumer name: `name`, or `ingestd-<hostname>` when it is empty.
    pub fn consumer_name(&self, hostname: &str) -> String {
        match self.name.is_empty() {
            false => self.name.clone(),
            true if hostname.is_empty() => "ingestd".to_owned(),
            true => format!("ingestd-{hostname}"),
        }
    }

    /// The names of this process's `consumers`: the consumer name, then
    /// `<name>#2` … `<name>#N`.
    pub fn consumer_names(&self, hostname: &str) -> Vec<String> {
        let name = self.consumer_name(hostname);
        (1..=self.consumers).map(|n| if n == 1 { name.clone() } else { format!("{name}#{n}") }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_validation() {
        let c = RedisConsumerConfig::default();
        assert_eq!(c.consumer_name("box-1"), "ingestd-box-1");
        assert_eq!(c.consumer_name(""), "ingestd");
        let named = RedisConsumerConfig { name: "worker-a".into(), ..c.clone() };
        assert_eq!(named.consumer_name("box-1"), "worker-a");
        assert_eq!(c.consumer_names("box"), ["ingestd-box", "ingestd-box#2", "ingestd-box#3", "ingestd-box#4"]);
        let one = RedisConsumerConfig { consumers: 1, ..named.clone() };
        assert_eq!(one.consumer_names("box"), ["worker-a"]);
        for consumers in [0, 65] {
            let bad = RedisConsumerConfig { consumers, ..c.clone() };
            assert!(bad.validate().unwrap_err().starts_with("redis.consumer.consumers"));
        }
        assert!(c.validate().is_ok());
        let bad = RedisConsumerConfig { read_batch: 0, ..c.clone() };
        assert!(bad.validate().unwrap_err().starts_with("redis.consumer.read_batch"));
        let bad = RedisConsumerConfig { block_ms: 0, ..c };
        assert!(bad.validate().unwrap_err().starts_with("redis.consumer.block_ms"));
    }
}
