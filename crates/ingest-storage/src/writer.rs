//! The group-commit writer.
//!
//! One task owns the write path. Submissions wait in a bounded queue
//! (bounded in *records*, by a semaphore); the task takes everything queued,
//! up to `max_batch_rows`, waits at most `linger_ms` for more, commits it in
//! one transaction and only then answers each submitter with the outcome of
//! each of its records. A failed transaction is reported to no one as stored.
//!
//! HTTP submissions fail at once when the queue is full (503); stream
//! submissions wait for room instead (a stream source slows down), in FIFO
//! order, so a large stream batch is not starved by a steady flow of small
//! HTTP submissions.
//!
//! A submission is *withdrawn* when its caller stops waiting before its
//! transaction began (a deadline passed, or the caller went away): the
//! writer skips it, so it is never committed and the caller may say so
//! (HTTP: 503 `timeout`). Once its transaction began, the caller waits for
//! the outcome, whatever its deadline: what it is told is what happened.
//! Each job's state moves once, by compare-and-swap, from queued to either
//! taken (by the writer) or withdrawn (by the caller).
//!
//! A record the database refuses for its data is answered
//! [`StoreOutcome::Refused`]; every other record of every submission is
//! committed and answered as usual (SPEC §2, "one bad record never affects
//! another"). On SQLite each record is its own statement, so the commit
//! isolates it as it goes. On PostgreSQL a commit that fails while the
//! database still answers is done again with each chunk under a savepoint,
//! splitting the chunks the database refuses down to the single records at
//! fault ([`Store::insert_isolating`]).
//!
//! Each submission is priced (SPEC §9; `prices.rs`) on the submitting task,
//! before it is queued, from the price book of the moment: the writer's
//! own loop does no pricing.
//!
//! When a commit fails and the database does not answer a ping either, the
//! writer marks storage *down*: new submissions, and those already queued,
//! fail at once with [`SinkError::Unavailable`] (HTTP: 503 with
//! `Retry-After`) instead of each waiting out the pool's connect timeout. A
//! probe pings every [`PROBE_EVERY`] and marks storage up again as soon as it
//! answers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use model::{Deadline, RecordSink, SinkError, Source, StoreOutcome, UsageRecord};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::store::Key;
use crate::{Store, WriterConfig};

/// A pause in arrivals this long ends the linger early (see `Worker::collect`).
const ARRIVAL_GAP: Duration = Duration::from_micros(200);

/// How long a commit under way at the shutdown deadline may still run.
const GIVE_UP_GRACE: Duration = Duration::from_secs(5);

/// How often a down database is pinged.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A ping slower than this counts as no answer.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

type Reply = oneshot::Sender<Result<Vec<StoreOutcome>, SinkError>>;

struct Job {
    records: Vec<UsageRecord>,
    source: Source,
    reply: Reply,
    /// [`QUEUED`], then [`TAKEN`] or [`WITHDRAWN`], shared with the caller.
    state: Arc<AtomicU8>,
    /// Queue space held until the job is answered.
    _permit: OwnedSemaphorePermit,
}

/// The job waits in the queue; both sides may still move it.
const QUEUED: u8 = 0;
/// The writer put it in a transaction: the caller waits for the outcome.
const TAKEN: u8 = 1;
/// The caller gave up first: the writer skips it, nothing is committed.
const WITHDRAWN: u8 = 2;

/// Withdraws a queued job when its caller's future is dropped (the
/// connection was cut, the request timed out, shutdown ran out of grace).
struct WithdrawOnDrop(Arc<AtomicU8>);

