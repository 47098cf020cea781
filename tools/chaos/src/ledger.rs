//! What was sent, what was acknowledged, and what the database holds.
//!
//! Every record the harness sends carries its own identity, a *marker*, in
//! `metadata.chaos` — whether or not it has a `request_id`. The database is
//! then counted per marker, not per `request_id`: a record sent without an id
//! and stored twice shows as two rows of one marker (duplicated), and a row
//! whose marker was never sent (or that has none) shows as unexpected. Rows
//! are never told apart by the id the server gives them.
//!
//! That only means something if the senders never make a duplicate
//! legitimate: a record without `request_id` is resent only after an answer
//! that promises nothing was committed (429; 503 `overloaded`, `timeout`,
//! `shutting_down` — not `storage_unavailable`, which may hide a commit whose
//! reply was lost), or with the same `Idempotency-Key`; stream producers resend with the same message identity
//! (`Nats-Msg-Id`, the same explicit `XADD` id). Any second row is then a
//! real duplicate.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use anyhow::{Context as _, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend};
use uuid::Uuid;

/// The `metadata` key that holds a record's marker.
pub const MARKER: &str = "chaos";

/// A valid record of `org` numbered `n`, marked with a fresh marker; with a
/// `request_id` (the marker's value) when `with_id`, else without one.
pub fn record(org: &str, n: u64, with_id: bool) -> (serde_json::Value, Uuid) {
    let mut record = testkit::record_json(org, n);
    let marker = Uuid::now_v7();
    record["metadata"][MARKER] = marker.to_string().into();
    if with_id {
        record["request_id"] = marker.to_string().into();
    } else if let Some(fields) = record.as_object_mut() {
        fields.remove("request_id");
    }
    (record, marker)
}

/// The marker of a record built by [`record`].
pub fn marker_of(record: &serde_json::Value) -> Option<Uuid> {
    record["metadata"][MARKER].as_str().and_then(|s| Uuid::try_parse(s).ok())
}

/// Every marker sent and every one acknowledged (2xx, a broker's ack), across restarts.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    attempted: HashSet<Uuid>,
    acked: HashSet<Uuid>,
}

impl Ledger {
    /// Verifies again and again until nothing acknowledged is missing (the
    /// stream sources are still draining) or `limit` has passed; the last verdict.
    pub async fn verify_drained(&self, database_url: &str, limit: std::time::Duration) -> Result<Verdict> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let verdict = self.verify(database_url).await?;
            if verdict.lost == 0 || std::time::Instant::now() > deadline {
                return Ok(verdict);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// [`verify_drained`](Self::verify_drained), then again after `settle`:
    /// a stream source may still hold deliveries that come again (after
    /// `ack_wait`, a claim's idle time) once nothing is missing, and a
    /// duplicate would only show after them. The second verdict.
    pub async fn verify_settled(
        &self,
        database_url: &str,
        limit: std::time::Duration,
        settle: std::time::Duration,
    ) -> Result<Verdict> {
        self.verify_drained(database_url, limit).await?;
        tokio::time::sleep(settle).await;
        self.verify(database_url).await
    }

    pub fn attempt(&self, markers: &[Uuid]) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).attempted.extend(markers);
    }

    pub fn ack(&self, markers: &[Uuid]) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).acked.extend(markers);
    }

    /// Records acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).acked.len()
    }

    /// The markers acknowledged so far.
    pub fn acknowledged_markers(&self) -> HashSet<Uuid> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).acked.clone()
    }

    /// Compares the ledger with the rows of `usage_records` in `database_url`.
    pub async fn verify(&self, database_url: &str) -> Result<Verdict> {
        let stored = stored(database_url).await?;
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Verdict::of(&inner.attempted, &inner.acked, &stored))
    }

    /// The markers acknowledged and not stored (what [`Verdict::lost`] counts).
    pub async fn lost(&self, database_url: &str) -> Result<Vec<Uuid>> {
        let stored = stored(database_url).await?;
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(inner.acked.iter().filter(|m| !stored.contains_key(&Some(**m))).copied().collect())
    }
}

/// Rows of `usage_records` per marker (`None`: no marker, or not a UUID).
async fn stored(database_url: &str) -> Result<HashMap<Option<Uuid>, i64>> {
    let config = storage::DatabaseConfig { url: database_url.to_owned(), ..Default::default() };
    let store = storage::Store::connect(&config).await?;
    let backend = store.connection().get_database_backend();
    let marker = match backend {
        DatabaseBackend::Postgres => format!("metadata->>'{MARKER}'"),
        // As text whatever its JSON type: a number there is a foreign
        // marker (unexpected), not a failure to read.
        _ => format!("CAST(json_extract(metadata, '$.{MARKER}') AS TEXT)"),
    };
    let rows = store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            backend,
            format!("SELECT {marker}, COUNT(*) FROM usage_records GROUP BY 1"),
        ))
        .await?;
    let mut stored: HashMap<Option<Uuid>, i64> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let marker: Option<String> = row.try_get_by_index(0)?;
        // A marker that is not a UUID is nobody's: unexpected, like none.
        let marker = marker.and_then(|m| Uuid::try_parse(&m).ok());
        *stored.entry(marker).or_default() += row.try_get_by_index::<i64>(1).context("row count")?;
    }
    Ok(stored)
}

/// Rows of `organization` in `usage_records`.
pub async fn rows_of(database_url: &str, organization: &str) -> Result<u64> {
    let config = storage::DatabaseConfig { url: database_url.to_owned(), ..Default::default() };
    let store = storage::Store::connect(&config).await?;
    Ok(store.count_records(Some(organization)).await?)
}

/// The ledger against the database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub attempted: usize,
    pub acknowledged: usize,
    /// Distinct sent records found in the database.
    pub stored: usize,
    /// Acknowledged but not stored.
    pub lost: usize,
    /// Rows beyond the first of a record (two rows of one marker: 1).
    pub duplicated: usize,
    /// Rows of no record that was sent (a marker never sent, or none).
    pub unexpected: usize,
}

impl Verdict {
    fn of(attempted: &HashSet<Uuid>, acked: &HashSet<Uuid>, stored: &HashMap<Option<Uuid>, i64>) -> Verdict {
        let sent = |m: &Option<Uuid>| m.is_some_and(|m| attempted.contains(&m));
        let rows = |n: &i64| usize::try_from(*n).unwrap_or(0);
        Verdict {
            attempted: attempted.len(),
            acknowledged: acked.len(),
            stored: stored.keys().filter(|m| sent(m)).count(),
            lost: acked.iter().filter(|m| !stored.contains_key(&Some(**m))).count(),
            duplicated: stored.iter().filter(|(m, _)| sent(m)).map(|(_, n)| rows(n).saturating_sub(1)).sum(),
            unexpected: stored.iter().filter(|(m, _)| !sent(m)).map(|(_, n)| rows(n)).sum(),
        }
    }

    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}
