//! The stream-source contract (`testkit::conformance`) on Redis Streams: a
//! stream key and consumer group of each test's own on the shared server.

use broker::Health;
use fred::cmd;
use fred::prelude::{Builder, ClientLike, Config as FredConfig, ReconnectPolicy};
use fred::types::Value;
use ingest_redis::{Error, RedisConsumerConfig, RedisSource};
use model::{Ingestor, Source};
use storage::Store;
use testkit::conformance::{BrokerHarness, Probe, retry};
use testkit::redis::{unique, url};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Redis {
    url: String,
    client: fred::clients::Client,
    key: String,
    group: String,
}

impl Redis {
    async fn cmd(&self, name: &'static str, args: &[&str]) -> Value {
        let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
        self.client.custom::<Value, Value>(cmd!(name), args).await.unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn integer(value: &Value) -> u64 {
        match value {
            Value::Integer(n) => *n as u64,
            other => panic!("not an integer: {other:?}"),
        }
    }

    /// The group's last delivered id, `None` before the group exists.
    async fn last_delivered(&self) -> Option<String> {
        let groups = match self
            .client
            .custom::<Value, Value>(cmd!("XINFO"), vec!["GROUPS".into(), self.key.as_str().into()])
            .await
        {
            Ok(Value::Array(groups)) => groups,
            _ => return None,
        };
        for group in groups {
            let fields: Vec<(String, Value)> = match group {
                Value::Array(flat) => {
                    flat.chunks(2).map(|kv| (kv[0].as_string().unwrap_or_default(), kv[1].clone())).collect()
                }
                Value::Map(map) => map
                    .inner()
                    .into_iter()
                    .map(|(k, v)| (k.as_str().map(|s| s.to_string()).unwrap_or_default(), v))
                    .collect(),
                other => panic!("XINFO GROUPS entry: {other:?}"),
            };
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            if field("name").and_then(|v| v.as_string()) == Some(self.group.clone()) {
                return field("last-delivered-id").and_then(|v| v.as_string());
            }
        }
        None
    }
}

impl BrokerHarness for Redis {
    const SOURCE: Source = Source::Redis;
    type Error = Error;

    async fn new() -> Self {
        let url = url();
        let mut builder = Builder::from_config(FredConfig::from_url(&url).unwrap());
        builder.set_policy(ReconnectPolicy::new_constant(0, 50));
        let client = builder.build().unwrap();
        client.init().await.unwrap_or_else(|e| panic!("cannot reach Redis at {url} ({e})"));
        Redis { url, client, key: unique("test:usage"), group: unique("g") }
    }

    async fn publish(&self, payloads: Vec<String>) {
        let pipeline = self.client.pipeline();
        for p in payloads {
            let args: Vec<Value> = vec![self.key.as_str().into(), "*".into(), "payload".into(), p.into()];
            let _: () = pipeline.custom(cmd!("XADD"), args).await.unwrap();
        }
        let _: Vec<Value> = pipeline.all().await.unwrap();
    }

    fn spawn(
        &self,
        member: &str,
        ingestor: Ingestor<Probe>,
        dead_letters: Store,
        health: Health,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<(), Error>> {
        let config = RedisConsumerConfig {
            stream_key: self.key.clone(),
            group: self.group.clone(),
            name: member.to_owned(),
            read_batch: 100,
            block_ms: 200,
            claim_idle_secs: 3600,
            ..RedisConsumerConfig::default()
        };
        let source = RedisSource::new(&self.url, config, ingestor, dead_letters, retry(), health);
        tokio::spawn(source.run(shutdown))
    }

    /// Pending entries of the group plus the entries after its last delivered id.
    async fn outstanding(&self) -> u64 {
        let Some(last) = self.last_delivered().await else {
            return Self::integer(&self.cmd("XLEN", &[&self.key]).await);
        };
        let pending = match self.cmd("XPENDING", &[&self.key, &self.group]).await {
            Value::Array(summary) => Self::integer(&summary[0]),
            other => panic!("XPENDING summary: {other:?}"),
        };
        let after = match self.cmd("XRANGE", &[&self.key, &format!("({last}"), "+"]).await {
            Value::Array(entries) => entries.len() as u64,
            other => panic!("XRANGE: {other:?}"),
        };
        pending + after
    }

    async fn cleanup(self) {
        let _ = self.client.custom::<Value, Value>(cmd!("DEL"), vec![Value::from(self.key.as_str())]).await;
        let _ = self.client.quit().await;
    }
}

testkit::broker_conformance_suite!(Redis);