impl WithdrawOnDrop {
    /// Whether the job was still queued and is now withdrawn.
    fn withdraw(&self) -> bool {
        self.0.compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// Submits records to the writer. Cheap to clone; implements [`RecordSink`].
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<Job>,
    space: Arc<Semaphore>,
    capacity: usize,
    stop: Arc<watch::Sender<bool>>,
    /// Set when the shutdown deadline passed: what is queued is refused.
    give_up: Arc<watch::Sender<bool>>,
    /// Storage is known to be unreachable (see the module documentation).
    down: Arc<AtomicBool>,
    /// Records in the transaction under way (0: none).
    in_transaction: Arc<AtomicUsize>,
    /// The store's prices.
    prices: crate::prices::Prices,
}

/// The running writer task.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(store: Store, config: WriterConfig) -> Self {
        let capacity = config.queue_capacity.max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let (give_up, given_up) = watch::channel(false);
        let handle = WriterHandle {
            tx,
            space: Arc::new(Semaphore::new(capacity)),
            capacity,
            stop: Arc::new(stop),
            give_up: Arc::new(give_up),
            down: Arc::new(AtomicBool::new(false)),
            in_transaction: Arc::new(AtomicUsize::new(0)),
            prices: store.prices.clone(),
        };
        let worker = Worker {
            given_up,
            in_transaction: handle.in_transaction.clone(),
            down: handle.down.clone(),
            store,
            rx,
            stopped,
            max_rows: config.max_batch_rows.max(1),
            linger: Duration::from_millis(config.linger_ms),
            space: handle.space.clone(),
            capacity,
        };
        let task = tokio::spawn(worker.run());
        Writer { handle, task }
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Refuses new submissions, commits everything already queued, and waits
    /// for the task to end.
    pub async fn shutdown(self) {
        self.handle.stop.send_replace(true);
        self.handle.space.close();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "writer task failed");
        }
    }

    /// [`shutdown`](Self::shutdown) under the shutdown deadline: what is
    /// still queued at `deadline` is answered [`SinkError::Closed`] (never
    /// committed); a transaction under way then is finished first.
    pub async fn shutdown_by(self, deadline: tokio::time::Instant) {
        self.handle.stop.send_replace(true);
        self.handle.space.close();
        let mut task = self.task;
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Err(e)) => tracing::error!(error = %e, "writer task failed"),
            Ok(Ok(())) => {}
            Err(_) => {
                tracing::warn!("the shutdown deadline passed with submissions queued; refusing them");
                self.handle.give_up.send_replace(true);
                // The transaction under way, if any, gets a little longer;
                // past that the process exits and the database rolls it back
                // (its callers' connections are cut: no answer, no promise).
                match tokio::time::timeout(GIVE_UP_GRACE, task).await {
                    Ok(Err(e)) => tracing::error!(error = %e, "writer task failed"),
                    Ok(Ok(())) => {}
                    Err(_) => tracing::error!("a commit was still running after the shutdown deadline; abandoning it"),
                }
            }
        }
    }
}

impl WriterHandle {
    /// Records waiting to be committed now.
    pub fn queue_depth(&self) -> usize {
        self.capacity - self.space.available_permits()
    }

    /// Records in the transaction under way now (0: the writer is idle or
    /// collecting); taken submissions, whose callers wait for the outcome.
    pub fn rows_in_transaction(&self) -> usize {
        self.in_transaction.load(Ordering::Acquire)
    }

