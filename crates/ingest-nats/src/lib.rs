//! ingestd's NATS JetStream source (SPEC §5).
//!
//! A durable **pull** consumer with explicit acks. Each fetch of up to
//! `fetch_batch` messages goes through [`broker::process`] (decode, derived
//! ids, one writer submission, dead letters) and only when that returned —
//! every record committed, every dead letter written — is each message acked
//! (`+ACK`, or `+TERM` for a message dead-lettered whole). When storage fails
//! or the writer is overloaded the whole fetch is `-NAK`ed with a capped
//! exponential delay (`[retry]`), and the loop waits as long before fetching
//! again. Nothing is acked that is not committed, so a crash, a lost
//! connection or a lost ack only ever causes a redelivery, and a redelivery
//! derives the same record ids (`stream:sequence@published-ms`, index), so
//! it stores nothing twice. The publish time makes those ids time-ordered
//! UUID v8 (cheap for the unique index) and keeps a re-created stream's
//! reused sequence numbers from matching old rows.
//!
//! What it deliberately does not do: create or change anything on an existing
//! stream or consumer (they are used as they are; mismatches that matter are
//! reported), keep messages in memory beyond one fetch, or know about HTTP.

mod config;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use broker::{Backoff, Fate, Health, Incoming, Quarantine, RetryConfig, Verdict};
use futures::StreamExt;
use model::{DeadLetter, DeadLetterSink};
use model::{Ingestor, RecordSink, Source};
use tokio_util::sync::CancellationToken;

pub use config::NatsConfig;

/// How often the consumer's pending count (lag) is read from the server.
const PENDING_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The test failpoint stopped the source after a commit, before its acks.
    #[error("stopped by the crash-after-commit failpoint")]
    Failpoint,
}

