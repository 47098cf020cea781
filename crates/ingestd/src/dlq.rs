//! `ingestd dlq list|replay`: inspect dead letters and re-submit them once
//! their cause is fixed (a validation rule relaxed, a producer patched and
//! the letter edited in place, …).
//!
//! A replay goes through the same path as the stream source did
//! ([`broker::process`]) with the same message key, so records get the same
//! derived ids as at their first delivery: records a partial batch already
//! stored come back as duplicates, never as second rows. A letter whose
//! records are now all stored is marked `replayed_at` and kept; one that
//! fails again stays open and its delivery count grows.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use broker::{Fate, Incoming};
use model::{Ingestor, Source};
use storage::{DeadLetterFilter, Store, StoredDeadLetter, Writer};
use time::format_description::well_known::Rfc3339;

use crate::Config;

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Letters whose records are now all stored (marked replayed).
    pub replayed: usize,
    /// Letters that failed again (still open).
    pub still_invalid: usize,
    /// Records stored now, and records found already stored.
    pub accepted: usize,
    pub duplicates: usize,
}

async fn open(config: &Config) -> Result<Store> {
    let store = Store::connect(&config.database)
        .await
        .with_context(|| format!("database {}", crate::config::mask_url(&config.database.url)))?;
    let pending = store.pending_migrations().await?;
    anyhow::ensure!(
        pending.is_empty(),
        "the database needs migrations ({}); run `ingestd migrate`",
        pending.join(", ")
    );
    Ok(store)
}

/// The dead letters matching `filter`, as a table (or JSON lines).
pub async fn list(config: &Config, filter: &DeadLetterFilter, json: bool) -> Result<String> {
    let store = open(config).await?;
    let letters = store.list_dead_letters(filter).await?;
    Ok(if json { as_json_lines(&letters) } else { as_table(&letters) })
}

fn timestamp(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn as_table(letters: &[StoredDeadLetter]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36}  {:<6}  {:<32}  {:>5}  {:<20}  {:<8}  ERROR",
        "ID", "SOURCE", "KEY", "COUNT", "FIRST SEEN", "STATE"
    );
    for l in letters {
        let mut error: String = l.letter.error.chars().take(100).collect();
        if error.len() < l.letter.error.len() {
            error.push('…');
        }
        let first_seen: String = timestamp(l.first_seen_at).chars().take(20).collect();
        let state = if l.replayed_at.is_some() { "replayed" } else { "open" };
        let _ = writeln!(
            out,
            "{:<36}  {:<6}  {:<32}  {:>5}  {:<20}  {:<8}  {error}",
            l.id,
            l.letter.source.as_str(),
            l.letter.message_key,
            l.delivery_count,
            first_seen,
            state
        );
    }
    let _ = write!(out, "{} dead letter(s)", letters.len());
    out
}

fn as_json_lines(letters: &[StoredDeadLetter]) -> String {
    let lines: Vec<String> = letters
        .iter()
        .map(|l| {
            serde_json::json!({
                "id": l.id,
                "source": l.letter.source.as_str(),
                "message_key": l.letter.message_key,
                "payload": String::from_utf8_lossy(&l.letter.payload),
                "error": l.letter.error,
                "first_seen_at": timestamp(l.first_seen_at),
                "last_seen_at": timestamp(l.last_seen_at),
                "delivery_count": l.delivery_count,
                "replayed_at": l.replayed_at.map(timestamp),
            })
            .to_string()
        })
        .collect();
    lines.join("\n")
}

/// Re-submits the open dead letters matching `filter`, oldest first.
pub async fn replay(config: &Config, filter: &DeadLetterFilter) -> Result<ReplaySummary> {
    let store = open(config).await?;
    let filter = DeadLetterFilter { include_replayed: false, ..filter.clone() };
    let letters = store.list_dead_letters(&filter).await?;
    let writer = Writer::spawn(store.clone(), config.writer.clone());
    let ingestor = Ingestor::new(writer.handle(), config.validation.clone());
    let mut summary = ReplaySummary::default();
    let result = async {
        for l in &letters {
            let source: Source = l.letter.source;
            let key = l.letter.message_key.as_str();
            let incoming = Incoming { key, unix_ms: broker::key_unix_ms(source, key), payload: &l.letter.payload };
            let report = broker::process(&ingestor, &store, source, &[incoming])
                .await
                .with_context(|| format!("replaying dead letter {}", l.id))?;
            match report.fates[0] {
                Fate::Stored { accepted, duplicates } => {
                    store.mark_replayed(l.id).await?;
                    summary.replayed += 1;
                    summary.accepted += accepted;
                    summary.duplicates += duplicates;
                    tracing::info!(id = %l.id, key, accepted, duplicates, "dead letter replayed");
                }
                Fate::Partial { accepted, duplicates, .. } => {
                    summary.still_invalid += 1;
                    summary.accepted += accepted;
                    summary.duplicates += duplicates;
                }
                Fate::DeadLettered => summary.still_invalid += 1,
            }
        }
        anyhow::Ok(())
    }
    .await;
    writer.shutdown().await;
    result.map(|()| summary)
}