    /// Whether the writer still takes submissions.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed() && !*self.stop.borrow()
    }

    /// Whether storage is known to be unreachable right now.
    pub fn storage_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    async fn submit(
        &self,
        mut records: Vec<UsageRecord>,
        source: Source,
        deadline: Option<Deadline>,
    ) -> Result<Vec<StoreOutcome>, SinkError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let costs = CostTally::price(&self.prices.current(), &mut records);
        let outcomes = self.enqueue(records, source, deadline).await?;
        costs.count(&outcomes);
        Ok(outcomes)
    }

    async fn enqueue(
        &self,
        records: Vec<UsageRecord>,
        source: Source,
        deadline: Option<Deadline>,
    ) -> Result<Vec<StoreOutcome>, SinkError> {
        if *self.stop.borrow() {
            return Err(SinkError::Closed);
        }
        if self.storage_down() {
            return Err(SinkError::Unavailable(Box::new(StorageDown)));
        }
        // A submission larger than the whole queue still goes through alone.
        let need = u32::try_from(records.len().min(self.capacity)).unwrap_or(u32::MAX);
        let permit = match source {
            // A client is told at once to come back later.
            Source::Http | Source::Otlp => {
                self.space.clone().try_acquire_many_owned(need).map_err(|_| SinkError::Overloaded)?
            }
            // A stream source waits its turn: the semaphore is FIFO, so room
            // freed goes to it before later HTTP submissions take it.
            Source::Nats | Source::Redis => {
                self.space.clone().acquire_many_owned(need).await.map_err(|_| SinkError::Closed)?
            }
        };
        let state = Arc::new(AtomicU8::new(QUEUED));
        let guard = WithdrawOnDrop(state.clone());
        let (reply, mut answer) = oneshot::channel();
        self.tx.send(Job { records, source, reply, state, _permit: permit }).map_err(|_| SinkError::Closed)?;
        if let Some(deadline) = deadline {
            tokio::select! {
                biased;
                result = &mut answer => return result.unwrap_or(Err(SinkError::Closed)),
                () = tokio::time::sleep_until(deadline.at.into()) => {
                    if guard.withdraw() {
                        return Err(SinkError::TimedOut { secs: deadline.secs });
                    }
                    // Taken: the transaction has begun; its outcome is the answer.
                }
            }
        }
        // The writer answers every job it takes; a dropped reply means it stopped.
        answer.await.unwrap_or(Err(SinkError::Closed))
    }
}

/// One submission's costs by metric label, counted once it is committed:
/// `ingestd_cost_nano_usd_total{provider}` and
/// `ingestd_records_unpriced_total{provider}`, for the records stored now
/// (not duplicates, not refusals).
struct CostTally {
    labels: Vec<String>,
    /// Per record: its label's index and its cost.
    records: Vec<(usize, Option<i64>)>,
}

impl CostTally {
    fn price(book: &crate::PriceBook, records: &mut [UsageRecord]) -> CostTally {
        let mut tally = CostTally { labels: Vec::new(), records: Vec::with_capacity(records.len()) };
        let mut pricer = crate::prices::Pricer::new(book);
        for r in records.iter_mut() {
            let (cost, label) = pricer.price(r);
            let label = match tally.labels.iter().position(|l| l == label) {
                Some(i) => i,
                None => {
                    tally.labels.push(label.to_owned());
                    tally.labels.len() - 1
                }
            };
            tally.records.push((label, cost.map(|c| c.nano_usd)));
            r.cost = cost;
        }
        tally
    }

    fn count(self, outcomes: &[StoreOutcome]) {
        let mut sums = vec![(0u64, 0u64); self.labels.len()];
        for ((label, cost), outcome) in self.records.iter().zip(outcomes) {
            if !matches!(outcome, StoreOutcome::Inserted) {
                continue;
            }
            match cost {
                Some(nano) => sums[*label].0 = sums[*label].0.saturating_add(u64::try_from(*nano).unwrap_or(0)),
                None => sums[*label].1 += 1,
            }
        }
        for (label, (nano, unpriced)) in self.labels.into_iter().zip(sums) {
            if nano > 0 {
                metrics::counter!("ingestd_cost_nano_usd_total", "provider" => label.clone()).increment(nano);
            }
            if unpriced > 0 {
                metrics::counter!("ingestd_records_unpriced_total", "provider" => label).increment(unpriced);
            }
        }
    }
}

impl RecordSink for WriterHandle {
    fn store(
        &self,
        records: Vec<UsageRecord>,
        source: Source,
    ) -> impl Future<Output = Result<Vec<StoreOutcome>, SinkError>> + Send {
        self.submit(records, source, None)
    }

