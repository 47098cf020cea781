//! Stream producers that keep the ledger: a record counts as acknowledged
//! when the broker accepted it (a JetStream `PubAck`, an `XADD` reply), since
//! from then on ingestd owes it to the database. One record in three has no
//! `request_id` (the source derives one from the message's identity). A
//! publish that fails is retried with the same message identity until it is
//! accepted or the producer stops, as a careful client would: JetStream
//! drops a repeated `Nats-Msg-Id`, and a repeated explicit `XADD` id is
//! refused, so the broker holds each record once and any second row in the
//! database is ingestd's duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::{ClientLike as _, Config as FredConfig, ReconnectPolicy};
use fred::types::Value;
use uuid::Uuid;

use crate::{Ledger, ledger};

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
    /// `workers` JetStream publishers on `subject`, one record per message;
    /// `url` may name several servers of a cluster, comma-separated.
    pub fn nats(url: &str, subject: &str, org: &str, workers: usize, ledger: Arc<Ledger>, pause: Duration) -> Self {
        Self::spawn(workers, |w, stop| {
            let (url, subject, org, ledger) = (url.to_owned(), subject.to_owned(), org.to_owned(), ledger.clone());
            async move {
                let client = loop {
                    match async_nats::ConnectOptions::new()
                        .retry_on_initial_connect()
                        .connect(url.split(',').collect::<Vec<_>>())
                        .await
                    {
                        Ok(c) => break c,
                        Err(_) if !stop.load(Ordering::Relaxed) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(_) => return ProduceReport::default(),
                    }
                };
                let js = async_nats::jetstream::new(client);
                produce(w, &org, &ledger, &stop, pause, |payload, marker| {
                    let (js, subject) = (js.clone(), subject.clone());
                    async move {
                        let message = async_nats::jetstream::message::PublishMessage::build()
                            .payload(payload.into())
                            .message_id(marker.to_string());
                        let ack = js.send_publish(subject, message).await.map_err(|_| ())?;
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
                // The entry id of the record being published: kept across
                // its retries, chosen afresh for the next record.
                let entry = Arc::new(std::sync::Mutex::new((Uuid::nil(), String::new())));
                produce(w, &org, &ledger, &stop, pause, |payload, marker| {
                    let (client, key, entry) = (client.clone(), key.clone(), entry.clone());
                    async move { xadd_once(&client, &key, &entry, marker, payload).await }
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

/// `XADD`s `payload` under an explicit entry id that stays the same while
/// the record is retried, so the stream holds it at most once. Redis refuses
/// an id not above the stream's last one: then either an earlier attempt of
/// this record got in (its reply lost to a cut connection: accepted), or
/// another producer's entry did (a fresh id next time).
async fn xadd_once(
    client: &fred::clients::Client,
    key: &str,
    entry: &std::sync::Mutex<(Uuid, String)>,
    marker: Uuid,
    payload: String,
) -> Result<(), ()> {
    // A fresh id is safe to use whenever the last one is known not to be in
    // the stream; a few tries, as producers racing in one millisecond refuse
    // each other's.
    for _ in 0..20 {
        let id = {
            let mut entry = entry.lock().unwrap_or_else(|e| e.into_inner());
            if entry.0 != marker {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|_| ())?;
                *entry = (marker, format!("{}-{}", now.as_millis(), marker.as_u128() as u32));
            }
            entry.1.clone()
        };
        let args: Vec<Value> = vec![key.into(), id.as_str().into(), "payload".into(), payload.clone().into()];
        match client.custom::<Value, Value>(fred::cmd!("XADD"), args).await {
            Ok(_) => return Ok(()),
            Err(e) if e.details().contains("equal or smaller") => {
                let range = vec![Value::from(key), id.as_str().into(), id.as_str().into()];
                let found: Value = client.custom(fred::cmd!("XRANGE"), range).await.map_err(|_| ())?;
                if matches!(&found, Value::Array(entries) if !entries.is_empty()) {
                    return Ok(());
                }
                entry.lock().unwrap_or_else(|e| e.into_inner()).0 = Uuid::nil();
            }
            Err(_) => return Err(()),
        }
    }
    Err(())
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
    P: Fn(String, Uuid) -> Fut,
    Fut: Future<Output = Result<(), ()>>,
{
    let mut report = ProduceReport::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (record, id) = ledger::record(org, w * 1_000_000_000 + n, !n.is_multiple_of(3));
        let payload = record.to_string();
        ledger.attempt(&[id]);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), publish(payload.clone(), id)).await {
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
