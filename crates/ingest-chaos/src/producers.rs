//! Stream producers that keep the ledger: a record counts as acknowledged
//! when the broker accepted it (a JetStream `PubAck`, an `XADD` reply), since
//! from then on ingestd owes it to the database. A publish that fails is
//! retried with the same record (same `request_id`) until it is accepted or
//! the producer stops, as a careful client would: the broker may hold it
//! twice, the database must not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::{ClientLike as _, Config as FredConfig, ReconnectPolicy};
use fred::types::Value;
use uuid::Uuid;

use crate::Ledger;

/// What the producers saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProduceReport {
    /// Records the broker accepted.
    pub acked: usize,
    /// Publishes that failed (and were retried).
    pub errors: usize,
}

/// Producer tasks; [`stop`](Producers::stop) ends them after their current record.
pub struct Producers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<ProduceReport>>,
}

impl Producers {
    /// `workers` JetStream publishers on `subject`, one record per message.
    pub fn nats(url: &str, subject: &str, org: &str, workers: usize, ledger: Arc<Ledger>, pause: Duration) -> Self {
        Self::spawn(workers, |w, stop| {
            let (url, subject, org, ledger) = (url.to_owned(), subject.to_owned(), org.to_owned(), ledger.clone());
            async move {
                let client = loop {
                    match async_nats::ConnectOptions::new().retry_on_initial_connect().connect(url.as_str()).await {
                        Ok(c) => break c,
                        Err(_) if !stop.load(Ordering::Relaxed) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(_) => return ProduceReport::default(),
                    }
                };
                let js = async_nats::jetstream::new(client);
                produce(w, &org, &ledger, &stop, pause, |payload| {
                    let (js, subject) = (js.clone(), subject.clone());
                    async move {
                        let ack = js.publish(subject, payload.into()).await.map_err(|_| ())?;
                        ack.await.map(|_| ()).map_err(|_| ())
                    }
                })
                .await
            }
        })
    }

    /// `workers` producers `XADD`ing `payload` fields to `key`.
    pub fn redis(url: &str, key: &str, org: &str, workers: usize, ledger: Arc<Ledger>, pause: Duration) -> Self {
        Self::spawn(workers, |w, stop| {
            let (url, key, org, ledger) = (url.to_owned(), key.to_owned(), org.to_owned(), ledger.clone());
            async move {
                let Ok(config) = FredConfig::from_url(&url) else { return ProduceReport::default() };
                let client =
                    fred::clients::Client::new(config, None, None, Some(ReconnectPolicy::new_constant(0, 100)));
                let _connection = client.init().await;
                produce(w, &org, &ledger, &stop, pause, |payload| {
                    let (client, key) = (client.clone(), key.clone());
                    async move {
                        let args: Vec<Value> = vec![key.into(), "*".into(), "payload".into(), payload.into()];
                        client.custom::<Value, Value>(fred::cmd!("XADD"), args).await.map(|_| ()).map_err(|_| ())
                    }
                })
                .await
            }
        })
    }

    fn spawn<F, Fut>(workers: usize, task: F) -> Self
    where
        F: Fn(u64, Arc<AtomicBool>) -> Fut,
        Fut: Future<Output = ProduceReport> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers as u64).map(|w| tokio::spawn(task(w, stop.clone()))).collect();
        Producers { stop, tasks }
    }

    pub async fn stop(self) -> ProduceReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = ProduceReport::default();
        for task in self.tasks {
            let report = task.await.unwrap_or_default();
            total.acked += report.acked;
            total.errors += report.errors;
        }
        total
    }
}

/// One producer's loop: a fresh record, published until accepted.
async fn produce<P, Fut>(
    w: u64,
    org: &str,
    ledger: &Ledger,
    stop: &AtomicBool,
    pause: Duration,
    publish: P,
) -> ProduceReport
where
    P: Fn(String) -> Fut,
    Fut: Future<Output = Result<(), ()>>,
{
    let mut report = ProduceReport::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let record = testkit::record_json(org, w * 1_000_000_000 + n);
        let Some(id) = record["request_id"].as_str().and_then(|s| Uuid::try_parse(s).ok()) else { continue };
        let payload = record.to_string();
        ledger.attempt(&[id]);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), publish(payload.clone())).await {
                Ok(Ok(())) => {
                    ledger.ack(&[id]);
                    report.acked += 1;
                    break;
                }
                _ => {
                    report.errors += 1;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    report
}
