//! One suite, run against SQLite and the real PostgreSQL (a fresh database per test).

use std::time::Duration;

use ingest_storage::{ApiKeyRow, OrgRateLimit, Store, Writer, WriterConfig};
use model::DeadLetter;
use model::{Deadline, RecordSink, SinkError, Source, StoreOutcome};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use testkit::{Kind, TestDatabase, record};

use StoreOutcome::{Duplicate as D, Inserted as I};

testkit::on_every_backend!(
    stores_and_reports_duplicates,
    repeats_within_a_submission_count_once,
    concurrent_submissions_are_each_answered,
    racing_writers_insert_each_key_once,
    large_submissions_are_chunked,
    database_failure_fails_every_caller_and_stores_nothing,
    full_queue_is_refused_as_overloaded,
    shutdown_commits_what_is_queued_then_refuses,
    columns_are_typed_for_people,
    dead_letters_are_upserted,
    migrations_are_idempotent,
    api_keys_are_stored_listed_and_revoked,
    only_the_first_key_is_created_on_an_empty_table,
    org_rate_limits_are_upserted_and_removed,
    rate_limit_counts_add_up_sum_by_window_and_are_pruned,
    a_refused_record_fails_alone_in_a_shared_commit,
    a_withdrawn_submission_is_never_committed,
    stream_submissions_wait_for_room_http_ones_do_not,
);

/// Replicas of one deployment starting at once on an empty PostgreSQL
/// database: every one migrates (or finds nothing to do) and starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_processes_migrating_together_all_succeed() {
    let db = TestDatabase::postgres().await;
    let stores: Vec<Store> = futures::future::join_all((0..6).map(|_| Store::connect(&db.config)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let results = futures::future::join_all(stores.iter().map(Store::migrate)).await;
    let failed: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().map(ToString::to_string)).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(stores[0].pending_migrations().await.unwrap().is_empty());
}

async fn setup(kind: Kind, config: WriterConfig) -> (TestDatabase, Store, Writer) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let writer = Writer::spawn(store.clone(), config);
    (db, store, writer)
}

async fn stores_and_reports_duplicates(kind: Kind) {
    let (_db, store, writer) = setup(kind, WriterConfig::default()).await;
    let sink = writer.handle();
    let first: Vec<_> = (0..3).map(|i| record("org-a", i)).collect();
    assert_eq!(sink.store(first.clone(), Source::Http).await.unwrap(), [I, I, I]);
    let mut again = first.clone();
    again.push(record("org-a", 3));
    assert_eq!(sink.store(again, Source::Nats).await.unwrap(), [D, D, D, I]);
    // The same request id in another organization is another record.
    let mut other = first[0].clone();
    other.organization_id = "org-b".into();
    assert_eq!(sink.store(vec![other], Source::Http).await.unwrap(), [I]);
    assert_eq!(store.count_records(Some("org-a")).await.unwrap(), 4);
    assert_eq!(store.count_records(None).await.unwrap(), 5);
}

async fn repeats_within_a_submission_count_once(kind: Kind) {
    let (_db, store, writer) = setup(kind, WriterConfig::default()).await;
    let a = record("org", 0);
    let b = record("org", 1);
    let out = writer.handle().store(vec![a.clone(), a.clone(), b, a], Source::Http).await.unwrap();
    assert_eq!(out, [I, D, I, D]);
    assert_eq!(store.count_records(None).await.unwrap(), 2);
}

async fn concurrent_submissions_are_each_answered(kind: Kind) {
    let (_db, store, writer) = setup(kind, WriterConfig::default()).await;
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let sink = writer.handle();
            tokio::spawn(async move {
                let records: Vec<_> = (0..20).map(|i| record(&format!("org-{t}"), i)).collect();
                sink.store(records, Source::Http).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), vec![I; 20]);
    }
    assert_eq!(store.count_records(None).await.unwrap(), 1000);
    assert_eq!(store.count_records(Some("org-7")).await.unwrap(), 20);
}

async fn racing_writers_insert_each_key_once(kind: Kind) {
    // Two writers (as two processes would) submit the same records at once.
    let (db, store, writer_a) = setup(kind, WriterConfig::default()).await;
    let writer_b = Writer::spawn(Store::connect(&db.config).await.unwrap(), WriterConfig::default());
    let records: Vec<_> = (0..500).map(|i| record("org", i)).collect();
    let mut tasks = Vec::new();
    for chunk in records.chunks(50) {
        for writer in [&writer_a, &writer_b] {
            let (sink, chunk) = (writer.handle(), chunk.to_vec());
            tasks.push(tokio::spawn(async move { sink.store(chunk, Source::Redis).await }));
        }
    }
    let mut inserted = 0;
    for task in tasks {
        inserted += task.await.unwrap().unwrap().iter().filter(|o| **o == I).count();
    }
    assert_eq!(inserted, 500);
    assert_eq!(store.count_records(None).await.unwrap(), 500);
}