    fn store_before(
        &self,
        records: Vec<UsageRecord>,
        source: Source,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Vec<StoreOutcome>, SinkError>> + Send {
        self.submit(records, source, Some(deadline))
    }
}

struct Worker {
    given_up: watch::Receiver<bool>,
    in_transaction: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    store: Store,
    rx: mpsc::UnboundedReceiver<Job>,
    stopped: watch::Receiver<bool>,
    max_rows: usize,
    linger: Duration,
    space: Arc<Semaphore>,
    capacity: usize,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                job = self.rx.recv() => job,
                _ = self.stopped.wait_for(|s| *s), if !self.rx.is_closed() => {
                    // Refuse new jobs; those already queued are still received.
                    self.rx.close();
                    continue;
                }
            };
            let Some(first) = first else { break };
            if *self.given_up.borrow() {
                let _ = first.reply.send(Err(SinkError::Closed));
                continue;
            }
            let batch = self.collect(first).await;
            // Jobs whose callers gave up are dropped here, unanswered: they
            // are never committed (and their callers already know).
            let batch: Vec<Job> = batch
                .into_iter()
                .filter(|job| job.state.compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok())
                .collect();
            if !batch.is_empty() {
                let rows = batch.iter().map(|job| job.records.len()).sum();
                self.in_transaction.store(rows, Ordering::Release);
                self.commit(batch).await;
                self.in_transaction.store(0, Ordering::Release);
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Takes `first` and whatever follows, up to `max_rows` records. It waits
    /// for more at most `linger` in all, and only while submissions keep
    /// arriving: a pause of [`ARRIVAL_GAP`] means the burst is over, and
    /// waiting longer would only delay the commit.
    async fn collect(&mut self, first: Job) -> Vec<Job> {
        let mut rows = first.records.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.linger;
        while rows < self.max_rows {
            let job = match self.rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let until = deadline.min(tokio::time::Instant::now() + ARRIVAL_GAP);
                    match tokio::time::timeout_at(until, self.rx.recv()).await {
                        Ok(Some(job)) => job,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            rows += job.records.len();
            batch.push(job);
        }
        batch
    }

    async fn commit(&self, batch: Vec<Job>) {
        let depth = self.capacity - self.space.available_permits();
        metrics::gauge!("ingestd_writer_queue_depth").set(depth as f64);

        // First occurrence of each key goes to the database; repeats are
        // duplicates whatever the database says.
        let total: usize = batch.iter().map(|j| j.records.len()).sum();
        let mut first_of: HashMap<(&str, uuid::Uuid), ()> = HashMap::with_capacity(total);
        let mut unique = Vec::with_capacity(total);
        for job in &batch {
            for r in &job.records {
                if first_of.insert((r.organization_id.as_str(), r.request_id), ()).is_none() {
                    unique.push((r, job.source));
                }
            }
        }

        if self.down.load(Ordering::Acquire) {
            for job in batch {
                let _ = job.reply.send(Err(SinkError::Unavailable(Box::new(StorageDown))));
            }
            return;
        }
        let started = Instant::now();
        let result = self.store.insert_new(&unique, OffsetDateTime::now_utc()).await;
        let elapsed = started.elapsed();
        metrics::histogram!("ingestd_writer_commit_duration_seconds").record(elapsed.as_secs_f64());
        metrics::histogram!("ingestd_writer_batch_rows").record(total as f64);

        let e = match result {
            Ok(committed) => {
                metrics::counter!("ingestd_writer_commits_total", "result" => "ok").increment(1);
                if !committed.refused.is_empty() {
                    metrics::counter!("ingestd_writer_refused_records_total").increment(committed.refused.len() as u64);
                }
                answer(batch, &committed.inserted, &committed.refused);
                return;
            }
            Err(e) => e,
        };
        metrics::counter!("ingestd_writer_commits_total", "result" => "error").increment(1);
        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), rows = total, "commit failed");
        // Before answering, so a caller that sees the failure also sees
        // storage marked down when it is.
        let e = if self.check_reachable().await {
            // The database answers: the failure may be a record it refuses.
            // Commit again, isolating what it refuses.
            match self.store.insert_isolating(&unique, OffsetDateTime::now_utc()).await {
                Ok(committed) => {
                    metrics::counter!("ingestd_writer_commits_total", "result" => "isolated").increment(1);
                    if !committed.refused.is_empty() {
                        metrics::counter!("ingestd_writer_refused_records_total")
                            .increment(committed.refused.len() as u64);
                    }
                    answer(batch, &committed.inserted, &committed.refused);
                    return;
                }
                Err(again) => {
                    tracing::warn!(error = %again, cause = ?std::error::Error::source(&again), "isolating commit failed");
                    self.check_reachable().await;
                    again
                }
            }
        } else {
            e
        };
        let shared: Arc<crate::Error> = Arc::new(e);
        for job in batch {
            let _ = job.reply.send(Err(SinkError::Unavailable(Box::new(SharedError(shared.clone())))));
        }
    }
}

