//! The source's IO: connect, fetch, commit through [`broker::process`],
//! then ack, term or nak. What to do with each message is decided in
//! [`messages`](crate::messages), which does no IO.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::AckKind;
use broker::{Backoff, Health, Incoming, Quarantine, RetryConfig, Verdict};
use futures::StreamExt;
use model::{DeadLetter, DeadLetterSink, Ingestor, RecordSink, Source};
use tokio_util::sync::CancellationToken;

use crate::setup::{self, SetupError};
use crate::{Error, NatsConfig, messages};

/// How often the consumer's pending count (lag) is read from the server.
const PENDING_EVERY: Duration = Duration::from_secs(5);
/// How soon a failed consumer-info request is asked again.
const PENDING_RETRY: Duration = Duration::from_secs(1);

/// The JetStream source. Build it with [`NatsSource::new`], then [`run`](Self::run) it.
pub struct NatsSource<S, D> {
    config: NatsConfig,
    ingestor: Ingestor<S>,
    dead_letters: D,
    retry: RetryConfig,
    health: Health,
    quarantine: Quarantine,
}

impl<S: RecordSink, D: DeadLetterSink> NatsSource<S, D> {
    pub fn new(config: NatsConfig, ingestor: Ingestor<S>, dead_letters: D, retry: RetryConfig, health: Health) -> Self {
        NatsSource { config, ingestor, dead_letters, retry, health, quarantine: Quarantine::new() }
    }

    /// Shares `quarantine` with earlier incarnations of this source (the
    /// supervisor restarts a source that stopped with the same one).
    pub fn with_quarantine(mut self, quarantine: Quarantine) -> Self {
        self.quarantine = quarantine;
        self
    }

