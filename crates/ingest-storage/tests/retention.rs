//! Monthly partitions (PostgreSQL), the migration of an existing
//! unpartitioned table, and retention on both backends.

use ingest_storage::{Backend, Store, Writer, WriterConfig};
use migration::{Migrator, MigratorTrait};
use model::{RecordSink, Source, StoreOutcome, UsageRecord};
use sea_orm::{ConnectionTrait, Statement};
use testkit::{Kind, TestDatabase, record};
use time::{Date, Duration, Month, OffsetDateTime};

use StoreOutcome::{Duplicate as D, Inserted as I};

testkit::on_every_backend!(
    retention_removes_what_occurred_before_the_cutoff,
    m0005_fills_rollups_from_stored_rows_and_orders_sqlite_times,
);

/// m0005 on a database with rows: the rollups are filled from them (a
/// summary of an upgraded database is right at once), existing keys keep
/// `write`, and SQLite's `occurred_at` texts get their fixed nine-digit
/// fraction, so that text order is time order.
async fn m0005_fills_rollups_from_stored_rows_and_orders_sqlite_times(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = Store::connect(&db.config).await.unwrap();
    Migrator::up(store.connection(), Some(4)).await.unwrap();
    let times =
        ["2026-11-02T10:00:05Z", "2026-11-02T10:00:05.5Z", "2026-11-02T10:59:59.999999Z", "2026-11-02T11:00:00Z"];
    for (i, t) in times.iter().enumerate() {
        let (id, now, tags) = match kind {
            Kind::Sqlite => (format!("'00000000-0000-4000-8000-00000000000{i}'"), "'2026-11-02T12:00:00Z'", "'[]'"),
            Kind::Postgres => (format!("'00000000-0000-4000-8000-00000000000{i}'::uuid"), "now()", "'[]'::jsonb"),
        };
        let cost = if i == 0 { "NULL" } else { "1000" };
        let sql = format!(
            "INSERT INTO usage_records (organization_id, request_id, project_id, provider, model_name, prompt_tokens, \
             completion_tokens, total_tokens, cached_tokens, tags, occurred_at, received_at, source, cost_nano_usd) \
             VALUES ('org-m', {id}, {}, 'openai', 'gpt-4o', 10, 2, 12, {}, {tags}, '{t}', {now}, 'http', {cost})",
            if i == 1 { "'p'" } else { "NULL" },
            if i == 2 { "4" } else { "NULL" },
        );
        store.connection().execute_unprepared(&sql).await.unwrap();
        if kind == Kind::Postgres {
            let key = format!(
                "INSERT INTO usage_record_keys (organization_id, request_id, occurred_at) VALUES ('org-m', {id}, '{t}')"
            );
            store.connection().execute_unprepared(&key).await.unwrap();
        }
    }
    Migrator::up(store.connection(), None).await.unwrap();
    let rollups = store
        .connection()
        .query_all_raw(Statement::from_string(
            store.connection().get_database_backend(),
            "SELECT hour_start, project_id, requests, prompt_tokens, cached_tokens, cost_nano_usd, unpriced_requests \
             FROM usage_rollups ORDER BY hour_start, project_id",
        ))
        .await
        .unwrap();
    let rollups: Vec<(i64, String, i64, i64, i64, i64, i64)> = rollups
        .iter()
        .map(|r| {
            let n = |i| r.try_get_by_index::<i64>(i).unwrap();
            (n(0), r.try_get_by_index(1).unwrap(), n(2), n(3), n(4), n(5), n(6))
        })
        .collect();
    let ten = OffsetDateTime::parse("2026-11-02T10:00:00Z", &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp();
    assert_eq!(
        rollups,
        [
            (ten, String::new(), 2, 20, 4, 1000, 1),
            (ten, "p".to_owned(), 1, 10, 0, 1000, 0),
            (ten + 3600, String::new(), 1, 10, 0, 1000, 0),
        ]
    );
    if kind == Kind::Sqlite {
        let texts = store
            .connection()
            .query_all_raw(Statement::from_string(
                store.connection().get_database_backend(),
                "SELECT occurred_at FROM usage_records ORDER BY occurred_at",
            ))
            .await
            .unwrap();
        let texts: Vec<String> = texts.iter().map(|r| r.try_get_by_index(0).unwrap()).collect();
        assert_eq!(
            texts,
            [
                "2026-11-02T10:00:05.000000000Z",
                "2026-11-02T10:00:05.500000000Z",
                "2026-11-02T10:59:59.999999000Z",
                "2026-11-02T11:00:00.000000000Z"
            ]
        );
    }
}

/// The first instant of the UTC month `back` months before this one.
fn month_start(back: i32) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let index = now.year() * 12 + i32::from(u8::from(now.month())) - 1 - back;
    let month = Month::try_from((index.rem_euclid(12) + 1) as u8).unwrap();
    Date::from_calendar_date(index.div_euclid(12), month, 1).unwrap().midnight().assume_utc()
}

