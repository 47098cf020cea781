//! Closed-loop writers that log every request with its times and outcome.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::http::Client;
use uuid::Uuid;

use crate::{Ledger, ledger};

/// The organization every [`Load`] record belongs to.
pub const ORGANIZATION: &str = "org-chaos";

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status {
        code: u16,
        retry_after: bool,
    },
    /// Connection refused, reset, closed, or no answer within 10 s.
    Failed,
}

#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

/// Writers running against one address.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Event>>>,
}

/// Every request of a run.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub events: Vec<Event>,
}

impl Load {
    /// `workers` writers, each sending one request at a time: half single
    /// records, half batches of 2 to 10; three requests in five with a
    /// `request_id` on every record, one with none and an `Idempotency-Key`,
    /// one with neither (see [`ledger`] for when each is sent again).
    /// `pause` between requests (zero: as fast as answers come).
    pub fn start(addr: SocketAddr, workers: usize, ledger: Arc<Ledger>, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|w| {
                let stop = stop.clone();
                let ledger = ledger.clone();
                tokio::spawn(async move { worker(addr, w as u64, ledger, stop, pause).await })
            })
            .collect();
        Load { stop, tasks }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut events = Vec::new();
        for t in self.tasks {
            events.extend(t.await.unwrap_or_default());
        }
        events.sort_by_key(|e| e.started);
        LoadReport { events }
    }
}

/// How a request identifies its records, by turn: most carry their own
/// `request_id`; some carry none and an `Idempotency-Key` (the server derives
/// their ids from it); some carry neither, so the server gives them fresh ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identity {
    Ids,
    IdempotencyKey,
    Nothing,
}

/// A request being sent, and sent again until it is answered.
struct Pending {
    path: &'static str,
    body: serde_json::Value,
    markers: Vec<Uuid>,
    identity: Identity,
    key: String,
    tries: u32,
}

/// Attempts of a request whose records carry an identity (an id, a key)
/// before it is given up as unacknowledged.
const MAX_TRIES: u32 = 5;

async fn worker(addr: SocketAddr, w: u64, ledger: Arc<Ledger>, stop: Arc<AtomicBool>, pause: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    let mut client: Option<Client> = None;
    let mut n: u64 = 0;
    let mut pending: Option<Pending> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    events.push(Event { started, ended: Instant::now(), outcome: Outcome::Failed });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let request = pending.get_or_insert_with(|| {
            n += 1;
            let identity = match n % 5 {
                0 => Identity::Nothing,
                1 => Identity::IdempotencyKey,
                _ => Identity::Ids,
            };
            let count = if n.is_multiple_of(2) { 1 } else { 2 + n % 9 };
            let (records, markers): (Vec<_>, Vec<_>) =
                (0..count).map(|i| ledger::record(ORGANIZATION, w * 1000 + i, identity == Identity::Ids)).unzip();
            ledger.attempt(&markers);
            let (path, body) = match records.len() {
                1 => ("/v1/usage", records[0].clone()),
                _ => ("/v1/usage/batch", json!({ "records": records })),
            };
            Pending { path, body, markers, identity, key: Uuid::now_v7().to_string(), tries: 0 }
        });
        request.tries += 1;
        let mut headers = vec![("content-type", "application/json")];
        if request.identity == Identity::IdempotencyKey {
            headers.push(("idempotency-key", request.key.as_str()));
        }
        let sent = tokio::time::timeout(Duration::from_secs(10), c.post_checked(request.path, &headers, &request.body));
        let (outcome, error) = match sent.await {
            Ok(Ok((code, retry_after, error))) => (Outcome::Status { code, retry_after }, error),
            _ => {
                client = None;
                (Outcome::Failed, None)
            }
        };
        // Sent again only when that cannot store a record twice: after an
        // answer that promises nothing was committed, or with an identity
        // the server recognises (an id, the same Idempotency-Key). Not after
        // `storage_unavailable`: the reply to a COMMIT lost with the
        // connection may hide a commit (docs/api.md).
        let again = match (outcome, error.as_deref()) {
            (Outcome::Status { code: 200, .. }, _) => {
                ledger.ack(&request.markers);
                false
            }
            (Outcome::Status { code: 429, .. }, _)
            | (Outcome::Status { code: 503, .. }, Some("overloaded" | "timeout" | "shutting_down")) => true,
            _ => request.identity != Identity::Nothing,
        };
        if !again || request.tries >= MAX_TRIES {
            pending = None;
        }
        events.push(Event { started, ended: Instant::now(), outcome });
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    events
}

/// One fresh record of `org` (with its `request_id`) posted on a new
/// connection, kept in the ledger: its status, 0 when there was no answer.
/// For open-loop load, where every request is its own task.
pub async fn post_one(addr: SocketAddr, ledger: &Ledger, org: &str, n: u64) -> u16 {
    let (record, marker) = ledger::record(org, n, true);
    let Ok(mut c) = Client::connect(addr).await else { return 0 };
    ledger.attempt(&[marker]);
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    let code = match c.send("POST", "/v1/usage", &[("content-type", "application/json")], bytes).await {
        Ok(reply) => reply.status.as_u16(),
        Err(_) => 0,
    };
    if code == 200 {
        ledger.ack(&[marker]);
    }
    code
}

impl LoadReport {
    /// Requests by status code (`0`: failed without an answer).
    pub fn by_status(&self) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for e in &self.events {
            let code = match e.outcome {
                Outcome::Status { code, .. } => code,
                Outcome::Failed => 0,
            };
            *out.entry(code).or_default() += 1;
        }
        out
    }

    pub fn between(&self, from: Instant, to: Instant) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.started >= from && e.started < to)
    }
}

/// A POST that reports a broken connection instead of panicking.
trait PostChecked {
    async fn post_checked(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<(u16, bool, Option<String>), ()>;
}

impl PostChecked for Client {
    async fn post_checked(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<(u16, bool, Option<String>), ()> {
        let bytes = serde_json::to_vec(body).map_err(|_| ())?;
        let reply = self.send("POST", path, headers, bytes).await.map_err(|_| ())?;
        let error = match reply.status.as_u16() {
            200 => None,
            _ => serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned)),
        };
        Ok((reply.status.as_u16(), reply.header("retry-after").is_some(), error))
    }
}