    /// Consumes until `shutdown` is cancelled: connects (retrying with
    /// backoff), sets up the stream and consumer, then fetch → commit → ack.
    /// On shutdown it stops fetching, finishes and acks the batch in hand,
    /// flushes the acks and returns `Ok`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let cfg = &self.config;
        self.health.set_disconnected(format!("connecting to {}", model::mask_url(&cfg.url)));
        let Some(client) = self.connect(&shutdown).await else { return Ok(()) };
        let js = jetstream::new(client.clone());
        let mut setup_backoff = Backoff::new(self.retry.clone());
        let mut storage = Backoff::new(self.retry.clone());
        'setup: while !shutdown.is_cancelled() {
            let (mut consumer, ack_wait) = match setup::setup(&self.config, &js).await {
                Ok(found) => found,
                Err(e) => {
                    let why = format!("nats: {e}");
                    match e {
                        SetupError::Mismatch(_) => {
                            tracing::error!(error = %why, "the NATS stream or consumer cannot be used");
                            self.health.set_degraded(why);
                        }
                        SetupError::Server { .. } => {
                            tracing::warn!(error = %why, "NATS setup failed; retrying");
                            self.health.set_degraded(why);
                        }
                    }
                    sleep(setup_backoff.next_delay(), &shutdown).await;
                    continue;
                }
            };
            setup_backoff.reset();
            self.health.set_ok();
            let mut pending_at = Instant::now() - PENDING_EVERY;
            // The fetch in hand, and the error that ended it, if any. The
            // next fetch runs while the one in hand commits.
            let (mut in_hand, mut fetch_error) = (Vec::new(), None);
            loop {
                if pending_at.elapsed() >= PENDING_EVERY {
                    pending_at = Instant::now();
                    match consumer.info().await {
                        Ok(info) => metrics::gauge!("ingestd_nats_consumer_pending").set(info.num_pending as f64),
                        // Asked again after a second, not after PENDING_EVERY.
                        Err(why) => {
                            tracing::debug!(error = %why, "NATS consumer info failed");
                            pending_at -= PENDING_EVERY - PENDING_RETRY;
                        }
                    }
                }
                let (messages, error) = (std::mem::take(&mut in_hand), fetch_error.take());
                if messages.is_empty() && error.is_none() {
                    if shutdown.is_cancelled() {
                        break 'setup;
                    }
                    (in_hand, fetch_error) = self.fetch(&consumer, &shutdown).await;
                    if in_hand.is_empty() && fetch_error.is_none() {
                        self.mark_ok(&client, &storage);
                    }
                    continue;
                }
                if !messages.is_empty() {
                    metrics::histogram!("ingestd_nats_fetch_batch_size").record(messages.len() as f64);
                    let prefetch = error.is_none() && !shutdown.is_cancelled();
                    let next = async {
                        match prefetch {
                            true => self.fetch(&consumer, &shutdown).await,
                            false => (Vec::new(), None),
                        }
                    };
                    let (handled, next) = tokio::join!(self.handle(&messages, ack_wait, &mut storage, &shutdown), next);
                    handled?;
                    (in_hand, fetch_error) = next;
                }
                if let Some(e) = error {
                    // Disconnected, or the consumer changed under us: set up
                    // again once the client has reconnected.
                    tracing::warn!(error = %e, "NATS fetch failed");
                    if client.connection_state() != async_nats::connection::State::Connected {
                        self.health.set_disconnected(format!("nats: {e}"));
                    }
                    sleep(setup_backoff.next_delay(), &shutdown).await;
                    continue 'setup;
                }
                self.mark_ok(&client, &storage);
            }
        }
        // Acks are queued in the client; send them before the connection goes.
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await.unwrap_or(Ok(())) {
            tracing::warn!(error = %e, "flushing the last NATS acks failed; those messages will be redelivered");
        }
        tracing::info!("NATS source stopped");
        Ok(())
    }

    /// Ready again: connected, and storage is not failing.
    fn mark_ok(&self, client: &async_nats::Client, storage: &Backoff) {
        if !storage.exhausted() && client.connection_state() == async_nats::connection::State::Connected {
            self.health.set_ok();
        }
    }

    /// Connects, retrying with backoff; `None` when shut down first. Once
    /// connected the client reconnects by itself, forever, with the same
    /// capped exponential delays.
    async fn connect(&self, shutdown: &CancellationToken) -> Option<async_nats::Client> {
        let mut backoff = Backoff::new(self.retry.clone());
        loop {
            let health = self.health.clone();
            let url = model::mask_url(&self.config.url);
            let delays = Backoff::new(self.retry.clone());
            let options = match self.config.connect_options().await {
                Ok(options) => options,
                Err(e) => {
                    let why = format!("nats: cannot read nats.credentials_file: {e}");
                    tracing::error!("{why}; retrying");
                    self.health.set_disconnected(why);
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            let options = options
                .name(format!("ingestd {}", self.config.consumer))
                .max_reconnects(None)
                .reconnect_delay_callback(move |attempts| match attempts {
                    0 | 1 => Duration::ZERO,
                    n => delays.ceiling(u32::try_from(n - 2).unwrap_or(u32::MAX)),
                })
                .event_callback(move |event| {
                    let (health, url) = (health.clone(), url.clone());
                    async move {
                        match event {
                            async_nats::Event::Disconnected => {
                                tracing::warn!(%url, "NATS connection lost; reconnecting");
                                health.set_disconnected(format!("nats: disconnected from {url}"));
                            }
                            async_nats::Event::Connected => tracing::info!(%url, "NATS connected"),
                            other => tracing::debug!(%url, event = %other, "NATS event"),
                        }
                    }
                });
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                result = async { options.connect(self.config.servers()?).await.map_err(std::io::Error::other) } => match result {
                    Ok(client) => {
                        tracing::info!(url = %model::mask_url(&self.config.url), "NATS connected");
                        return Some(client);
                    }
                    Err(e) => {
                        let why = format!("nats: cannot connect to {}: {e}", model::mask_url(&self.config.url));
                        tracing::warn!(error = %why, "retrying");
                        self.health.set_disconnected(why);
                    }
                },
            }
            sleep(backoff.next_delay(), shutdown).await;
        }
    }

    /// One fetch: what arrived, and the error that ended it early, if any.
    /// On shutdown, stops waiting and keeps what arrived.
    async fn fetch(
        &self,
        consumer: &PullConsumer,
        shutdown: &CancellationToken,
    ) -> (Vec<jetstream::Message>, Option<String>) {
        let request = consumer
            .fetch()
            .max_messages(self.config.fetch_batch)
            .expires(Duration::from_millis(self.config.idle_wait_ms))
            .messages();
        let mut batch = tokio::select! {
            _ = shutdown.cancelled() => return (Vec::new(), None),
            batch = request => match batch {
                Ok(batch) => batch,
                Err(e) => return (Vec::new(), Some(e.to_string())),
            },
        };
        let mut messages = Vec::with_capacity(self.config.fetch_batch.min(1024));
        loop {
            tokio::select! {
                _ = shutdown.cancelled(), if messages.is_empty() => return (messages, None),
                next = batch.next() => match next {
                    Some(Ok(message)) => messages.push(message),
                    Some(Err(e)) => return (messages, Some(e.to_string())),
                    None => return (messages, None),
                },
            }
        }
    }

    /// Commits one fetch, then acks (or terms) each message; on a storage
    /// failure naks them all and waits the backoff delay. A message the
    /// [`Quarantine`] says killed an earlier task is tried alone after the
    /// others, or dead-lettered when it was already tried alone.
    async fn handle(
        &self,
        messages: &[jetstream::Message],
        ack_wait: Duration,
        storage: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let mut batch = Vec::with_capacity(messages.len());
        let mut alone = Vec::new();
        let mut redelivered = 0u64;
        for message in messages {
            let Ok(info) = message.info() else {
                // Not a JetStream message (cannot happen on a pull consumer).
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            };
            let (key, delivered) = (messages::key_of(&info), messages::deliveries(&info));
            redelivered += u64::from(delivered > 1);
            match self.quarantine.verdict(&key, delivered, self.config.max_deliveries) {
                Verdict::Batch => batch.push((message, key)),
                Verdict::Alone => alone.push((message, key)),
                Verdict::Killer => self.dead_letter_killer(message, key, delivered, storage).await,
            }
        }
        if redelivered > 0 {
            metrics::counter!("ingestd_redeliveries_total", "source" => "nats", "kind" => "pending")
                .increment(redelivered);
        }
        if !batch.is_empty() {
            let held = self.quarantine.hold(batch.iter().map(|(_, key)| key.clone()), false);
            self.commit_and_ack(&batch, ack_wait, storage, shutdown).await?;
            held.release();
        }
        for one in alone {
            tracing::warn!(key = %one.1, "NATS message held by a source task that died; trying it alone");
            let held = self.quarantine.hold([one.1.clone()], true);
            self.commit_and_ack(&[one], ack_wait, storage, shutdown).await?;
            held.release();
        }
        Ok(())
    }

    /// Dead-letters and terms a message that killed a source task when tried
    /// alone; naks it when the dead letter cannot be written.
    async fn dead_letter_killer(
        &self,
        message: &jetstream::Message,
        key: String,
        delivered: u64,
        storage: &mut Backoff,
    ) {
        let letter = DeadLetter {
            source: Source::Nats,
            message_key: key,
            payload: message.payload.to_vec(),
            error: format!(
                "delivered {delivered} times (max_deliveries is {}), and the source stopped while it was being tried alone",
                self.config.max_deliveries
            ),
        };
        match self.dead_letters.put(&letter).await {
            Ok(()) => {
                tracing::error!(key = %letter.message_key, delivered, "NATS message stopped the source; dead-lettered");
                metrics::counter!("ingestd_dead_letters_total", "source" => "nats").increment(1);
                metrics::counter!("ingestd_nats_messages_total", "outcome" => "dead_lettered").increment(1);
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                let delay = storage.next_delay();
                tracing::warn!(error = %e, key = %letter.message_key, "dead letter not written; nak'ed");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn commit_and_ack(
        &self,
        messages: &[(&jetstream::Message, String)],
        ack_wait: Duration,
        storage: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let batch: Vec<Incoming<'_>> = messages
            .iter()
            .map(|(m, key)| Incoming { key, unix_ms: broker::key_unix_ms(Source::Nats, key), payload: &m.payload })
            .collect();

        // Keep the server from redelivering while a slow commit runs.
        let work = broker::process(&self.ingestor, &self.dead_letters, Source::Nats, &batch);
        tokio::pin!(work);
        let every = (ack_wait / 2).max(Duration::from_millis(100));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = progress.tick() => {
                    for (message, _) in messages {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                    tracing::debug!(messages = messages.len(), "NATS progress acks sent");
                }
            }
        };

        match result {
            Ok(report) => {
                let (mut stored, mut dead, mut ack_errors) = (0u64, 0u64, 0u64);
                for ((message, _), fate) in messages.iter().zip(&report.fates) {
                    let kind = messages::ack_for(fate);
                    match kind {
                        AckKind::Term => dead += 1,
                        _ => stored += 1,
                    }
                    if message.ack_with(kind).await.is_err() {
                        ack_errors += 1;
                    }
                }
                metrics::counter!("ingestd_nats_messages_total", "outcome" => "stored").increment(stored);
                metrics::counter!("ingestd_nats_messages_total", "outcome" => "dead_lettered").increment(dead);
                if ack_errors > 0 {
                    // The messages are committed; an ack that does not arrive
                    // only causes a redelivery, which stores nothing again.
                    metrics::counter!("ingestd_nats_ack_errors_total").increment(ack_errors);
                    tracing::warn!(ack_errors, "NATS acks could not be sent; those messages will be redelivered");
                }
                storage.reset();
            }
            Err(e) => {
                let delay = storage.next_delay();
                for (message, _) in messages {
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                metrics::counter!("ingestd_nats_messages_total", "outcome" => "nak").increment(messages.len() as u64);
                tracing::warn!(error = %e, attempts = storage.attempts(), ?delay, "NATS batch not committed; nak'ed");
                if storage.exhausted() {
                    self.health.set_degraded(format!("nats: storage keeps failing: {e}"));
                }
                sleep(delay, shutdown).await;
            }
        }
        Ok(())
    }
}

/// Sleeps `delay` unless shut down first.
async fn sleep(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