impl Worker {
    /// After a failed commit: when the database does not answer a ping
    /// either, marks storage down and probes until it answers again.
    /// Returns whether the database answered.
    async fn check_reachable(&self) -> bool {
        if ping(&self.store).await {
            return true;
        }
        if self.down.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::error!("storage is down: refusing writes until it answers again");
        metrics::gauge!("ingestd_storage_down").set(1.0);
        let (store, down) = (self.store.clone(), self.down.clone());
        tokio::spawn(async move {
            let since = Instant::now();
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if ping(&store).await {
                    down.store(false, Ordering::Release);
                    metrics::gauge!("ingestd_storage_down").set(0.0);
                    tracing::info!(down_secs = since.elapsed().as_secs_f64(), "storage answers again");
                    return;
                }
            }
        });
        false
    }
}

async fn ping(store: &Store) -> bool {
    matches!(tokio::time::timeout(PING_TIMEOUT, store.ping()).await, Ok(Ok(())))
}

/// The reason of a submission refused while storage is down.
#[derive(Debug, thiserror::Error)]
#[error("storage is down (the database does not answer); retry shortly")]
struct StorageDown;

fn answer(batch: Vec<Job>, inserted: &HashSet<Key>, refused: &HashMap<Key, String>) {
    let mut seen: HashSet<Key> = HashSet::new();
    for job in batch {
        let outcomes = job
            .records
            .iter()
            .map(|r| {
                let key = (r.organization_id.clone(), r.request_id);
                // Every occurrence of a refused key is refused: nothing of it was stored.
                if let Some(why) = refused.get(&key) {
                    return StoreOutcome::Refused(why.clone());
                }
                let first = seen.insert(key.clone());
                if first && inserted.contains(&key) { StoreOutcome::Inserted } else { StoreOutcome::Duplicate }
            })
            .collect();
        // The submitter may have gone (client disconnected); the rows stay committed.
        let _ = job.reply.send(Ok(outcomes));
    }
}

/// One database error reported to every submitter of the failed batch.
#[derive(Debug)]
struct SharedError(Arc<crate::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// Ready while the writer runs; its gauges are the queue's depth and the
/// rows of the transaction under way.
impl model::Component for WriterHandle {
    fn readiness(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = model::Readiness> + Send + '_>> {
        let open = self.is_open();
        Box::pin(async move { if open { Ok(None) } else { Err("the writer has stopped".to_owned()) } })
    }

    fn record_gauges(&self, _name: &'static str) {
        metrics::gauge!("ingestd_writer_queue_depth").set(self.queue_depth() as f64);
        metrics::gauge!("ingestd_writer_queue_capacity").set(self.capacity as f64);
        metrics::gauge!("ingestd_writer_transaction_rows").set(self.rows_in_transaction() as f64);
        metrics::gauge!("ingestd_storage_down").set(if self.storage_down() { 1.0 } else { 0.0 });
    }
}