async fn large_submissions_are_chunked(kind: Kind) {
    let config = WriterConfig { max_batch_rows: 20_000, queue_capacity: 20_000, ..WriterConfig::default() };
    let (_db, store, writer) = setup(kind, config).await;
    let records: Vec<_> = (0..7_500).map(|i| record("org", i)).collect();
    let out = writer.handle().store(records.clone(), Source::Http).await.unwrap();
    assert!(out.iter().all(|o| *o == I));
    assert_eq!(store.count_records(None).await.unwrap(), 7_500);
    // Every row of every chunk is recognised as a duplicate afterwards.
    let out = writer.handle().store(records, Source::Http).await.unwrap();
    assert!(out.iter().all(|o| *o == D));
}

async fn database_failure_fails_every_caller_and_stores_nothing(kind: Kind) {
    let (_db, store, writer) = setup(kind, WriterConfig { linger_ms: 20, ..WriterConfig::default() }).await;
    let sink = writer.handle();
    sink.store(vec![record("org", 0)], Source::Http).await.unwrap();
    exec(&store, "ALTER TABLE usage_records RENAME TO usage_records_away").await;
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let sink = sink.clone();
            tokio::spawn(async move { sink.store(vec![record("org", 100 + i)], Source::Http).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Err(SinkError::Unavailable(_))));
    }
    exec(&store, "ALTER TABLE usage_records_away RENAME TO usage_records").await;
    assert_eq!(store.count_records(None).await.unwrap(), 1, "a failed batch stored something");
    // The writer carries on once the database is back.
    assert_eq!(sink.store(vec![record("org", 1)], Source::Http).await.unwrap(), [I]);
}

async fn full_queue_is_refused_as_overloaded(kind: Kind) {
    let config = WriterConfig { queue_capacity: 10, max_batch_rows: 5, linger_ms: 0 };
    let (db, store, writer) = setup(kind, config).await;
    // Hold the write lock from another connection so the writer cannot commit.
    let (_blocker, txn) = hold_write_lock(kind, &db).await;
    let sink = writer.handle();
    let mut pending = Vec::new();
    for i in 0..2 {
        let (sink, records) = (sink.clone(), (0..5).map(|j| record("org", i * 5 + j)).collect());
        pending.push(tokio::spawn(async move { sink.store(records, Source::Http).await }));
    }
    // Wait until both submissions hold their queue space.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sink.queue_depth() < 10 {
        assert!(std::time::Instant::now() < deadline, "queue depth stuck at {}", sink.queue_depth());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(sink.store(vec![record("org", 99)], Source::Http).await, Err(SinkError::Overloaded)));
    txn.rollback().await.unwrap();
    for task in pending {
        assert_eq!(task.await.unwrap().unwrap(), vec![I; 5]);
    }
    assert_eq!(store.count_records(None).await.unwrap(), 10);
    assert_eq!(sink.queue_depth(), 0);
}

async fn shutdown_commits_what_is_queued_then_refuses(kind: Kind) {
    let (_db, store, writer) = setup(kind, WriterConfig { linger_ms: 50, ..WriterConfig::default() }).await;
    let sink = writer.handle();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let sink = sink.clone();
            tokio::spawn(async move { sink.store(vec![record("org", i)], Source::Http).await })
        })
        .collect();
    // Every submission is either queued or already answered (the adaptive
    // linger may commit early ones before the last arrive); waiting for a
    // queue of exactly 10 could spin forever on a slow machine.
    while sink.queue_depth() + tasks.iter().filter(|t| t.is_finished()).count() < 10 {
        tokio::task::yield_now().await;
    }
    writer.shutdown().await;
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), [I]);
    }
    assert_eq!(store.count_records(None).await.unwrap(), 10);
    assert!(matches!(sink.store(vec![record("org", 50)], Source::Http).await, Err(SinkError::Closed)));
}

async fn columns_are_typed_for_people(kind: Kind) {
    let (_db, store, writer) = setup(kind, WriterConfig::default()).await;
    let r = record("org", 0);
    writer.handle().store(vec![r.clone()], Source::Nats).await.unwrap();
    let sql = match kind {
        Kind::Sqlite => {
            "SELECT typeof(request_id) || ',' || request_id || ',' || occurred_at || ',' || tags || ',' \
             || typeof(prompt_tokens) || ',' || source FROM usage_records"
        }
        Kind::Postgres => {
            "SELECT pg_typeof(request_id)::text || ',' || request_id::text || ',' || pg_typeof(occurred_at)::text \
             || ',' || pg_typeof(tags)::text || ',' || pg_typeof(prompt_tokens)::text || ',' || source FROM usage_records"
        }
    };
    let row = store.connection().query_one_raw(Statement::from_string(store.connection().get_database_backend(), sql));
    let line: String = row.await.unwrap().unwrap().try_get_by_index(0).unwrap();
    let id = r.request_id.hyphenated().to_string();
    let expected = match kind {
        Kind::Sqlite => {
            // UTC, with exactly nine fraction digits (m0005: text order is time order).
            let t = r.timestamp.to_offset(time::UtcOffset::UTC);
            let ts = format!(
                "{}.{:09}Z",
                t.replace_nanosecond(0)
                    .unwrap()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .trim_end_matches('Z'),
                t.nanosecond()
            );
            format!("text,{id},{ts},[\"test\"],integer,nats")
        }
        Kind::Postgres => format!("uuid,{id},timestamp with time zone,jsonb,bigint,nats"),
    };
    assert_eq!(line, expected);
}