fn partition(back: i32) -> String {
    let m = month_start(back);
    format!("usage_records_y{:04}m{:02}", m.year(), u8::from(m.month()))
}

fn at(org: &str, i: u64, t: OffsetDateTime) -> UsageRecord {
    UsageRecord { timestamp: t, ..record(org, i) }
}

async fn scalar(store: &Store, sql: &str) -> i64 {
    let backend = store.connection().get_database_backend();
    let row = store.connection().query_one_raw(Statement::from_string(backend, sql)).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

async fn partitions(store: &Store) -> Vec<String> {
    let rows = store
        .connection()
        .query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'usage_records'::regclass ORDER BY 1",
        ))
        .await
        .unwrap();
    rows.iter().map(|r| r.try_get_by_index::<String>(0).unwrap()).collect()
}

/// A database at migration m0002 (unpartitioned, one row per
/// `(organization_id, request_id)`) with rows in four months, one of them
/// older than the partition window, migrated with its rows in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migration_partitions_a_table_that_has_rows() {
    let db = TestDatabase::postgres().await;
    let store = Store::connect(&db.config).await.unwrap();
    Migrator::up(store.connection(), Some(2)).await.unwrap();
    let backs = [0, 2, 14, migration::PARTITION_MONTHS_BACK + 14];
    let mut old = Vec::new();
    for (n, back) in backs.iter().enumerate() {
        for i in 0..3u64 {
            old.push(at(
                "org-a",
                n as u64 * 10 + i,
                month_start(*back) + Duration::days(3) + Duration::hours(i as i64),
            ));
        }
    }
    for r in &old {
        let sql = format!(
            "INSERT INTO usage_records (organization_id, request_id, provider, model_name, prompt_tokens, \
             completion_tokens, total_tokens, tags, occurred_at, received_at, source) VALUES \
             ('{}', '{}', 'openai', 'gpt-4o', 1, 2, 3, '[]', '{}', now(), 'http')",
            r.organization_id,
            r.request_id,
            r.timestamp.format(&time::format_description::well_known::Rfc3339).unwrap()
        );
        store.connection().execute_unprepared(&sql).await.unwrap();
    }
    assert!(partitions(&store).await.is_empty(), "not partitioned before m0003");
    // An operator's CHECK that the old rows do not all satisfy (NOT VALID),
    // and one they do.
    store
        .connection()
        .execute_unprepared(
            "ALTER TABLE usage_records ADD CONSTRAINT ops_small CHECK (prompt_tokens < 0) NOT VALID; \
             ALTER TABLE usage_records ADD CONSTRAINT ops_named CHECK (model_name <> '')",
        )
        .await
        .unwrap();

    store.migrate().await.unwrap();
    let names = partitions(&store).await;
    for back in [-1, 0, 2, 14] {
        assert!(names.contains(&partition(back)), "{} missing from {names:?}", partition(back));
    }
    assert!(names.contains(&"usage_records_default".to_owned()), "{names:?}");
    assert_eq!(names.len(), 5, "one per month with rows, this and next month, the default: {names:?}");
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_records").await, 12);
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_record_keys").await, 12);
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_records_default").await, 3, "older than the window");
    assert_eq!(scalar(&store, &format!("SELECT count(*) FROM {}", partition(14))).await, 3);
    let checks = store
        .connection()
        .query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT conname::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'usage_records'::regclass AND contype = 'c' ORDER BY 1",
        ))
        .await
        .unwrap();
    let checks: Vec<String> = checks.iter().map(|r| r.try_get_by_index(0).unwrap()).collect();
    assert_eq!(
        checks,
        ["ops_named CHECK (((model_name)::text <> ''::text))", "ops_small CHECK ((prompt_tokens < 0)) NOT VALID"],
        "the operator's CHECK constraints survive, NOT VALID kept"
    );
    store.connection().execute_unprepared("ALTER TABLE usage_records DROP CONSTRAINT ops_small").await.unwrap();

    // Dedupe holds against the migrated rows, even with another timestamp
    // (which would route the row to another partition).
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    let sink = writer.handle();
    let mut moved = old[4].clone();
    moved.timestamp = month_start(1);
    let fresh = at("org-a", 99, month_start(5) + Duration::days(1));
    let out = sink.store(vec![old[0].clone(), moved, old[11].clone(), fresh], Source::Http).await.unwrap();
    assert_eq!(out, [D, D, D, I]);
    assert!(partitions(&store).await.contains(&partition(5)), "the writer creates the partition it needs");
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_records").await, 13);
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_record_keys").await, 13);
    writer.shutdown().await;

    // And back down (every migration from the last to m0003): one table, the same rows.
    let after_m0002 = u32::try_from(Migrator::migrations().len() - 2).unwrap();
    Migrator::down(store.connection(), Some(after_m0002)).await.unwrap();
    assert!(partitions(&store).await.is_empty());
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_records").await, 13);
}

