use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker::{Backoff, Fate, Health, Incoming, Quarantine, RetryConfig, Verdict};
use fred::prelude::{Builder, ClientLike, Config as FredConfig, ReconnectPolicy};
use fred::types::{ClusterHash, CustomCommand, Value};
use model::{DeadLetter, DeadLetterSink};
use model::{Ingestor, RecordSink, SinkError, Source};
use tokio_util::sync::CancellationToken;

use crate::RedisConsumerConfig;
use crate::entries::{self, Body, Entry};

/// Why the source gave up. Everything at run time (lost connections,
/// storage failures) is retried; only a configuration the client refuses
/// ends the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis.url is not a usable Redis URL")]
    Url(#[source] fred::error::Error),
}

/// A failed step of the loop: Redis, or storage after its retries were
/// interrupted by shutdown.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Shape(#[from] entries::ShapeError),
}

/// Counters of one source, for tests and benchmarks (the same numbers go to
/// `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries delivered to this consumer (new, own pending and reclaimed).
    pub read: AtomicU64,
    /// Entries whose records are all committed (now or before).
    pub stored: AtomicU64,
    /// Entries written to the dead-letter table (invalid, partly invalid, no
    /// `payload` field, or delivered more than `max_deliveries` times).
    pub dead_lettered: AtomicU64,
    /// Entries trimmed or deleted from the stream while pending.
    pub trimmed: AtomicU64,
    /// Entries taken over from other consumers with `XAUTOCLAIM`.
    pub reclaimed: AtomicU64,
    /// Entries acknowledged (`XACK` replies).
    pub acked: AtomicU64,
    /// Submissions that failed in storage (each retried).
    pub storage_failures: AtomicU64,
    /// Redis commands that failed (each retried after a reconnect).
    pub redis_errors: AtomicU64,
}

/// A plain copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub read: u64,
    pub stored: u64,
    pub dead_lettered: u64,
    pub trimmed: u64,
    pub reclaimed: u64,
    pub acked: u64,
    pub storage_failures: u64,
    pub redis_errors: u64,
}

impl Stats {
    pub fn counts(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            read: l(&self.read),
            stored: l(&self.stored),
            dead_lettered: l(&self.dead_lettered),
            trimmed: l(&self.trimmed),
            reclaimed: l(&self.reclaimed),
            acked: l(&self.acked),
            storage_failures: l(&self.storage_failures),
            redis_errors: l(&self.redis_errors),
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn entries_metric(outcome: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("ingestd_redis_entries_total", "outcome" => outcome).increment(n as u64);
    }
}

/// How long a command on the command connection may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the pending and lag gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// A member of a Redis Streams consumer group that commits what it reads
/// before it acknowledges it (SPEC §5). See the crate documentation.
pub struct RedisSource<S, D> {
    url: String,
    config: RedisConsumerConfig,
    name: String,
    ingestor: Ingestor<S>,
    dead_letters: D,
    retry: RetryConfig,
    health: Health,
    stats: Arc<Stats>,
    quarantine: Quarantine,
}

/// The two connections of a running source.
struct Clients {
    /// Only the blocking `XREADGROUP … >`: a blocked connection answers
    /// nothing else until the block ends.
    reader: fred::clients::Client,
    /// Everything else.
    commands: fred::clients::Client,
}

/// What a batch came to.
enum Handled {
    Done,
    /// Shutdown interrupted the storage retries: nothing was acked.
    Stopped,
}

impl<S: RecordSink, D: DeadLetterSink> RedisSource<S, D> {
    /// A source reading `config.stream_key` at `url` as consumer
    /// `config.name` (or `ingestd` when empty; ingestd fills in
    /// `ingestd-<hostname>`).
    pub fn new(
        url: impl Into<String>,
        config: RedisConsumerConfig,
        ingestor: Ingestor<S>,
        dead_letters: D,
        retry: RetryConfig,
        health: Health,
    ) -> Self {
        let name = config.consumer_name("");
        RedisSource {
            url: url.into(),
            config,
            name,
            ingestor,
            dead_letters,
            retry,
            health,
            stats: Arc::default(),
            quarantine: Quarantine::new(),
        }
    }