async fn dead_letters_are_upserted(kind: Kind) {
    let (_db, store, _writer) = setup(kind, WriterConfig::default()).await;
    let letter = DeadLetter {
        source: Source::Nats,
        message_key: "LLM_USAGE:42".into(),
        payload: b"{not json".to_vec(),
        error: "malformed JSON at line 1, column 2".into(),
    };
    store.dead_letter(&letter).await.unwrap();
    store.dead_letter(&letter).await.unwrap();
    store.dead_letter(&DeadLetter { message_key: "LLM_USAGE:43".into(), ..letter.clone() }).await.unwrap();
    assert_eq!(store.count_dead_letters(Some(Source::Nats)).await.unwrap(), 2);
    assert_eq!(store.count_dead_letters(Some(Source::Redis)).await.unwrap(), 0);
    let row = store
        .connection()
        .query_one_raw(Statement::from_string(
            store.connection().get_database_backend(),
            "SELECT delivery_count FROM dead_letters WHERE message_key = 'LLM_USAGE:42'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), 2);
}

async fn migrations_are_idempotent(kind: Kind) {
    let (_db, store, _writer) = setup(kind, WriterConfig::default()).await;
    assert!(store.pending_migrations().await.unwrap().is_empty());
    store.migrate().await.unwrap();
    assert!(store.pending_migrations().await.unwrap().is_empty());
}

async fn exec(store: &Store, sql: &str) {
    store.connection().execute_unprepared(sql).await.unwrap();
}

/// Connections that read the (empty) schema before the migration must see
/// the new unique indexes afterwards: upserts prepared on a stale connection
/// fail with "ON CONFLICT clause does not match any … UNIQUE constraint".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_connections_opened_before_migrating_see_the_new_schema() {
    let db = TestDatabase::sqlite();
    let store = Store::connect(&db.config).await.unwrap();
    let pool = store.connection().get_sqlite_connection_pool();
    let mut warm = Vec::new();
    for _ in 0..db.config.max_connections {
        let mut conn = pool.acquire().await.unwrap();
        sea_orm::sqlx::query("SELECT count(*) FROM sqlite_master").execute(&mut *conn).await.unwrap();
        warm.push(conn);
    }
    drop(warm);
    store.migrate().await.unwrap();
    let upserts = (0..db.config.max_connections * 2).map(|i| {
        let store = store.clone();
        async move {
            let letter = DeadLetter {
                source: Source::Redis,
                message_key: format!("k:{i}"),
                payload: b"x".to_vec(),
                error: "e".into(),
            };
            store.dead_letter(&letter).await
        }
    });
    for result in futures::future::join_all(upserts).await {
        result.unwrap();
    }
    assert_eq!(store.count_dead_letters(None).await.unwrap(), u64::from(db.config.max_connections) * 2);
}

fn key_row(scope: &str, org: Option<&str>, digest: u8) -> ApiKeyRow {
    // Whole seconds: both backends give back exactly what was stored.
    let now = time::OffsetDateTime::from_unix_timestamp(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    ApiKeyRow {
        id: uuid::Uuid::now_v7(),
        scope: scope.to_owned(),
        organization_id: org.map(str::to_owned),
        label: Some(format!("label {digest}")),
        digest: vec![digest; 32],
        signing_secret: digest.is_multiple_of(2).then(|| "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0".to_owned()),
        created_at: now,
        revoked_at: None,
        permissions: if digest.is_multiple_of(3) { "read".to_owned() } else { "read,write".to_owned() },
    }
}

async fn api_keys_are_stored_listed_and_revoked(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let a = key_row("org", Some("org-a"), 1);
    let b = key_row("service", None, 2);
    store.insert_api_key(&a).await.unwrap();
    store.insert_api_key(&b).await.unwrap();
    assert_eq!(store.list_api_keys(false).await.unwrap(), [a.clone(), b.clone()]);
    // The digest is unique: the same key cannot be stored twice.
    assert!(store.insert_api_key(&ApiKeyRow { id: uuid::Uuid::now_v7(), ..a.clone() }).await.is_err());
    assert!(store.revoke_api_key(a.id).await.unwrap());
    assert!(!store.revoke_api_key(a.id).await.unwrap(), "revoked twice");
    assert!(!store.revoke_api_key(uuid::Uuid::now_v7()).await.unwrap(), "unknown key");
    assert_eq!(store.list_api_keys(false).await.unwrap(), std::slice::from_ref(&b));
    let all = store.list_api_keys(true).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].revoked_at.is_some());
}