/// Records in many months on both sides of a cutoff. SQLite removes exactly
/// those before it; PostgreSQL drops the partitions that end at or before
/// it (and the default partition's rows before it), keeping the month that
/// straddles it whole. Keys go with their rows: a removed record sent again
/// is stored again, a kept one is still a duplicate.
async fn retention_removes_what_occurred_before_the_cutoff(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    let sink = writer.handle();
    let cutoff = month_start(13) + Duration::days(10) + Duration::hours(5);
    let window = migration::PARTITION_MONTHS_BACK;
    // (record, removed on SQLite, removed on PostgreSQL)
    let mut cases = Vec::new();
    let mut i = 0;
    let mut case = |org: &str, t: OffsetDateTime, sqlite: bool, postgres: bool| {
        i += 1;
        cases.push((at(org, i, t), sqlite, postgres));
    };
    case("org-a", OffsetDateTime::now_utc() - Duration::hours(1), false, false);
    case("org-b", month_start(2), false, false);
    case("org-a", cutoff + Duration::seconds(1), false, false);
    case("org-a", cutoff, false, false);
    // Within the cutoff's second (text order must still be time order).
    case("org-c", cutoff + Duration::milliseconds(500), false, false);
    // Before the cutoff, in its month: gone on SQLite, kept on PostgreSQL.
    case("org-b", cutoff - Duration::milliseconds(1), true, false);
    case("org-a", month_start(13), true, false);
    // Whole months before it.
    case("org-a", month_start(13) - Duration::milliseconds(1), true, true);
    case("org-b", month_start(15) + Duration::days(3), true, true);
    case("org-c", month_start(20), true, true);
    // Older than the partition window: PostgreSQL's default partition.
    case("org-a", month_start(window + 3), true, true);
    case("org-c", month_start(window + 30), true, true);
    let records: Vec<UsageRecord> = cases.iter().map(|(r, _, _)| r.clone()).collect();
    assert!(sink.store(records.clone(), Source::Http).await.unwrap().iter().all(|o| *o == I));
    let removed: Vec<bool> = cases.iter().map(|(_, s, p)| if kind == Kind::Sqlite { *s } else { *p }).collect();
    let expected = removed.iter().filter(|r| **r).count() as u64;
    let total = records.len() as u64;

    let mut lines = Vec::new();
    let dry = store.retention(cutoff, false, false, &mut |l| lines.push(l.to_owned())).await.unwrap();
    assert_eq!((dry.rows, dry.executed), (expected, false), "{dry:?}");
    assert_eq!(store.count_records(None).await.unwrap(), total, "a dry run removes nothing");
    assert!(!lines.is_empty());

    let done = store.retention(cutoff, true, false, &mut |_| {}).await.unwrap();
    assert_eq!(done.rows, expected, "{done:?}");
    assert_eq!(store.count_records(None).await.unwrap(), total - expected);
    if store.backend() == Backend::Postgres {
        let names: Vec<&str> = done.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [partition(20), partition(15), partition(14)], "oldest first");
        assert_eq!(done.keys, expected, "{done:?}");
        assert_eq!(scalar(&store, "SELECT count(*) FROM usage_record_keys").await, (total - expected) as i64);
        let left = partitions(&store).await;
        assert!(left.contains(&partition(13)) && !left.contains(&partition(14)), "{left:?}");
    }
    let again = store.retention(cutoff, false, false, &mut |_| {}).await.unwrap();
    assert_eq!(again.rows, 0, "nothing left to remove: {again:?}");

    // Rollups of removed rows are kept by default (summaries of old ranges
    // keep working) ...
    let rolled = "SELECT CAST(COALESCE(sum(requests), 0) AS BIGINT) FROM usage_rollups";
    assert_eq!(scalar(&store, rolled).await, total as i64, "rollups kept without --with-rollups");
    // ... and with --with-rollups they are the rows left, again.
    let with = store.retention(cutoff, true, true, &mut |_| {}).await.unwrap();
    assert!(with.rollups.is_some(), "{with:?}");
    assert_eq!(scalar(&store, rolled).await, (total - expected) as i64, "rollups follow the rows left");

    // Removed records come back as new (the writer still believes their
    // months' partitions exist: they land in the default partition); kept
    // ones are duplicates.
    let out = sink.store(records, Source::Http).await.unwrap();
    let want: Vec<StoreOutcome> = removed.iter().map(|r| if *r { I } else { D }).collect();
    assert_eq!(out, want);
    assert_eq!(store.count_records(None).await.unwrap(), total);
    writer.shutdown().await;
}