    /// Shares `quarantine` with earlier incarnations of this source (the
    /// supervisor restarts a source that stopped with the same one).
    pub fn with_quarantine(mut self, quarantine: Quarantine) -> Self {
        self.quarantine = quarantine;
        self
    }

    /// This process's consumer name in the group.
    pub fn consumer_name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` is cancelled. A batch in hand when that
    /// happens is committed and acked first; a batch whose storage keeps
    /// failing is left pending (this consumer drains it at its next start).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let clients = Clients {
            reader: self.client(Duration::from_millis(self.config.block_ms) + COMMAND_TIMEOUT)?,
            commands: self.client(COMMAND_TIMEOUT)?,
        };
        self.health.set_disconnected("connecting");
        tracing::info!(
            stream = %self.config.stream_key,
            group = %self.config.group,
            consumer = %self.name,
            "redis source starting"
        );
        let mut backoff = Backoff::new(self.retry.clone());
        for client in [&clients.reader, &clients.commands] {
            loop {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                match client.init().await {
                    Ok(_) => break,
                    Err(e) => {
                        self.connection_error(&StepError::Redis(e));
                        if !sleep(backoff.next_delay(), &shutdown).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
        backoff.reset();
        self.consume(&clients, &shutdown, &mut backoff).await;
        for client in [&clients.reader, &clients.commands] {
            let _ = client.quit().await;
        }
        self.health.set_disconnected("stopped");
        tracing::info!(consumer = %self.name, "redis source stopped");
        Ok(())
    }

    fn client(&self, command_timeout: Duration) -> Result<fred::clients::Client, Error> {
        let config = FredConfig::from_url(&self.url).map_err(Error::Url)?;
        let r = &self.retry;
        let policy = ReconnectPolicy::new_exponential(
            0,
            u32::try_from(r.initial_delay_ms).unwrap_or(u32::MAX),
            u32::try_from(r.max_delay_ms).unwrap_or(u32::MAX),
            (r.backoff_multiplier.round() as u32).max(1),
        );
        let mut builder = Builder::from_config(config);
        builder
            // Commands fail while disconnected instead of queueing, so the
            // loop notices, reports it, and re-reads its pending entries
            // once the connection is back.
            .with_config(|c| c.fail_fast = true)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .set_policy(policy);
        builder.build().map_err(Error::Url)
    }

    async fn consume(&self, clients: &Clients, shutdown: &CancellationToken, backoff: &mut Backoff) {
        let claim_every =
            Duration::from_millis((self.config.claim_idle_secs.saturating_mul(1000) / 2).clamp(500, 30_000));
        let mut last_claim: Option<Instant> = None;
        let mut last_gauges: Option<Instant> = None;
        // After a start or any error: make sure the group exists, then
        // re-read our own pending entries before anything new.
        let mut recover = true;
        let mut connected = false;
        while !shutdown.is_cancelled() {
            let step = async {
                if recover {
                    self.ensure_group(&clients.commands).await?;
                    if !connected {
                        connected = true;
                        self.health.set_ok();
                        tracing::info!(consumer = %self.name, "redis source connected");
                    }
                    let drained = self.drain_own(clients, shutdown, backoff).await?;
                    recover = !drained;
                    return Ok::<_, StepError>(());
                }
                if last_gauges.is_none_or(|t| t.elapsed() >= GAUGES_EVERY) {
                    last_gauges = Some(Instant::now());
                    self.update_gauges(&clients.commands).await?;
                }
                if last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
                    last_claim = Some(Instant::now());
                    self.reclaim(clients, shutdown, backoff).await?;
                    return Ok(());
                }
                let reply = self.read(&clients.reader, ">", true).await?;
                let batch = entries::read_reply(reply, &self.config.stream_key)?;
                if !batch.is_empty() {
                    self.handle(clients, batch, false, shutdown, backoff).await?;
                }
                Ok(())
            };
            if let Err(e) = step.await {
                self.connection_error(&e);
                connected = false;
                recover = true;
                if !sleep(backoff.next_delay(), shutdown).await {
                    break;
                }
            }
        }
    }

    fn connection_error(&self, e: &StepError) {
        add(&self.stats.redis_errors, 1);
        metrics::counter!("ingestd_redis_errors_total").increment(1);
        tracing::warn!(error = %e, consumer = %self.name, "redis source: command failed; reconnecting");
        self.health.set_disconnected(format!("redis: {e}"));
    }

    /// A stream command sent to the node owning the stream key's slot. In a
    /// Redis Cluster the key is not always the first argument (`XGROUP
    /// CREATE key`, `XREADGROUP … STREAMS key`), so the slot is named
    /// rather than guessed; on a single server it is ignored.
    fn stream_command(&self, name: &'static str, blocking: bool) -> CustomCommand {
        let slot = fred::util::redis_keyslot(self.config.stream_key.as_bytes());
        CustomCommand::new_static(name, ClusterHash::Custom(slot), blocking)
    }