async fn only_the_first_key_is_created_on_an_empty_table(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let first = key_row("service", None, 3);
    assert!(store.insert_first_api_key(&first).await.unwrap());
    assert!(!store.insert_first_api_key(&key_row("service", None, 4)).await.unwrap());
    assert_eq!(store.list_api_keys(true).await.unwrap(), [first]);
    // Several processes starting together on an empty database: one key.
    let db = TestDatabase::new(kind).await;
    let stores: Vec<Store> = futures::future::join_all((0..6).map(|_| Store::connect(&db.config)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    stores[0].migrate().await.unwrap();
    let created =
        futures::future::join_all(stores.iter().enumerate().map(|(i, s)| async move {
            s.insert_first_api_key(&key_row("service", None, 10 + i as u8)).await.unwrap()
        }))
        .await;
    assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
    assert_eq!(stores[0].list_api_keys(true).await.unwrap().len(), 1);
}

async fn org_rate_limits_are_upserted_and_removed(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let mut limit = OrgRateLimit {
        organization_id: "org-a".into(),
        max_requests: 10,
        window_ms: 60_000,
        burst_size: 1,
        updated_at: now,
    };
    store.set_org_rate_limit(&limit).await.unwrap();
    limit.max_requests = 20;
    store.set_org_rate_limit(&limit).await.unwrap();
    assert_eq!(store.list_org_rate_limits().await.unwrap(), [limit]);
    assert!(store.remove_org_rate_limit("org-a").await.unwrap());
    assert!(!store.remove_org_rate_limit("org-a").await.unwrap());
    assert!(store.list_org_rate_limits().await.unwrap().is_empty());
}

/// A database that stops answering: the first commit fails (after the pool's
/// connect timeout), then every submission fails at once until a probe finds
/// the database again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_writes_at_once_until_it_answers() {
    let db = TestDatabase::new(Kind::Postgres).await;
    let store = db.store().await;
    let writer = Writer::spawn(store.clone(), WriterConfig::default());
    let sink = writer.handle();
    sink.store(vec![record("org", 0)], Source::Http).await.unwrap();
    let name = db.config.url.rsplit('/').next().unwrap().to_owned();
    let admin = sea_orm::Database::connect(testkit::postgres_admin_url()).await.unwrap();
    admin.execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
    assert!(matches!(sink.store(vec![record("org", 1)], Source::Http).await, Err(SinkError::Unavailable(_))));
    assert!(sink.storage_down());
    let asked = std::time::Instant::now();
    assert!(matches!(sink.store(vec![record("org", 2)], Source::Http).await, Err(SinkError::Unavailable(_))));
    assert!(asked.elapsed() < Duration::from_millis(100), "took {:?} to refuse", asked.elapsed());
    // Back: the probe notices within a few of its intervals.
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    Store::connect(&db.config).await.unwrap().migrate().await.unwrap();
    let back = std::time::Instant::now();
    while sink.storage_down() {
        assert!(back.elapsed() < Duration::from_secs(5), "still down 5 s after the database returned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.store(vec![record("org", 3)], Source::Http).await.unwrap(), [I]);
}

/// Holds the write lock from another connection until the transaction is
/// dropped or rolled back: the writer's next commit blocks.
async fn hold_write_lock(kind: Kind, db: &TestDatabase) -> (Store, sea_orm::DatabaseTransaction) {
    let blocker = Store::connect(&db.config).await.unwrap();
    let txn = blocker.connection().begin().await.unwrap();
    let lock = match kind {
        Kind::Sqlite => {
            "INSERT INTO dead_letters (id, source, message_key, payload, error, first_seen_at, last_seen_at, delivery_count) VALUES ('lock', 'http', 'lock', x'00', 'e', 'now', 'now', 1)"
        }
        Kind::Postgres => "LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE",
    };
    txn.execute_unprepared(lock).await.unwrap();
    (blocker, txn)
}

/// Waits until the writer has taken `rows` records into its transaction.
async fn wait_for_transaction(sink: &ingest_storage::WriterHandle, rows: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink.rows_in_transaction() < rows {
        assert!(
            std::time::Instant::now() < deadline,
            "{} rows in the transaction < {rows}",
            sink.rows_in_transaction()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_depth(sink: &ingest_storage::WriterHandle, depth: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink.queue_depth() < depth {
        assert!(std::time::Instant::now() < deadline, "queue depth stuck at {} < {depth}", sink.queue_depth());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SPEC §2: a record the database refuses although validation let it
/// through fails alone; the 20 other submissions of the same group commit
/// (other organizations, and the poisoned submission's good record) commit.
async fn a_refused_record_fails_alone_in_a_shared_commit(kind: Kind) {
    let config = WriterConfig { linger_ms: 0, ..WriterConfig::default() };
    let (db, store, writer) = setup(kind, config).await;
    testkit::refuse_model(&store, "poison").await;
    let sink = writer.handle();
    // The writer takes a first submission and blocks on the lock; all the
    // others queue behind it and are committed together afterwards.
    let (_blocker, lock) = hold_write_lock(kind, &db).await;
    let first = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.store(vec![record("org-first", 0)], Source::Http).await })
    };
    wait_for_transaction(&sink, 1).await;
    let mut poison = record("org-poison", 1);
    poison.model.name = "poison".into();
    let poisoned = {
        let (sink, records) = (sink.clone(), vec![record("org-poison", 0), poison.clone(), record("org-poison", 2)]);
        tokio::spawn(async move { sink.store(records, Source::Redis).await })
    };
    let good: Vec<_> = (0..20)
        .map(|t| {
            let (sink, records) = (sink.clone(), (0..5).map(|i| record(&format!("org-{t}"), i)).collect::<Vec<_>>());
            tokio::spawn(async move { sink.store(records, Source::Http).await })
        })
        .collect();
    wait_for_depth(&sink, 1 + 3 + 20 * 5).await;
    lock.rollback().await.unwrap();

    assert_eq!(first.await.unwrap().unwrap(), [I]);
    let outcomes = poisoned.await.unwrap().unwrap();
    assert_eq!(outcomes[0], I);
    assert!(
        matches!(&outcomes[1], StoreOutcome::Refused(why) if why.contains("refuse") || why.contains("check")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], I);
    for task in good {
        assert_eq!(task.await.unwrap().unwrap(), vec![I; 5]);
    }
    assert_eq!(store.count_records(None).await.unwrap(), 1 + 2 + 100);
    assert_eq!(store.count_records(Some("org-poison")).await.unwrap(), 2);
    // The same record again is refused again (nothing of it was stored), and
    // a repeat of it inside one submission is refused, not a duplicate.
    let again = sink.store(vec![poison.clone(), poison], Source::Http).await.unwrap();
    assert!(again.iter().all(|o| matches!(o, StoreOutcome::Refused(_))), "{again:?}");
    // The writer carries on as usual.
    assert_eq!(sink.store(vec![record("org-after", 0)], Source::Http).await.unwrap(), [I]);
}

/// SPEC §2: "a 503 means nothing was or will be committed". A submission
/// still queued at its deadline is withdrawn and never committed; one
/// whose transaction has begun is waited for past its deadline, and its
/// answer is what happened. A submission whose caller went away while it
/// was queued is not committed either.
async fn a_withdrawn_submission_is_never_committed(kind: Kind) {
    let config = WriterConfig { linger_ms: 0, ..WriterConfig::default() };
    let (db, store, writer) = setup(kind, config).await;
    let sink = writer.handle();
    let (_blocker, lock) = hold_write_lock(kind, &db).await;
    let deadline = || Deadline { at: std::time::Instant::now() + Duration::from_millis(300), secs: 1 };
    // A: taken by the writer, then blocked in its transaction.
    let a = {
        let (sink, d) = (sink.clone(), deadline());
        tokio::spawn(async move { sink.store_before(vec![record("org-a", 0)], Source::Http, d).await })
    };
    wait_for_transaction(&sink, 1).await;
    // B: queued behind A; its deadline passes while it waits.
    let b = sink.store_before(vec![record("org-b", 0)], Source::Http, deadline()).await;
    assert!(matches!(b, Err(SinkError::TimedOut { secs: 1 })), "{b:?}");
    // C: queued, and its caller goes away.
    let c = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.store(vec![record("org-c", 0)], Source::Http).await })
    };
    wait_for_depth(&sink, 2).await;
    c.abort();
    let _ = c.await;
    // A's deadline has passed too, but it was taken: it waits, unanswered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.is_finished(), "a submission in a transaction must not time out");
    lock.rollback().await.unwrap();
    assert_eq!(a.await.unwrap().unwrap(), [I]);
    assert_eq!(sink.store(vec![record("org-d", 0)], Source::Http).await.unwrap(), [I]);
    assert_eq!(store.count_records(Some("org-a")).await.unwrap(), 1);
    assert_eq!(store.count_records(Some("org-b")).await.unwrap(), 0, "a timed-out submission was committed");
    assert_eq!(store.count_records(Some("org-c")).await.unwrap(), 0, "an abandoned submission was committed");
    // Every queue slot comes back. A job's slot is released just after its
    // answer is sent, so D's caller may see its own slot for an instant
    // (this failed once, 1 ≠ 0, in a full local run).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while sink.queue_depth() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sink.queue_depth(), 0, "a queue slot was never released");
}

/// A full queue refuses HTTP submissions at once (503) but makes a stream
/// submission wait for room, in order: a large stream batch is not starved.
async fn stream_submissions_wait_for_room_http_ones_do_not(kind: Kind) {
    let config = WriterConfig { queue_capacity: 10, max_batch_rows: 100, linger_ms: 0 };
    let (db, store, writer) = setup(kind, config).await;
    let sink = writer.handle();
    let (_blocker, lock) = hold_write_lock(kind, &db).await;
    let full = {
        let (sink, records) = (sink.clone(), (0..10).map(|i| record("org-http", i)).collect());
        tokio::spawn(async move { sink.store(records, Source::Http).await })
    };
    wait_for_transaction(&sink, 10).await;
    let stream = {
        let (sink, records) = (sink.clone(), (0..8).map(|i| record("org-stream", i)).collect());
        tokio::spawn(async move { sink.store(records, Source::Nats).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stream.is_finished(), "a stream submission waits for room instead of failing");
    assert!(matches!(sink.store(vec![record("org-http", 99)], Source::Http).await, Err(SinkError::Overloaded)));
    lock.rollback().await.unwrap();
    assert_eq!(full.await.unwrap().unwrap(), vec![I; 10]);
    assert_eq!(stream.await.unwrap().unwrap(), vec![I; 8]);
    assert_eq!(store.count_records(Some("org-stream")).await.unwrap(), 8);
}

/// Searches for the family of issue 15's bugs: a record that validation
/// accepts and a database refuses, or a value that panics the decoder.
/// Records are built from hostile values per field (U+0000 and other
/// control characters, noncharacters, lone surrogates escaped in JSON,
/// years 0000/0001/9999 with offsets, leap seconds, 2^53/2^63/2^64
/// boundaries, deep and huge metadata); each one the decoder accepts must
/// be stored by SQLite *and* PostgreSQL (`Inserted`, never `Refused`, never
/// an error) and read back from each with every value as decoded: a
/// differential check that neither database alters a value silently.
#[test]
fn every_record_validation_accepts_is_stored_by_both_backends() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::{Value, json};

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_dbs, writers) = rt.block_on(async {
        let (mut dbs, mut writers) = (Vec::new(), Vec::new());
        for kind in [Kind::Sqlite, Kind::Postgres] {
            let db = TestDatabase::new(kind).await;
            let store = db.store().await;
            writers.push((Writer::spawn(store.clone(), WriterConfig::default()), store, kind));
            dbs.push(db);
        }
        (dbs, writers)
    });

    const LONE: &str = "<lone surrogate>";
    let long = |c: &str, n: usize| c.repeat(n);
    let strings: Vec<String> = [
        "",
        " ",
        "a",
        " OpenAI ",
        "\u{0}",
        "a\u{0}b",
        "\u{1}",
        "\t",
        "\n",
        "\u{7f}",
        "\u{85}",
        "\u{9f}",
        "\u{a0}",
        "\u{ad}",
        "\u{200b}",
        "\u{2028}",
        "\u{feff}",
        "\u{fffd}",
        "\u{fffe}",
        "\u{ffff}",
        "\u{10ffff}",
        "é",
        "İ",
        "ß",
        "𝔘𝔫𝔦",
        "🦀",
        "\\",
        "\"",
        "'",
        "%s%n",
        "' OR 1=1 --",
        LONE,
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([long("x", 64), long("x", 65), long("é", 128), long("é", 256), long("é", 257)])
    .collect();
    let timestamps = [
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+23:59",
        "0001-01-01T00:00:00-23:59",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-00:01",
        "2016-12-31T23:59:60Z",
        "2026-01-01T00:00:00.123456789123Z",
        "2026-01-01t00:00:00z",
        "1969-12-31T23:59:59.999999999Z",
        "2024-02-29T12:00:00+05:45",
    ];
    let counts = [
        "0",
        "1",
        "9007199254740992",
        "9007199254740993",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1e3",
        "1.5",
        "9007199254740993.0",
        "1e400",
        "-0",
        "-0.0",
    ];
    let metadata = [
        json!({}),
        json!({ "a": "\u{0}" }),
        json!({ "\u{0}": 1 }),
        json!({ "n": 1e308, "m": -0.0, "k": 5e-324 }),
        json!({ "big": u64::MAX, "neg": i64::MIN }),
        json!({ "s": LONE }),
        json!({ "ctl": "\u{1}\u{7f}\u{85}", "bom": "\u{feff}" }),
        json!({ "long": long("x", 16_300) }),
        (0..100).fold(json!("leaf"), |v, _| json!({ "d": v })),
    ];
    // Hostile values in one or two places at a time: a record hostile
    // everywhere is refused for its first problem and teaches nothing.
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let count = || prop_oneof![3 => Just("100"), 2 => prop::sample::select(counts.to_vec())];
    let strategy = (
        prop::sample::select(strings.clone()),
        prop::sample::select((0..8usize).collect::<Vec<_>>()),
        prop_oneof![Just(&*now.clone().leak()), prop::sample::select(timestamps.to_vec())],
        count(),
        count(),
        prop_oneof![4 => Just(true), 1 => Just(false)],
        prop_oneof![Just(json!({})), prop::sample::select(metadata.to_vec())],
        prop::option::of(prop::sample::select(vec![0.0, 1e308, 5e-324, 812.5])),
    );
    let stored = std::cell::Cell::new(0usize);
    let check = |(text, field, timestamp, prompt, completion, sum_right, meta, latency): (
        String,
        usize,
        &str,
        &str,
        &str,
        bool,
        Value,
        Option<f64>,
    )| {
        let mut v = testkit::record_json("org-hostile", 0);
        let target =
            ["provider", "model.name", "model.version", "organization_id", "project_id", "user_id", "tags", "metadata"]
                [field];
        match target {
            "model.name" => v["model"]["name"] = json!(text),
            "model.version" => v["model"]["version"] = json!(text),
            "tags" => v["tags"] = json!([text]),
            "metadata" => v["metadata"] = json!({ "k": text }),
            other => v[other] = json!(text),
        }
        v["timestamp"] = json!(timestamp);
        if !matches!(meta, Value::Object(ref m) if m.is_empty()) {
            v["metadata"] = meta;
        }
        if let Some(latency) = latency {
            v["performance"] = json!({ "latency_ms": latency });
        }
        v["usage"] = json!({ "prompt_tokens": "P", "completion_tokens": "C", "total_tokens": "T" });
        let total = match (prompt.parse::<u64>(), completion.parse::<u64>()) {
            (Ok(p), Ok(c)) if sum_right => p.checked_add(c).map_or("0".to_owned(), |t| t.to_string()),
            _ => "3".to_owned(),
        };
        let body = v
            .to_string()
            .replace(r#""P""#, prompt)
            .replace(r#""C""#, completion)
            .replace(r#""T""#, &total)
            .replace(LONE, r"\ud800");
        let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(&body) else { return Ok(()) };
        let ctx = model::validate::Context::new(&model::ValidationConfig::default(), time::OffsetDateTime::now_utc());
        let decoded = model::decode::record(raw, &ctx, uuid::Uuid::now_v7);
        let Ok(record) = decoded else { return Ok(()) };
        // Stored by both, and read back from both with every value as the
        // decoder produced it: neither database alters one silently.
        let expected = as_stored(&record);
        for (writer, store, kind) in &writers {
            let outcome = rt.block_on(writer.handle().store(vec![record.clone()], Source::Http));
            prop_assert!(
                matches!(outcome.as_deref(), Ok([StoreOutcome::Inserted])),
                "accepted by validation, not stored: {outcome:?}\n{body}"
            );
            let read = rt.block_on(read_back(store, &record));
            prop_assert_eq!(&read, &expected, "{:?} altered the record\n{}", kind, body);
        }
        stored.set(stored.get() + 1);
        Ok(())
    };
    // Every hostile string in every text field, the rest of the record valid.
    for field in 0..8 {
        for text in &strings {
            let case = (text.clone(), field, now.as_str(), "100", "50", true, json!({}), None);
            if let Err(e) = check(case) {
                panic!("{e}");
            }
        }
    }
    let exhaustive = stored.get();
    assert!(exhaustive >= 8 * 10, "only {exhaustive} of the exhaustive cases were valid: the search is too narrow");
    // Then random combinations of hostile values in several places.
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    runner.run(&strategy, check).unwrap();
    let random = stored.get() - exhaustive;
    assert!(random >= 40, "only {random} of 400 generated records were valid: the search is too narrow");
}

/// The stored columns of `record`, as the decoder produced them: what a
/// read of the row must give back.
fn as_stored(r: &model::UsageRecord) -> serde_json::Value {
    serde_json::json!({
        "organization_id": r.organization_id,
        "request_id": r.request_id.to_string(),
        "project_id": r.project_id,
        "user_id": r.user_id,
        "provider": r.provider,
        "model_name": r.model.name,
        "model_version": r.model.version,
        "context_window": r.model.context_window,
        "prompt_tokens": r.usage.prompt_tokens,
        "completion_tokens": r.usage.completion_tokens,
        "total_tokens": r.usage.total_tokens,
        "cached_tokens": r.usage.cached_tokens,
        "reasoning_tokens": r.usage.reasoning_tokens,
        "latency_ms": r.performance.latency_ms,
        "time_to_first_token_ms": r.performance.time_to_first_token_ms,
        "tags": r.tags,
        "metadata": r.metadata,
        "occurred_at_ns": r.timestamp.unix_timestamp_nanos().to_string(),
    })
}

/// The row of `record` read back from `store`, in the shape of [`as_stored`]:
/// JSON columns parsed (PostgreSQL's `jsonb` reorders keys and respells
/// numbers; the values must be the same), timestamps as nanoseconds.
async fn read_back(store: &Store, record: &model::UsageRecord) -> serde_json::Value {
    use serde_json::Value;
    let pg = store.connection().get_database_backend() == sea_orm::DatabaseBackend::Postgres;
    let (id, ts) = if pg {
        ("request_id::text", "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    } else {
        ("request_id", "occurred_at")
    };
    let json = |c: &str| if pg { format!("{c}::text") } else { c.to_owned() };
    let sql = format!(
        "SELECT organization_id, {id}, project_id, user_id, provider, model_name, model_version, context_window, \
         prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, latency_ms, \
         time_to_first_token_ms, {}, {}, {ts} FROM usage_records WHERE organization_id = $1 AND {id} = $2",
        json("tags"),
        json("metadata"),
    );
    let statement = Statement::from_sql_and_values(
        store.connection().get_database_backend(),
        &sql,
        [record.organization_id.clone().into(), record.request_id.to_string().into()],
    );
    let row = store.connection().query_one_raw(statement).await.unwrap().expect("the stored row");
    let text = |i| row.try_get_by_index::<Option<String>>(i).unwrap();
    let int = |i| row.try_get_by_index::<Option<i64>>(i).unwrap();
    let real = |i| row.try_get_by_index::<Option<f64>>(i).unwrap();
    let parsed = |i| text(i).map(|t| serde_json::from_str::<Value>(&t).unwrap());
    let occurred = text(17).unwrap();
    let occurred = time::OffsetDateTime::parse(&occurred, &time::format_description::well_known::Rfc3339).unwrap();
    serde_json::json!({
        "organization_id": text(0),
        "request_id": text(1),
        "project_id": text(2),
        "user_id": text(3),
        "provider": text(4),
        "model_name": text(5),
        "model_version": text(6),
        "context_window": int(7),
        "prompt_tokens": int(8),
        "completion_tokens": int(9),
        "total_tokens": int(10),
        "cached_tokens": int(11),
        "reasoning_tokens": int(12),
        "latency_ms": real(13),
        "time_to_first_token_ms": real(14),
        "tags": parsed(15).unwrap_or(Value::Null),
        "metadata": parsed(16),
        "occurred_at_ns": occurred.unix_timestamp_nanos().to_string(),
    })
}

/// A NOT NULL (or foreign-key, or unique) violation means the schema and
/// ingestd disagree — a migration half done — not that one record is bad:
/// it must stay retryable (an error, 503 for HTTP, nak for streams), never
/// become a permanent refusal of every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_disagrees_is_retryable_not_a_refusal() {
    let (_db, store, writer) = setup(Kind::Postgres, WriterConfig::default()).await;
    exec(&store, "ALTER TABLE usage_records ADD COLUMN added_by_a_newer_version integer NOT NULL").await;
    let sink = writer.handle();
    let out = sink.store(vec![record("org", 0), record("org", 1)], Source::Http).await;
    assert!(matches!(out, Err(SinkError::Unavailable(_))), "{out:?}");
    exec(&store, "ALTER TABLE usage_records DROP COLUMN added_by_a_newer_version").await;
    assert_eq!(sink.store(vec![record("org", 0)], Source::Http).await.unwrap(), [I]);
}

/// Rate-limit decision counts (m0006): two processes' additions to the same
/// organization and minute add up, sums take minutes from `from` on, old
/// minutes are pruned, and 1500 rows (two statements) land at once.
async fn rate_limit_counts_add_up_sum_by_window_and_are_pruned(kind: Kind) {
    let db = TestDatabase::new(kind).await;
    let store = db.store().await;
    let now = 29_000_000;
    store.add_rate_limit_counts(&[("a", now, 3, 1), ("a", now - 61, 5, 2), ("b", now, 7, 0)], 0).await.unwrap();
    store.add_rate_limit_counts(&[("a", now, 2, 4)], 0).await.unwrap();
    assert_eq!(store.rate_limit_counts("a", now - 59).await.unwrap(), (5, 5));
    assert_eq!(store.rate_limit_counts("a", now - 1439).await.unwrap(), (10, 7));
    assert_eq!(store.rate_limit_counts("b", now - 59).await.unwrap(), (7, 0));
    assert_eq!(store.rate_limit_counts("nobody", now - 59).await.unwrap(), (0, 0));
    // Adding prunes the minutes before `keep_from`, whoever they belong to.
    store.add_rate_limit_counts(&[("b", now, 1, 1)], now - 60).await.unwrap();
    assert_eq!(store.rate_limit_counts("a", 0).await.unwrap(), (5, 5));
    assert_eq!(store.rate_limit_counts("b", 0).await.unwrap(), (8, 1));
    let orgs: Vec<String> = (0..1500).map(|i| format!("org-{i}")).collect();
    let rows: Vec<_> = orgs.iter().map(|org| (org.as_str(), now, 1, 0)).collect();
    store.add_rate_limit_counts(&rows, 0).await.unwrap();
    assert_eq!(store.rate_limit_counts("org-1499", now).await.unwrap(), (1, 0));
    // Counts past i64 saturate, in a row and in a sum, never failing a flush.
    store.add_rate_limit_counts(&[("big", now, u64::MAX, 1), ("big", now + 1, 1 << 62, 0)], 0).await.unwrap();
    store.add_rate_limit_counts(&[("big", now, 5, 1), ("big", now + 1, 1 << 62, 0)], 0).await.unwrap();
    // 2^62 + 2^62 is past i64: the upsert saturates.
    assert_eq!(store.rate_limit_counts("big", now + 1).await.unwrap(), (i64::MAX as u64, 0));
    // Two rows of i64::MAX: the sum saturates.
    assert_eq!(store.rate_limit_counts("big", now).await.unwrap(), (i64::MAX as u64, 2));
}