/// A `DROP` of a partition whose keys were not removed yet (a retention run
/// interrupted between its steps, or an operator's own `DROP`): the next
/// run removes the keys, and the records can be stored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_removes_the_keys_an_interrupted_run_left() {
    let db = TestDatabase::postgres().await;
    let store = db.store().await;
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    let sink = writer.handle();
    let old: Vec<UsageRecord> = (0..5).map(|i| at("org-a", i, month_start(20) + Duration::hours(i as i64))).collect();
    assert!(sink.store(old.clone(), Source::Http).await.unwrap().iter().all(|o| *o == I));
    let name = partition(20);
    store
        .connection()
        .execute_unprepared(&format!("ALTER TABLE usage_records DETACH PARTITION {name}; DROP TABLE {name}"))
        .await
        .unwrap();
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_record_keys").await, 5, "keys without rows");
    assert!(sink.store(old.clone(), Source::Http).await.unwrap().iter().all(|o| *o == D), "still seen as stored");

    let done = store.retention(month_start(12), true, false, &mut |_| {}).await.unwrap();
    assert_eq!((done.rows, done.keys, done.partitions.len()), (0, 5, 0), "{done:?}");
    assert_eq!(scalar(&store, "SELECT count(*) FROM usage_record_keys").await, 0);
    assert!(sink.store(old, Source::Http).await.unwrap().iter().all(|o| *o == I), "stored again");
    writer.shutdown().await;
}