    async fn ensure_group(&self, commands: &fred::clients::Client) -> Result<(), StepError> {
        let c = &self.config;
        let args: Vec<Value> =
            vec!["CREATE".into(), c.stream_key.as_str().into(), c.group.as_str().into(), "0".into(), "MKSTREAM".into()];
        match commands.custom::<Value, Value>(self.stream_command("XGROUP", false), args).await {
            Ok(_) => {
                tracing::info!(stream = %c.stream_key, group = %c.group, "created the consumer group");
                Ok(())
            }
            Err(e) if e.details().starts_with("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `XREADGROUP GROUP g me COUNT n [BLOCK ms] STREAMS key id`.
    async fn read(&self, client: &fred::clients::Client, id: &str, block: bool) -> Result<Value, StepError> {
        let c = &self.config;
        let mut args: Vec<Value> = vec![
            "GROUP".into(),
            c.group.as_str().into(),
            self.name.as_str().into(),
            "COUNT".into(),
            (c.read_batch as i64).into(),
        ];
        if block {
            args.extend(["BLOCK".into(), (c.block_ms as i64).into()]);
        }
        args.extend(["STREAMS".into(), c.stream_key.as_str().into(), id.into()]);
        Ok(client.custom::<Value, Value>(self.stream_command("XREADGROUP", block), args).await?)
    }

    /// Processes our own pending entries from the start, one batch; true
    /// when there were none left.
    async fn drain_own(
        &self,
        clients: &Clients,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<bool, StepError> {
        let reply = self.read(&clients.commands, "0", false).await?;
        let batch = entries::read_reply(reply, &self.config.stream_key)?;
        if batch.is_empty() {
            return Ok(true);
        }
        tracing::info!(consumer = %self.name, entries = batch.len(), "re-reading this consumer's pending entries");
        metrics::counter!("ingestd_redeliveries_total", "source" => "redis", "kind" => "pending")
            .increment(batch.len() as u64);
        match self.handle(clients, batch, true, shutdown, backoff).await? {
            Handled::Done => Ok(false),
            // Leave them pending; the loop ends.
            Handled::Stopped => Ok(true),
        }
    }

    /// Takes over entries idle longer than `claim_idle_secs` (from consumers
    /// that died) and processes them.
    async fn reclaim(
        &self,
        clients: &Clients,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), StepError> {
        let c = &self.config;
        let mut cursor = "0-0".to_owned();
        loop {
            let args: Vec<Value> = vec![
                c.stream_key.as_str().into(),
                c.group.as_str().into(),
                self.name.as_str().into(),
                (c.claim_idle_secs.saturating_mul(1000) as i64).into(),
                cursor.as_str().into(),
                "COUNT".into(),
                (c.read_batch as i64).into(),
            ];
            let reply = clients.commands.custom::<Value, Value>(self.stream_command("XAUTOCLAIM", false), args).await?;
            let claimed = entries::autoclaim_reply(reply)?;
            if !claimed.deleted.is_empty() {
                // XAUTOCLAIM already dropped them from the pending list.
                self.count_trimmed(&claimed.deleted);
            }
            if !claimed.entries.is_empty() {
                add(&self.stats.reclaimed, claimed.entries.len());
                metrics::counter!("ingestd_redeliveries_total", "source" => "redis", "kind" => "claimed")
                    .increment(claimed.entries.len() as u64);
                tracing::info!(consumer = %self.name, entries = claimed.entries.len(), "reclaimed idle entries");
                if let Handled::Stopped = self.handle(clients, claimed.entries, true, shutdown, backoff).await? {
                    return Ok(());
                }
            }
            if claimed.cursor == "0-0" || shutdown.is_cancelled() {
                return Ok(());
            }
            cursor = claimed.cursor;
        }
    }

    fn count_trimmed(&self, ids: &[String]) {
        add(&self.stats.trimmed, ids.len());
        entries_metric("trimmed", ids.len());
        metrics::counter!("ingestd_redis_trimmed_total").increment(ids.len() as u64);
        tracing::warn!(
            stream = %self.config.stream_key,
            entries = ids.len(),
            first = %ids[0],
            "entries were trimmed or deleted while pending; they are acked and not stored"
        );
    }

    /// The delivery counts of `batch` (now in our pending list).
    async fn delivery_counts(
        &self,
        commands: &fred::clients::Client,
        batch: &[Entry],
    ) -> Result<HashMap<String, u64>, StepError> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else { return Ok(HashMap::new()) };
        let c = &self.config;
        let args: Vec<Value> = vec![
            c.stream_key.as_str().into(),
            c.group.as_str().into(),
            first.id.as_str().into(),
            last.id.as_str().into(),
            ((batch.len() * 2) as i64).into(),
            self.name.as_str().into(),
        ];
        let reply = commands.custom::<Value, Value>(self.stream_command("XPENDING", false), args).await?;
        Ok(entries::pending_reply(reply)?.into_iter().collect())
    }

    /// Commits a batch (one writer submission), writes its dead letters,
    /// then acknowledges every entry with one `XACK`. Storage failures are
    /// retried with backoff; only shutdown ends the retries, unacked.
    async fn handle(
        &self,
        clients: &Clients,
        batch: Vec<Entry>,
        check_deliveries: bool,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Handled, StepError> {
        let c = &self.config;
        add(&self.stats.read, batch.len());
        let counts = match check_deliveries {
            true => self.delivery_counts(&clients.commands, &batch).await?,
            false => HashMap::new(),
        };
        let keys: Vec<String> = batch.iter().map(|e| format!("{}:{}", c.stream_key, e.id)).collect();
        let mut trimmed = Vec::new();
        let mut letters = Vec::new();
        let mut incoming = Vec::with_capacity(batch.len());
        // Held by a source task that died: tried alone, after the others;
        // dead-lettered only when a task died while trying it alone.
        let mut alone = Vec::new();
        for (entry, key) in batch.iter().zip(&keys) {
            let deliveries = counts.get(&entry.id).copied().unwrap_or(1);
            let letter = |payload: &[u8], error: String| DeadLetter {
                source: Source::Redis,
                message_key: key.clone(),
                payload: payload.to_vec(),
                error,
            };
            match &entry.body {
                Body::Trimmed => trimmed.push(entry.id.clone()),
                Body::NoPayload(fields) => {
                    letters.push(letter(fields.as_bytes(), "the entry has no `payload` field".into()));
                }
                Body::Payload(payload) => {
                    let one = Incoming { key, unix_ms: broker::key_unix_ms(Source::Redis, key), payload };
                    match self.quarantine.verdict(key, deliveries, c.max_deliveries) {
                        Verdict::Batch => incoming.push(one),
                        Verdict::Alone => {
                            tracing::warn!(%key, deliveries, "redis entry held by a source task that died; trying it alone");
                            alone.push(one);
                        }
                        Verdict::Killer => letters.push(letter(
                            payload,
                            format!(
                                "delivered {deliveries} times (max_deliveries is {}), and the source stopped while it \
                                 was being tried alone",
                                c.max_deliveries
                            ),
                        )),
                    }
                }
            }
        }
        if !trimmed.is_empty() {
            self.count_trimmed(&trimmed);
        }

        let mut letters_written = false;
        let report = loop {
            let attempt = async {
                if !letters_written {
                    for letter in &letters {
                        self.dead_letters.put(letter).await?;
                        tracing::warn!(key = %letter.message_key, error = %letter.error, "redis entry dead-lettered");
                    }
                    letters_written = true;
                }
                let held = self.quarantine.hold(incoming.iter().map(|m| m.key.to_owned()), false);
                let report = broker::process(&self.ingestor, &self.dead_letters, Source::Redis, &incoming).await;
                held.release();
                let mut report = report?;
                for one in &alone {
                    let held = self.quarantine.hold([one.key.to_owned()], true);
                    let result = broker::process(&self.ingestor, &self.dead_letters, Source::Redis, &[*one]).await;
                    held.release();
                    report.fates.extend(result?.fates);
                }
                Ok(report)
            };
            match attempt.await {
                Ok(report) => break report,
                Err(e) => {
                    add(&self.stats.storage_failures, 1);
                    metrics::counter!("ingestd_redis_storage_failures_total").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, entries = batch.len(), "redis source: storage failed; will retry");
                    if backoff.exhausted() || matches!(e, SinkError::Closed) {
                        self.health.set_degraded(format!("storage: {e}"));
                    }
                    if !sleep(delay, shutdown).await {
                        return Ok(Handled::Stopped);
                    }
                }
            }
        };
        if !letters.is_empty() {
            metrics::counter!("ingestd_dead_letters_total", "source" => Source::Redis.as_str())
                .increment(letters.len() as u64);
        }

        let mut args: Vec<Value> = Vec::with_capacity(batch.len() + 2);
        args.push(c.stream_key.as_str().into());
        args.push(c.group.as_str().into());
        args.extend(batch.iter().map(|e| Value::from(e.id.as_str())));
        let acked = clients.commands.custom::<Value, Value>(self.stream_command("XACK", false), args).await?;
        let acked = match acked {
            Value::Integer(n) => usize::try_from(n).unwrap_or(0),
            _ => 0,
        };
        add(&self.stats.acked, acked);
        backoff.reset();
        self.health.set_ok();

        let (stored, dead) = report.fates.iter().fold((0, 0), |(s, d), f| match f {
            Fate::Stored { .. } => (s + 1, d),
            Fate::Partial { .. } | Fate::DeadLettered => (s, d + 1),
        });
        add(&self.stats.stored, stored);
        add(&self.stats.dead_lettered, dead + letters.len());
        entries_metric("stored", stored);
        entries_metric("dead_lettered", dead + letters.len());
        Ok(Handled::Done)
    }

    async fn update_gauges(&self, commands: &fred::clients::Client) -> Result<(), StepError> {
        let args: Vec<Value> = vec!["GROUPS".into(), self.config.stream_key.as_str().into()];
        let reply = commands.custom::<Value, Value>(self.stream_command("XINFO", false), args).await?;
        if let Some(info) = entries::group_info_reply(reply, &self.config.group)? {
            metrics::gauge!("ingestd_redis_pending").set(info.pending as f64);
            if let Some(lag) = info.lag {
                metrics::gauge!("ingestd_redis_group_lag").set(lag as f64);
            }
        }
        Ok(())
    }
}

/// Sleeps unless `shutdown` comes first; false when it did.
async fn sleep(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
    }
}
