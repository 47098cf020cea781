//! `ingestd dlq list|replay` against both storage backends: letters made by
//! the stream path itself, replayed after the cause is fixed.

use broker::{Fate, Incoming};
use ingestd::Config;
use ingestd::dlq::{self, ReplaySummary};
use model::{Ingestor, Source};
use storage::{DeadLetterFilter, Writer};
use testkit::{Kind, TestDatabase, record_json};

testkit::on_every_backend!(replay_stores_fixed_letters_once_and_marks_them);

/// A record an hour in the future: refused by the default 300 s skew,
/// accepted once an operator raises `validation.max_future_skew_secs`.
fn from_the_future(org: &str, i: u64) -> serde_json::Value {
    let mut r = record_json(org, i);
    r.as_object_mut().unwrap().remove("request_id");
    let t = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    r["timestamp"] = t.format(&time::format_description::well_known::Rfc3339).unwrap().into();
    r
}

async fn replay_stores_fixed_letters_once_and_marks_them(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let mut config = Config::default();
    config.database = db.config.clone();

    // First delivery, through the stream path with the default rules.
    let mut valid = record_json("org-dlq", 1);
    valid.as_object_mut().unwrap().remove("request_id");
    let partial = serde_json::json!({ "records": [valid, from_the_future("org-dlq", 2)] }).to_string();
    let future = from_the_future("org-dlq", 3).to_string();
    let messages = [
        Incoming { key: "llm:usage:1700000000000-0", unix_ms: Some(1_700_000_000_000), payload: partial.as_bytes() },
        Incoming { key: "llm:usage:1700000000000-1", unix_ms: Some(1_700_000_000_000), payload: future.as_bytes() },
        Incoming { key: "llm:usage:1700000000001-0", unix_ms: Some(1_700_000_000_001), payload: b"{oops" },
    ];
    let writer = Writer::spawn(store.clone(), config.writer.clone());
    let ingestor = Ingestor::new(writer.handle(), config.validation.clone());
    let report = broker::process(&ingestor, &store, Source::Redis, &messages).await.unwrap();
    assert_eq!(
        report.fates,
        [Fate::Partial { accepted: 1, duplicates: 0, rejected: 1 }, Fate::DeadLettered, Fate::DeadLettered]
    );
    writer.shutdown().await;
    assert_eq!(store.count_records(Some("org-dlq")).await.unwrap(), 1);

    let open = DeadLetterFilter::default();
    let listed = store.list_dead_letters(&open).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].letter.payload, partial.as_bytes());
    let table = dlq::list(&config, &open, false).await.unwrap();
    assert!(table.contains("llm:usage:1700000000001-0") && table.ends_with("3 dead letter(s)"), "{table}");

    // Unfixed: nothing changes but the delivery counts.
    let summary = dlq::replay(&config, &open).await.unwrap();
    assert_eq!(summary, ReplaySummary { replayed: 0, still_invalid: 3, accepted: 0, duplicates: 1 });
    assert_eq!(store.count_records(Some("org-dlq")).await.unwrap(), 1);

    // The cause is fixed: the future records are now acceptable.
    config.validation.max_future_skew_secs = 7200;
    let summary = dlq::replay(&config, &open).await.unwrap();
    assert_eq!(summary, ReplaySummary { replayed: 2, still_invalid: 1, accepted: 2, duplicates: 1 });
    assert_eq!(
        store.count_records(Some("org-dlq")).await.unwrap(),
        3,
        "the partial batch's stored record is not stored twice"
    );

    let left = store.list_dead_letters(&open).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].letter.message_key, "llm:usage:1700000000001-0");
    assert_eq!(left[0].delivery_count, 3, "dead-lettered, then failed two replays");
    let all = store.list_dead_letters(&DeadLetterFilter { include_replayed: true, ..open.clone() }).await.unwrap();
    assert_eq!(all.iter().filter(|l| l.replayed_at.is_some()).count(), 2, "replayed letters are kept, marked");

    // Idempotent: replaying again finds nothing new to store.
    let again = dlq::replay(&config, &DeadLetterFilter { ids: vec![all[0].id], ..open }).await.unwrap();
    assert_eq!(again, ReplaySummary::default(), "a replayed letter is not replayed twice");
}