/// A PostgreSQL test database whose default partition an operator
/// detached: a month without its own partition has nowhere to go.
async fn without_default_partition() -> (TestDatabase, Store) {
    let db = TestDatabase::postgres().await;
    let store = db.store().await;
    store
        .connection()
        .execute_unprepared("ALTER TABLE usage_records DETACH PARTITION usage_records_default")
        .await
        .unwrap();
    (db, store)
}

/// With no partition for a record's month (an operator detached the
/// default partition), PostgreSQL's "no partition of relation found for
/// row" shares CHECK's SQLSTATE but names no constraint: the commit fails,
/// retryably, and the record is not refused for its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_missing_partition_is_not_a_refused_record() {
    let (_db, store) = without_default_partition().await;
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    let ancient = at("org-a", 1, month_start(migration::PARTITION_MONTHS_BACK + 12));
    let out = writer.handle().store(vec![record("org-a", 0), ancient], Source::Http).await;
    assert!(matches!(out, Err(model::SinkError::Unavailable(_))), "{out:?}");
    assert_eq!(store.count_records(None).await.unwrap(), 0, "nothing of the batch is stored");
    writer.shutdown().await;
}

/// Two processes (separate partition caches) store the same records again
/// and again while retention drops their month: never two rows for one key,
/// never a row without its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_row_per_key_while_retention_runs_beside_two_writers() {
    let db = TestDatabase::postgres().await;
    let stores = [db.store().await, db.store().await];
    let old: Vec<UsageRecord> =
        (0..200).map(|i| at("org-a", i, month_start(20) + Duration::minutes(i as i64))).collect();
    let writers: Vec<Writer> = stores.iter().map(|s| Writer::spawn(s.clone(), WriterConfig::default())).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = writers
        .iter()
        .map(|w| {
            let (sink, old, stop) = (w.handle(), old.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rounds = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 3 {
                    // Failures (a lock not granted) are retryable; the
                    // invariant is checked on what was committed.
                    let _ = sink.store(old.clone(), Source::Http).await;
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    let mut runs = 0;
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stores[0].retention(month_start(12), true, false, &mut |_| {}).await.unwrap();
        runs += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        assert!(t.await.unwrap() >= 3);
    }
    for w in writers {
        w.shutdown().await;
    }
    assert_eq!(runs, 3);
    let store = &stores[0];
    assert_eq!(
        scalar(store, "SELECT count(*) FROM (SELECT 1 FROM usage_records GROUP BY organization_id, request_id HAVING count(*) > 1) d").await,
        0,
        "two rows for one key"
    );
    assert_eq!(
        scalar(
            store,
            "SELECT count(*) FROM usage_records r WHERE NOT EXISTS (SELECT 1 FROM usage_record_keys k \
             WHERE k.organization_id = r.organization_id AND k.request_id = r.request_id)"
        )
        .await,
        0,
        "a row without its key"
    );
    let rows = scalar(store, "SELECT count(*) FROM usage_records").await;
    assert!(rows <= 200, "{rows}");
}

/// A partition dropped behind the writer's back (no default partition to
/// catch its month): the commit fails, the writer forgets what it knew of
/// partitions, and its second attempt at the same commit creates the month
/// again: the record is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_partition_dropped_behind_the_writer_is_created_again() {
    let (_db, store) = without_default_partition().await;
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    let sink = writer.handle();
    let t = month_start(7) + Duration::days(2);
    assert_eq!(sink.store(vec![at("org-a", 0, t)], Source::Http).await.unwrap(), [I]);
    let name = partition(7);
    store.connection().execute_unprepared(&format!("DROP TABLE {name}")).await.unwrap();
    assert_eq!(sink.store(vec![at("org-a", 1, t)], Source::Http).await.unwrap(), [I], "the partition is made again");
    assert!(partitions(&store).await.contains(&name));
    writer.shutdown().await;
}
