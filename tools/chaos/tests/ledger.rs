//! The chaos ledger's checker can fail: a duplicate and an unexpected row
//! planted in the database are reported, on both backends. A record sent
//! without `request_id` and stored twice differs from a retry only by its
//! marker, so this is what every scenario's "0 duplicated" rests on.

use ingest_chaos::ledger::{self, Ledger};
use model::{RecordSink as _, Source, UsageRecord};
use storage::{Writer, WriterConfig};
use testkit::{Kind, TestDatabase, on_every_backend};

/// The record as the server would store it: an id-less one gets a fresh id.
fn parse(json: &serde_json::Value) -> UsageRecord {
    let mut json = json.clone();
    if json.get("request_id").is_none() {
        json["request_id"] = uuid::Uuid::now_v7().to_string().into();
    }
    serde_json::from_value(json).expect("a harness record is a usage record")
}

async fn planted_faults_are_reported(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    let ledger = Ledger::default();

    // Ten records sent and acknowledged, half of them without an id: clean.
    let mut sent = Vec::new();
    for n in 0..10 {
        let (json, marker) = ledger::record("org-ledger", n, n % 2 == 0);
        ledger.attempt(&[marker]);
        let record = parse(&json);
        writer.handle().store(vec![record], Source::Http).await.unwrap();
        ledger.ack(&[marker]);
        sent.push(json);
    }
    let verdict = ledger.verify(&db.config.url).await.unwrap();
    assert_eq!(
        (verdict.attempted, verdict.acknowledged, verdict.stored, verdict.lost, verdict.duplicated, verdict.unexpected),
        (10, 10, 10, 0, 0, 0),
        "{verdict:?}"
    );
    assert!(verdict.clean());

    // An id-less record stored a second time (a retry the server did not
    // recognise): a new request_id, the same marker.
    let mut again = parse(&sent[1]);
    again.request_id = uuid::Uuid::now_v7();
    writer.handle().store(vec![again], Source::Http).await.unwrap();
    let verdict = ledger.verify(&db.config.url).await.unwrap();
    assert_eq!((verdict.stored, verdict.duplicated, verdict.unexpected), (10, 1, 0), "{verdict:?}");
    assert!(!verdict.clean());

    // A row nobody sent (a marker not in the ledger) and one with no marker.
    let (stranger, _) = ledger::record("org-ledger", 99, true);
    let mut unmarked = testkit::record("org-ledger", 100);
    unmarked.metadata = None;
    writer.handle().store(vec![parse(&stranger), unmarked], Source::Http).await.unwrap();
    let verdict = ledger.verify(&db.config.url).await.unwrap();
    assert_eq!((verdict.stored, verdict.duplicated, verdict.unexpected), (10, 1, 2), "{verdict:?}");

    // An acknowledged record that is not stored is lost.
    let (missing, marker) = ledger::record("org-ledger", 101, false);
    ledger.attempt(&[marker]);
    ledger.ack(&[marker]);
    drop(missing);
    let verdict = ledger.verify(&db.config.url).await.unwrap();
    assert_eq!((verdict.attempted, verdict.acknowledged, verdict.lost), (11, 11, 1), "{verdict:?}");
}

on_every_backend!(planted_faults_are_reported);
