//! The stream-source contract (`testkit::conformance`) on NATS JetStream:
//! a stream and durable consumer of each test's own on the shared server.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use broker::Health;
use ingest_nats::{Error, NatsConfig, NatsSource};
use model::{Ingestor, Source};
use storage::Store;
use testkit::conformance::{BrokerHarness, Probe, retry};
use testkit::nats::unique;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Nats {
    config: NatsConfig,
    js: jetstream::Context,
}

impl BrokerHarness for Nats {
    const SOURCE: Source = Source::Nats;
    type Error = Error;

    async fn new() -> Self {
        let url = testkit::nats::url();
        let config = NatsConfig {
            url: url.clone(),
            subject: format!("{}.usage", unique("t")),
            stream: unique("S"),
            consumer: unique("c"),
            fetch_batch: 100,
            ack_wait_secs: 2,
            idle_wait_ms: 200,
            ..NatsConfig::default()
        };
        let client = async_nats::connect(&url).await.unwrap_or_else(|e| panic!("cannot reach NATS at {url} ({e})"));
        let js = jetstream::new(client);
        // As an operator would create it; the source uses it as it is.
        js.create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
        Nats { config, js }
    }

    async fn publish(&self, payloads: Vec<String>) {
        let mut acks = Vec::new();
        for payload in payloads {
            acks.push(self.js.publish(self.config.subject.clone(), payload.into()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }

    /// Every member is the one durable consumer; `member` names nothing here.
    fn spawn(
        &self,
        _member: &str,
        ingestor: Ingestor<Probe>,
        dead_letters: Store,
        health: Health,
        shutdown: CancellationToken,
    ) -> JoinHandle<Result<(), Error>> {
        let source = NatsSource::new(self.config.clone(), ingestor, dead_letters, retry(), health);
        tokio::spawn(source.run(shutdown))
    }

    async fn outstanding(&self) -> u64 {
        let mut stream = self.js.get_stream(&self.config.stream).await.unwrap();
        match stream.get_consumer::<jetstream::consumer::pull::Config>(&self.config.consumer).await {
            // Every message above the consumer's ack floor: exact while
            // messages are acknowledged in order, which is all the suite
            // asks of it. `num_pending + num_ack_pending` is not: a message
            // being redelivered was once seen counted in both (301 of 300).
            Ok(mut consumer) => {
                let floor = consumer.info().await.unwrap().ack_floor.stream_sequence;
                stream.info().await.unwrap().state.last_sequence - floor
            }
            // Before any source ran: everything in the stream waits.
            Err(_) => stream.info().await.unwrap().state.messages,
        }
    }

    async fn cleanup(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.js.delete_stream(&self.config.stream)).await;
    }
}

testkit::broker_conformance_suite!(Nats);