/// Why the stream or consumer cannot be used (yet).
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{0}")]
    Mismatch(String),
    #[error("{what}: {source}")]
    Server {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SetupError {
    fn server(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        SetupError::Server { what: what.into(), source: source.into() }
    }
}

/// The JetStream source. Build it with [`NatsSource::new`], then [`run`](Self::run) it.
pub struct NatsSource<S, D> {
    config: NatsConfig,
    ingestor: Ingestor<S>,
    dead_letters: D,
    retry: RetryConfig,
    health: Health,
    quarantine: Quarantine,
    crash_after_commit: Option<Arc<AtomicBool>>,
}

impl<S: RecordSink, D: DeadLetterSink> NatsSource<S, D> {
    pub fn new(config: NatsConfig, ingestor: Ingestor<S>, dead_letters: D, retry: RetryConfig, health: Health) -> Self {
        NatsSource {
            config,
            ingestor,
            dead_letters,
            retry,
            health,
            quarantine: Quarantine::new(),
            crash_after_commit: None,
        }
    }

    /// Shares `quarantine` with earlier incarnations of this source (the
    /// supervisor restarts a source that stopped with the same one).
    pub fn with_quarantine(mut self, quarantine: Quarantine) -> Self {
        self.quarantine = quarantine;
        self
    }

    /// Test hook standing in for `kill -9` between commit and ack: once
    /// `armed` is set, the next committed batch is not acked and `run`
    /// returns [`Error::Failpoint`] at once, dropping the connection. The
    /// server sees exactly what it sees after a crash at that point: the
    /// messages stay unacked and are redelivered after `ack_wait`.
    #[doc(hidden)]
    pub fn crash_after_commit(mut self, armed: Arc<AtomicBool>) -> Self {
        self.crash_after_commit = Some(armed);
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
            let (mut consumer, ack_wait) = match self.setup(&js).await {
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
                    if let Ok(info) = consumer.info().await {
                        metrics::gauge!("ingestd_nats_consumer_pending").set(info.num_pending as f64);
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
            let options = async_nats::ConnectOptions::new()
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
                result = options.connect(self.config.url.as_str()) => match result {
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

    /// Finds or creates the stream and the durable consumer; returns the
    /// consumer and the longest time the server waits for an ack.
    async fn setup(&self, js: &jetstream::Context) -> Result<(PullConsumer, Duration), SetupError> {
        let cfg = &self.config;
        let stream = match js.get_stream(&cfg.stream).await {
            Ok(stream) => {
                let subjects = &stream.cached_info().config.subjects;
                if !subjects.iter().any(|p| config::subject_matches(p, &cfg.subject)) {
                    return Err(SetupError::Mismatch(format!(
                        "stream {} exists with subjects {subjects:?}, which do not include nats.subject {:?}",
                        cfg.stream, cfg.subject
                    )));
                }
                stream
            }
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.code() == 404) => {
                tracing::info!(stream = %cfg.stream, subject = %cfg.subject, "creating the NATS stream");
                js.create_stream(stream::Config {
                    name: cfg.stream.clone(),
                    subjects: vec![cfg.subject.clone()],
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| SetupError::server(format!("creating stream {}", cfg.stream), e))?
            }
            Err(e) => return Err(SetupError::server(format!("reading stream {}", cfg.stream), e)),
        };
        let wanted = pull::Config {
            durable_name: Some(cfg.consumer.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(cfg.ack_wait_secs),
            max_deliver: cfg.max_deliver,
            backoff: cfg.backoff_secs.iter().map(|s| Duration::from_secs(*s)).collect(),
            filter_subject: cfg.subject.clone(),
            // Room for a fetch in hand and one being fetched, per process.
            max_ack_pending: (cfg.fetch_batch as i64).saturating_mul(20).max(10_000),
            ..Default::default()
        };
        let consumer: PullConsumer = stream.get_or_create_consumer(&cfg.consumer, wanted).await.map_err(|e| {
            SetupError::server(format!("finding or creating consumer {} on stream {}", cfg.consumer, cfg.stream), e)
        })?;
        let found = &consumer.cached_info().config;
        if found.ack_policy != AckPolicy::Explicit {
            return Err(SetupError::Mismatch(format!(
                "consumer {} exists with ack policy {:?}; ingestd needs explicit acks to ack only what it committed",
                cfg.consumer, found.ack_policy
            )));
        }
        if !found.filter_subject.is_empty() && found.filter_subject != cfg.subject {
            tracing::warn!(
                consumer = %cfg.consumer, filter = %found.filter_subject, subject = %cfg.subject,
                "the existing NATS consumer filters another subject than nats.subject; using it as it is"
            );
        }
        if found.max_deliver > 0 {
            tracing::warn!(
                consumer = %cfg.consumer, max_deliver = found.max_deliver,
                "the existing NATS consumer gives messages up after max_deliver deliveries; \
                 a storage outage that long drops them (ingestd creates consumers with -1)"
            );
        }
        let ack_wait = found.backoff.iter().copied().chain([found.ack_wait]).min().unwrap_or(found.ack_wait);
        tracing::info!(stream = %cfg.stream, consumer = %cfg.consumer, ?ack_wait, "NATS consumer ready");
        Ok((consumer, ack_wait))
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
            let published_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let key = broker::nats_key(info.stream, info.stream_sequence, published_ms);
            let delivered = u64::try_from(info.delivered).unwrap_or(0);
            redelivered += u64::from(delivered > 1);
            match self.quarantine.verdict(&key, delivered, self.config.max_deliveries) {
                Verdict::Batch => batch.push((message, key)),
                Verdict::Alone => alone.push((message, key)),
                Verdict::Killer => self.dead_letter_killer(message, key, delivered, storage).await,
            }
        }
        if redelivered > 0 {
            metrics::counter!("ingestd_nats_redeliveries_total").increment(redelivered);
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
                if let Some(armed) = &self.crash_after_commit
                    && armed.load(Ordering::SeqCst)
                {
                    return Err(Error::Failpoint);
                }
                let (mut stored, mut dead, mut ack_errors) = (0u64, 0u64, 0u64);
                for ((message, _), fate) in messages.iter().zip(&report.fates) {
                    let kind = match fate {
                        Fate::DeadLettered => {
                            dead += 1;
                            AckKind::Term
                        }
                        _ => {
                            stored += 1;
                            AckKind::Ack
                        }
                    };
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
