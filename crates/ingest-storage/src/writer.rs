//! The group-commit writer.
//!
//! One task owns the write path. Submissions wait in a bounded queue
//! (bounded in *records*, by a semaphore); the task takes everything queued,
//! up to `max_batch_rows`, waits at most `linger_ms` for more, commits it in
//! one transaction and only then answers each submitter with the outcome of
//! each of its records. A database error fails every submission of the batch:
//! nothing of it is reported stored.
//!
//! When a commit fails and the database does not answer a ping either, the
//! writer marks storage *down*: new submissions, and those already queued,
//! fail at once with [`SinkError::Unavailable`] (HTTP: 503 with
//! `Retry-After`) instead of each waiting out the pool's connect timeout. A
//! probe pings every [`PROBE_EVERY`] and marks storage up again as soon as it
//! answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use model::{RecordSink, SinkError, Source, StoreOutcome, UsageRecord};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::store::Key;
use crate::{Store, WriterConfig};

/// A pause in arrivals this long ends the linger early (see `Worker::collect`).
const ARRIVAL_GAP: Duration = Duration::from_micros(200);

/// How often a down database is pinged.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A ping slower than this counts as no answer.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

type Reply = oneshot::Sender<Result<Vec<StoreOutcome>, SinkError>>;

struct Job {
    records: Vec<UsageRecord>,
    source: Source,
    reply: Reply,
    /// Queue space held until the job is answered.
    _permit: OwnedSemaphorePermit,
}

/// Submits records to the writer. Cheap to clone; implements [`RecordSink`].
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<Job>,
    space: Arc<Semaphore>,
    capacity: usize,
    stop: Arc<watch::Sender<bool>>,
    /// Storage is known to be unreachable (see the module documentation).
    down: Arc<AtomicBool>,
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
        let handle = WriterHandle {
            tx,
            space: Arc::new(Semaphore::new(capacity)),
            capacity,
            stop: Arc::new(stop),
            down: Arc::new(AtomicBool::new(false)),
        };
        let worker = Worker {
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
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "writer task failed");
        }
    }
}

impl WriterHandle {
    /// Records waiting to be committed now.
    pub fn queue_depth(&self) -> usize {
        self.capacity - self.space.available_permits()
    }

    /// Whether the writer still takes submissions.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed() && !*self.stop.borrow()
    }

    /// Whether storage is known to be unreachable right now.
    pub fn storage_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    async fn submit(&self, records: Vec<UsageRecord>, source: Source) -> Result<Vec<StoreOutcome>, SinkError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if *self.stop.borrow() {
            return Err(SinkError::Closed);
        }
        if self.storage_down() {
            return Err(SinkError::Unavailable(Box::new(StorageDown)));
        }
        // A submission larger than the whole queue still goes through alone.
        let need = u32::try_from(records.len().min(self.capacity)).unwrap_or(u32::MAX);
        let permit = self.space.clone().try_acquire_many_owned(need).map_err(|_| SinkError::Overloaded)?;
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { records, source, reply, _permit: permit }).map_err(|_| SinkError::Closed)?;
        // The writer answers every job it takes; a dropped reply means it stopped.
        answer.await.unwrap_or(Err(SinkError::Closed))
    }
}

impl RecordSink for WriterHandle {
    fn store(
        &self,
        records: Vec<UsageRecord>,
        source: Source,
    ) -> impl Future<Output = Result<Vec<StoreOutcome>, SinkError>> + Send {
        self.submit(records, source)
    }
}

struct Worker {
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
            let batch = self.collect(first).await;
            self.commit(batch).await;
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
        metrics::histogram!("ingestd_writer_commit_seconds").record(elapsed.as_secs_f64());
        metrics::histogram!("ingestd_writer_batch_rows").record(total as f64);

        match result {
            Ok(inserted) => {
                metrics::counter!("ingestd_writer_commits_total", "result" => "ok").increment(1);
                answer(batch, &inserted);
            }
            Err(e) => {
                metrics::counter!("ingestd_writer_commits_total", "result" => "error").increment(1);
                tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), rows = total, "commit failed");
                // Before answering, so a caller that sees the failure also
                // sees storage marked down when it is.
                self.check_reachable().await;
                let shared: Arc<crate::Error> = Arc::new(e);
                for job in batch {
                    let _ = job.reply.send(Err(SinkError::Unavailable(Box::new(SharedError(shared.clone())))));
                }
            }
        }
    }
}

impl Worker {
    /// After a failed commit: when the database does not answer a ping
    /// either, marks storage down and probes until it answers again.
    async fn check_reachable(&self) {
        if ping(&self.store).await {
            return;
        }
        if self.down.swap(true, Ordering::AcqRel) {
            return;
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
    }
}

async fn ping(store: &Store) -> bool {
    matches!(tokio::time::timeout(PING_TIMEOUT, store.ping()).await, Ok(Ok(())))
}

/// The reason of a submission refused while storage is down.
#[derive(Debug, thiserror::Error)]
#[error("storage is down (the database does not answer); retry shortly")]
struct StorageDown;

fn answer(batch: Vec<Job>, inserted: &std::collections::HashSet<Key>) {
    let mut seen: HashMap<(String, uuid::Uuid), ()> = HashMap::new();
    for job in batch {
        let outcomes = job
            .records
            .iter()
            .map(|r| {
                let key = (r.organization_id.clone(), r.request_id);
                let first = seen.insert(key.clone(), ()).is_none();
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
