//! What was sent, what was acknowledged, and what the database holds.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use anyhow::Result;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

/// Every record id sent and every one acknowledged (2xx), across restarts.
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

    pub fn attempt(&self, ids: &[Uuid]) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).attempted.extend(ids);
    }

    pub fn ack(&self, ids: &[Uuid]) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).acked.extend(ids);
    }

    /// Compares the ledger with the rows of `usage_records` in `database_url`.
    pub async fn verify(&self, database_url: &str) -> Result<Verdict> {
        let config = storage::DatabaseConfig { url: database_url.to_owned(), ..Default::default() };
        let store = storage::Store::connect(&config).await?;
        let rows = store
            .connection()
            .query_all_raw(sea_orm::Statement::from_string(
                store.connection().get_database_backend(),
                "SELECT CAST(request_id AS TEXT), COUNT(*) FROM usage_records GROUP BY request_id",
            ))
            .await?;
        let mut stored: HashMap<Uuid, i64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get_by_index(0)?;
            stored.insert(Uuid::try_parse(&id)?, row.try_get_by_index(1)?);
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Verdict {
            attempted: inner.attempted.len(),
            acknowledged: inner.acked.len(),
            stored: stored.len(),
            lost: inner.acked.iter().filter(|id| !stored.contains_key(id)).count(),
            duplicated: stored.values().filter(|&&n| n > 1).count(),
            unexpected: stored.keys().filter(|id| !inner.attempted.contains(id)).count(),
        })
    }
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
    /// Distinct records in the database.
    pub stored: usize,
    /// Acknowledged but not stored.
    pub lost: usize,
    /// Stored more than once.
    pub duplicated: usize,
    /// Stored but never sent.
    pub unexpected: usize,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}
