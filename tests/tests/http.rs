//! The HTTP API over a real socket, with the whole service running in-process
//! against SQLite and the real PostgreSQL.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use ingestd::Config;
use serde_json::{Value, json};
use storage::Store;
use testkit::http::Client;
use testkit::{Kind, TestDatabase, record_json};

use common::Server;

mod common;

testkit::on_every_backend!(
    single_record_is_stored_and_acknowledged,
    a_retried_record_is_a_duplicate_not_a_second_row,
    batch_with_some_invalid_records_is_207_with_their_indices,
    batch_with_only_invalid_records_is_422_and_stores_nothing,
    storage_failure_is_503_with_retry_after_and_stores_nothing,
    restart_keeps_data,
    a_timestamp_past_year_9999_is_422_not_a_dropped_connection,
    strings_the_databases_refuse_are_422_and_hurt_no_one,
    a_record_the_database_refuses_fails_alone,
    a_503_timeout_means_nothing_was_committed,
);

async fn single_record_is_stored_and_acknowledged(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let mut r = record_json("org-1", 0);
    r["provider"] = json!("  OpenAI ");
    let reply = c.post_json("/v1/usage", &r).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["status"], "success");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64(), body["rejected"].as_u64()),
        (Some(1), Some(0), Some(0))
    );
    assert_eq!(body["request_id"], r["request_id"]);
    assert_eq!(server.count("org-1").await, 1);
    server.stop().await;
}

async fn a_retried_record_is_a_duplicate_not_a_second_row(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let r = record_json("org-1", 0);
    assert_eq!(c.post_json("/v1/usage", &r).await.status, 200);
    let again = c.post_json("/v1/usage", &r).await;
    assert_eq!(again.status, 200);
    assert_eq!((again.json()["accepted"].as_u64(), again.json()["duplicates"].as_u64()), (Some(0), Some(1)));
    // Repeated inside one batch, too.
    let other = record_json("org-1", 1);
    let batch = c.post_json("/v1/usage/batch", &json!({ "records": [other, other, r] })).await;
    assert_eq!(batch.status, 200);
    assert_eq!((batch.json()["accepted"].as_u64(), batch.json()["duplicates"].as_u64()), (Some(1), Some(2)));
    assert_eq!(server.count("org-1").await, 2);
    server.stop().await;
}

async fn batch_with_some_invalid_records_is_207_with_their_indices(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let mut bad_sum = record_json("org-1", 1);
    bad_sum["usage"]["total_tokens"] = json!(1);
    let mut bad_cached = record_json("org-1", 3);
    bad_cached["usage"]["cached_tokens"] = json!(1_000_000);
    let batch_id = "0192f8a0-7b5c-7cc4-9d1e-3f2a1b0c9d8e";
    let body = json!({
        "batch_id": batch_id, "source": "gateway-eu",
        "records": [record_json("org-1", 0), bad_sum, record_json("org-1", 2), bad_cached, "not a record"],
    });
    let reply = c.post_json("/v1/usage/batch", &body).await;
    assert_eq!(reply.status, 207);
    let v = reply.json();
    assert_eq!(v["request_id"], batch_id);
    assert_eq!(v["status"], "partial");
    assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some(2), Some(3)));
    let errors: Vec<(u64, &str, &str)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["field"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            (1, "usage.total_tokens", "token_sum_mismatch"),
            (3, "usage.cached_tokens", "cached_exceeds_prompt"),
            (4, "", "invalid_type")
        ]
    );
    assert_eq!(v["errors"][0]["request_id"], body["records"][1]["request_id"]);
    assert_eq!(server.count("org-1").await, 2);
    server.stop().await;
}

async fn batch_with_only_invalid_records_is_422_and_stores_nothing(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let mut r = record_json("org-1", 0);
    r["timestamp"] = json!("2999-01-01T00:00:00Z");
    let reply = c.post_json("/v1/usage/batch", &json!({ "records": [r.clone()] })).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["status"], "failed");
    assert_eq!(reply.json()["errors"][0]["code"], "timestamp_in_future");
    let single = c.post_json("/v1/usage", &r).await;
    assert_eq!(single.status, 422);
    assert_eq!(server.count("org-1").await, 0);
    server.stop().await;
}

async fn storage_failure_is_503_with_retry_after_and_stores_nothing(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    use sea_orm::ConnectionTrait;
    let db = server.store.connection();
    db.execute_unprepared("ALTER TABLE usage_records RENAME TO usage_records_away").await.unwrap();
    let reply =
        c.post_json("/v1/usage/batch", &json!({ "records": [record_json("org-1", 0), record_json("org-1", 1)] })).await;
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert_eq!(reply.json()["code"], "storage_unavailable");
    db.execute_unprepared("ALTER TABLE usage_records_away RENAME TO usage_records").await.unwrap();
    assert_eq!(server.count("org-1").await, 0);
    assert_eq!(c.post_json("/v1/usage", &record_json("org-1", 2)).await.status, 200);
    server.stop().await;
}

async fn restart_keeps_data(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let r = record_json("org-1", 0);
    assert_eq!(server.client().await.post_json("/v1/usage", &r).await.status, 200);
    let db = server.stop().await;
    let server = Server::start_on(db, |_| {}).await;
    assert_eq!(server.count("org-1").await, 1);
    let again = server.client().await.post_json("/v1/usage", &r).await;
    assert_eq!(again.json()["duplicates"], 1);
    server.stop().await;
}

// Behaviour that does not depend on the database: SQLite only.

async fn sqlite(edit: impl FnOnce(&mut Config)) -> Server {
    Server::start(Kind::Sqlite, edit).await
}

#[tokio::test]
async fn health_and_openapi() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    let h = c.get("/health").await;
    assert_eq!(h.status, 200);
    assert_eq!((h.json()["status"].as_str(), h.json()["service"].as_str()), (Some("healthy"), Some("ingestd")));
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["components"]["storage"]["status"], "up");
    let doc = c.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"], "3.1.0");
    server.stop().await;
}

#[tokio::test]
async fn readiness_names_the_failing_component() {
    let server = Server::start(Kind::Postgres, |_| {}).await;
    let mut c = server.client().await;
    assert_eq!(c.get("/health/ready").await.status, 200);
    // Take the database away under the running service.
    let admin = sea_orm::Database::connect(testkit::postgres_admin_url()).await.unwrap();
    let name = server.db.config.url.rsplit('/').next().unwrap().to_owned();
    use sea_orm::ConnectionTrait;
    admin.execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)")).await.unwrap();
    let ready = c.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["components"]["storage"]["status"], "down");
    assert_eq!(ready.json()["status"], "not_ready");
    let write = c.post_json("/v1/usage", &record_json("org-1", 0)).await;
    assert_eq!(write.status, 503);
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    let mine = c.send("GET", "/health", &[("x-request-id", "abc-123")], "").await.unwrap();
    assert_eq!(mine.header("x-request-id"), Some("abc-123"));
    let generated = c.get("/health").await;
    let id = generated.header("x-request-id").expect("generated request id");
    assert!(uuid::Uuid::try_parse(id).is_ok(), "{id}");
    server.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400_naming_line_and_column() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    let reply = c
        .send("POST", "/v1/usage", &[("content-type", "application/json")], "{\n  \"provider\": \"x\",\n  oops }")
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    let v = reply.json();
    assert_eq!(
        (v["line"].as_u64(), v["column"].as_u64(), v["code"].as_str()),
        (Some(3), Some(3), Some("malformed_json"))
    );
    assert!(v["error"].as_str().unwrap().contains("line 3, column 3"));
    // Envelope of the wrong shape.
    let reply = c.post_json("/v1/usage/batch", &json!({ "records": {} })).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (400, Some("invalid_envelope")));
    let reply = c.post_json("/v1/usage/batch", &json!({ "records": [] })).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].as_str()), (400, Some("empty_batch")));
    server.stop().await;
}

#[tokio::test]
async fn nesting_bombs_are_refused() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    let json = [("content-type", "application/json")];
    // Inside a record: that record is rejected, naming the field.
    let mut r = record_json("org-1", 0);
    r.as_object_mut().unwrap().remove("metadata");
    let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let body = format!("{},\"metadata\":{deep}}}", &r.to_string()[..r.to_string().len() - 1]);
    let reply = c.send("POST", "/v1/usage", &json, body).await.unwrap();
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["errors"][0]["field"], "metadata");
    assert!(reply.json()["errors"][0]["message"].as_str().unwrap().contains("recursion limit"));
    // As the document: not a record.
    let bomb = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let reply = c.send("POST", "/v1/usage", &json, bomb).await.unwrap();
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["errors"][0]["code"], "invalid_type");
    // Unbalanced: malformed.
    let reply = c.send("POST", "/v1/usage/batch", &json, "[".repeat(200_000)).await.unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(server.count("org-1").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn media_type_and_encoding_are_checked() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    let body = serde_json::to_vec(&record_json("org-1", 0)).unwrap();
    for headers in [
        vec![],
        vec![("content-type", "text/plain")],
        vec![("content-type", "application/json"), ("content-encoding", "deflate")],
        vec![("content-type", "application/json"), ("content-encoding", "compress")],
    ] {
        let reply = c.send("POST", "/v1/usage", &headers, body.clone()).await.unwrap();
        assert_eq!(reply.status, 415, "{headers:?}");
    }
    // A 415 for the encoding names the ones taken.
    let reply = c
        .send(
            "POST",
            "/v1/usage",
            &[("content-type", "application/json"), ("content-encoding", "deflate")],
            body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["error"], "content-encoding deflate is not supported; use gzip, br, zstd or identity");
    let ok = c.send("POST", "/v1/usage", &[("content-type", "application/json; charset=utf-8")], body).await.unwrap();
    assert_eq!(ok.status, 200);
    let garbage = c
        .send("POST", "/v1/usage", &[("content-type", "application/json"), ("content-encoding", "gzip")], "not gzip")
        .await
        .unwrap();
    assert_eq!((garbage.status.as_u16(), garbage.json()["code"].as_str()), (400, Some("bad_encoding")));
    let garbage = c
        .send("POST", "/v1/usage", &[("content-type", "application/json"), ("content-encoding", "br")], "not brotli")
        .await
        .unwrap();
    assert_eq!((garbage.status.as_u16(), garbage.json()["code"].as_str()), (400, Some("bad_encoding")));
    server.stop().await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
    e.write_all(data).unwrap();
    drop(e);
    out
}

#[tokio::test]
async fn gzip_brotli_and_zstd_bodies_are_accepted() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    let batch = serde_json::to_vec(&json!({ "records": (0..50).map(|i| record_json("org-z", i)).collect::<Vec<_>>() }))
        .unwrap();
    let gz = c
        .send(
            "POST",
            "/v1/usage/batch",
            &[("content-type", "application/json"), ("content-encoding", "gzip")],
            gzip(&batch),
        )
        .await
        .unwrap();
    assert_eq!((gz.status.as_u16(), gz.json()["accepted"].as_u64()), (200, Some(50)));
    let batch =
        serde_json::to_vec(&json!({ "records": (50..100).map(|i| record_json("org-z", i)).collect::<Vec<_>>() }))
            .unwrap();
    let zst = zstd::encode_all(&batch[..], 3).unwrap();
    let z = c
        .send("POST", "/v1/usage/batch", &[("content-type", "application/json"), ("content-encoding", "zstd")], zst)
        .await
        .unwrap();
    assert_eq!((z.status.as_u16(), z.json()["accepted"].as_u64()), (200, Some(50)));
    let batch =
        serde_json::to_vec(&json!({ "records": (100..150).map(|i| record_json("org-z", i)).collect::<Vec<_>>() }))
            .unwrap();
    let br = c
        .send(
            "POST",
            "/v1/usage/batch",
            &[("content-type", "application/json"), ("content-encoding", "br")],
            brotli(&batch),
        )
        .await
        .unwrap();
    assert_eq!((br.status.as_u16(), br.json()["accepted"].as_u64()), (200, Some(50)));
    assert_eq!(server.count("org-z").await, 150);
    server.stop().await;
}

#[tokio::test]
async fn size_limits_are_413_and_store_nothing() {
    let server = sqlite(|c| {
        c.server.max_body_bytes = 64 * 1024;
        c.server.max_batch_size = 5;
    })
    .await;
    let mut c = server.client().await;
    // Declared too large: refused before a byte of the body is read.
    let head = format!(
        "POST /v1/usage HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        64 * 1024 + 1
    );
    let reply = raw_exchange(server.addr, head.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("65536"), "{reply}");
    // Chunked, without a declared length: refused at the limit.
    let mut chunked = b"POST /v1/usage HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..80 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let reply = raw_exchange(server.addr, &chunked).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // A gzip bomb: 1 GiB of zeros in about 1 MiB; refused at the decompressed limit.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    let reply = c
        .send("POST", "/v1/usage", &[("content-type", "application/json"), ("content-encoding", "gzip")], bomb)
        .await
        .unwrap();
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("after decompression"));
    // A brotli bomb: 1 GiB of zeros in a few hundred bytes; stopped the same way.
    let mut bomb = Vec::new();
    {
        let mut e = brotli::CompressorWriter::new(&mut bomb, 1 << 16, 11, 24);
        for _ in 0..1024 {
            e.write_all(&zeros).unwrap();
        }
    }
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    let reply = c
        .send("POST", "/v1/usage", &[("content-type", "application/json"), ("content-encoding", "br")], bomb)
        .await
        .unwrap();
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("after decompression"));
    // Too many records.
    let records: Vec<Value> = (0..6).map(|i| record_json("org-1", i)).collect();
    let reply = c.post_json("/v1/usage/batch", &json!({ "records": records })).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"], "batch has more than 5 records; the maximum is 5");
    // Counted while parsing: record 6 ends the parse, whatever follows it.
    let six = (0..6).map(|i| record_json("org-1", i).to_string()).collect::<Vec<_>>().join(",");
    let body = format!(r#"{{"records":[{six}, and then no JSON at all"#).into_bytes();
    let reply = c.send("POST", "/v1/usage/batch", &[("content-type", "application/json")], body).await.unwrap();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["code"], "batch_too_large");
    assert_eq!(server.count("org-1").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    assert_eq!(c.get("/v2/usage").await.status, 404);
    let reply = c.get("/v1/usage").await;
    assert_eq!((reply.status.as_u16(), reply.header("allow")), (405, Some("POST")));
    server.stop().await;
}

#[tokio::test]
async fn full_writer_queue_is_503_at_once() {
    let db = TestDatabase::sqlite();
    let server = Server::start_on(db, |c| {
        c.writer.queue_capacity = 3;
        c.writer.max_batch_rows = 1;
    })
    .await;
    // Hold SQLite's write lock so the writer cannot commit.
    let blocker = Store::connect(&server.db.config).await.unwrap();
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let txn = blocker.connection().begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO dead_letters (id, source, message_key, payload, error, first_seen_at, last_seen_at, delivery_count) VALUES ('x', 'http', 'k', x'00', 'e', 'now', 'now', 1)").await.unwrap();
    let addr = server.addr;
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                c.post_json("/v1/usage", &record_json("org-q", i)).await.status
            })
        })
        .collect();
    let mut c = server.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let reply = c.post_json("/v1/usage", &record_json("org-q", 99)).await;
        if reply.status == 503 {
            break reply;
        }
        assert!(std::time::Instant::now() < deadline, "never refused; last status {}", reply.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.json()["code"], "overloaded");
    assert_eq!(refused.header("retry-after"), Some("1"));
    txn.rollback().await.unwrap();
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    assert_eq!(server.count("org-q").await, 3);
    server.stop().await;
}

#[tokio::test]
async fn graceful_stop_answers_requests_in_flight() {
    let server = sqlite(|c| c.database.busy_timeout_ms = 30_000).await;
    // Hold SQLite's write lock so the request stays in flight, whatever the
    // machine's load, until the test lets it go.
    let blocker = Store::connect(&server.db.config).await.unwrap();
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let txn = blocker.connection().begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO dead_letters (id, source, message_key, payload, error, first_seen_at, last_seen_at, delivery_count) VALUES ('x', 'http', 'k', x'00', 'e', 'now', 'now', 1)").await.unwrap();
    let addr = server.addr;
    let in_flight = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        c.post_json("/v1/usage", &record_json("org-g", 0)).await.status
    });
    // The writer holds the record: the request is in the service.
    let mut probe = server.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&probe.get("/metrics").await.body).contains("ingestd_writer_queue_depth 1") {
        assert!(std::time::Instant::now() < deadline, "the request never reached the writer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(probe);
    let store = server.store.clone();
    let stopping = tokio::spawn(server.stop());
    // Shutdown has begun once the listener is gone; only then may the commit go on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Client::connect(addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting after stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!in_flight.is_finished(), "answered before the commit could happen");
    txn.rollback().await.unwrap();
    assert_eq!(in_flight.await.unwrap(), 200);
    stopping.await.unwrap();
    assert_eq!(store.count_records(Some("org-g")).await.unwrap(), 1);
}

/// Writes raw bytes, then reads until the server closes the connection.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before taking all of it.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 15, reproduction 1: this timestamp made the handler panic and the
/// connection drop. Now: 422 `invalid_timestamp`, alone, and the service
/// goes on serving.
async fn a_timestamp_past_year_9999_is_422_not_a_dropped_connection(kind: Kind) {
    let server = Server::start(kind, |_| {}).await;
    let mut c = server.client().await;
    let mut r = record_json("org-t", 0);
    r["timestamp"] = json!("9999-12-31T23:59:59-01:00");
    let reply = c.post_json("/v1/usage", &r).await;
    assert_eq!(reply.status, 422, "{:?}", reply.body);
    let errors = reply.json()["errors"].clone();
    assert_eq!(errors.as_array().unwrap().len(), 1, "{errors}");
    assert_eq!(
        (errors[0]["field"].as_str(), errors[0]["code"].as_str()),
        (Some("timestamp"), Some("invalid_timestamp"))
    );
    let batch = c.post_json("/v1/usage/batch", &json!({ "records": [r, record_json("org-t", 1)] })).await;
    assert_eq!(batch.status, 207);
    assert_eq!(c.get("/health").await.status, 200, "the same connection still serves");
    assert_eq!(server.count("org-t").await, 1);
    server.stop().await;
}

/// Issue 15, reproduction 2: `"provider": "open\u0000ai"` passed validation
/// and PostgreSQL refused it inside a shared group commit, failing a
/// concurrent valid request too. Now every string that reaches storage is
/// one both backends store: 422 for the bad ones, 200 for the others,
/// whatever they were committed with.
async fn strings_the_databases_refuse_are_422_and_hurt_no_one(kind: Kind) {
    let server = Server::start(kind, |c| c.writer.linger_ms = 20).await;
    let addr = server.addr;
    let mut bad = Vec::new();
    for (pointer, value) in [
        ("/provider", json!("open\u{0}ai")),
        ("/model/name", json!("gpt-4o\u{0}")),
        ("/tags", json!(["a\u{0}"])),
        ("/metadata", json!({"note": "a\u{0}b"})),
        ("/metadata", json!({"k\u{0}": 1})),
    ] {
        let mut r = record_json("org-bad", 0);
        *r.pointer_mut(pointer).unwrap() = value;
        bad.push(r);
    }
    let sends: Vec<_> = bad
        .into_iter()
        .map(|r| (r, 422))
        .chain((0..6).map(|i| (record_json(&format!("org-good-{i}"), i), 200)))
        .map(|(r, expected)| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let reply = c.post_json("/v1/usage", &r).await;
                (reply.status.as_u16(), expected, reply.json())
            })
        })
        .collect();
    for send in sends {
        let (status, expected, body) = send.await.unwrap();
        assert_eq!(status, expected, "{body}");
        if status == 422 {
            let code = body["errors"][0]["code"].as_str().unwrap().to_owned();
            assert!(code == "control_characters" || code == "nul_character", "{body}");
        }
    }
    assert_eq!(server.count("org-bad").await, 0);
    for i in 0..6 {
        assert_eq!(server.count(&format!("org-good-{i}")).await, 1);
    }
    server.stop().await;
}

/// Holds the database's write lock from another connection until dropped
/// or rolled back, so the writer's next commit waits.
async fn hold_write_lock(server: &Server) -> (Store, sea_orm::DatabaseTransaction) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let blocker = Store::connect(&server.db.config).await.unwrap();
    let txn = blocker.connection().begin().await.unwrap();
    let lock = match blocker.backend() {
        storage::Backend::Sqlite => {
            "INSERT INTO dead_letters (id, source, message_key, payload, error, first_seen_at, last_seen_at, delivery_count) VALUES ('lock', 'http', 'lock', x'00', 'e', 'now', 'now', 1)"
        }
        storage::Backend::Postgres => "LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE",
    };
    txn.execute_unprepared(lock).await.unwrap();
    (blocker, txn)
}

/// Waits until the gauge `name` of `/metrics` reaches `at_least`.
async fn wait_for_gauge(server: &Server, name: &str, at_least: usize) {
    let mut probe = server.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = String::from_utf8_lossy(&probe.get("/metrics").await.body).into_owned();
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if value as usize >= at_least {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{name} never reached {at_least} ({value})");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the writer holds `depth` records (queued or committing).
async fn wait_for_queue(server: &Server, depth: usize) {
    wait_for_gauge(server, "ingestd_writer_queue_depth", depth).await;
}

/// Waits until the writer has taken `rows` records into its transaction
/// (which the held lock then keeps from committing).
async fn wait_for_transaction(server: &Server, rows: usize) {
    wait_for_gauge(server, "ingestd_writer_transaction_rows", rows).await;
}

/// SPEC §2, "one bad record never affects another": a record the database
/// refuses although validation let it through (a test-only constraint
/// stands in for any such value) fails alone — 422 `storage_refused` for a
/// single record, 207 for a batch — while the 10 requests of other
/// organizations committed in the same group commit are answered 200.
async fn a_record_the_database_refuses_fails_alone(kind: Kind) {
    let server = Server::start(kind, |c| {
        c.writer.linger_ms = 0;
        c.database.busy_timeout_ms = 30_000;
    })
    .await;
    testkit::refuse_model(&server.store, "poison").await;
    let addr = server.addr;
    let post = |path: &'static str, body: Value| {
        tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            let reply = c.post_json(path, &body).await;
            (reply.status.as_u16(), reply.json())
        })
    };
    let (_blocker, lock) = hold_write_lock(&server).await;
    // The first is taken alone and waits on the lock; the rest queue behind
    // it and are committed together.
    let first = post("/v1/usage", record_json("org-first", 0));
    wait_for_transaction(&server, 1).await;
    let mut poison = record_json("org-poison", 0);
    poison["model"]["name"] = json!("poison");
    let single = post("/v1/usage", poison.clone());
    let mut poison_2 = record_json("org-poison", 1);
    poison_2["model"]["name"] = json!("poison");
    let batch = post("/v1/usage/batch", json!({ "records": [record_json("org-poison", 2), poison_2] }));
    let good: Vec<_> = (0..10).map(|i| post("/v1/usage", record_json(&format!("org-{i}"), i))).collect();
    wait_for_queue(&server, 1 + 1 + 2 + 10).await;
    lock.rollback().await.unwrap();

    assert_eq!(first.await.unwrap().0, 200);
    let (status, body) = single.await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["code"], "storage_refused", "{body}");
    assert_eq!(body["errors"][0]["request_id"], poison["request_id"]);
    let (status, body) = batch.await.unwrap();
    assert_eq!(status, 207, "{body}");
    assert_eq!((body["accepted"].as_u64(), body["rejected"].as_u64()), (Some(1), Some(1)), "{body}");
    assert_eq!(
        (body["errors"][0]["index"].as_u64(), body["errors"][0]["code"].as_str()),
        (Some(1), Some("storage_refused"))
    );
    for task in good {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(server.count("org-poison").await, 1);
    for i in 0..10 {
        assert_eq!(server.count(&format!("org-{i}")).await, 1);
    }
    server.stop().await;
}

/// SPEC §2, "a 503 means that none of the request's records was or will be
/// committed": the request timeout no longer cuts the wait for a commit
/// under way (that request is answered what happened, here 200, after its
/// timeout); a request still queued at its timeout is withdrawn: 503
/// `timeout`, and nothing of it is ever stored, so the retry of a record
/// without `request_id` stores exactly one row.
async fn a_503_timeout_means_nothing_was_committed(kind: Kind) {
    let server = Server::start(kind, |c| {
        c.writer.linger_ms = 0;
        c.server.request_timeout_secs = 1;
        c.database.busy_timeout_ms = 30_000;
    })
    .await;
    let addr = server.addr;
    let post = |body: Value| {
        tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            let started = std::time::Instant::now();
            let reply = c.post_json("/v1/usage", &body).await;
            (reply.status.as_u16(), reply.json(), started.elapsed())
        })
    };
    let (_blocker, lock) = hold_write_lock(&server).await;
    let taken = post(record_json("org-taken", 0));
    wait_for_transaction(&server, 1).await;
    let mut no_id = record_json("org-queued", 0);
    no_id.as_object_mut().unwrap().remove("request_id");
    let queued = post(no_id.clone());
    let (status, body, _) = queued.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "timeout");
    // The taken request is past its timeout too, still waiting for its commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!taken.is_finished(), "a request whose commit has begun must not be answered 503");
    lock.rollback().await.unwrap();
    let (status, body, took) = taken.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(took > Duration::from_secs(1), "answered after its timeout: {took:?}");
    assert_eq!(server.count("org-queued").await, 0, "a 503 request was committed");
    let mut c = server.client().await;
    assert_eq!(c.post_json("/v1/usage", &no_id).await.status, 200, "the client's retry");
    assert_eq!(server.count("org-queued").await, 1);
    assert_eq!(server.count("org-taken").await, 1);
    server.stop().await;
}

/// SPEC §8: every metric `/metrics` shows has `# HELP` text.
#[tokio::test]
async fn every_metric_has_help_text() {
    let server = sqlite(|_| {}).await;
    let mut c = server.client().await;
    assert_eq!(c.post_json("/v1/usage", &record_json("org-h", 0)).await.status, 200);
    let mut bad = record_json("org-h", 1);
    bad["usage"]["total_tokens"] = json!(1);
    assert_eq!(c.post_json("/v1/usage", &bad).await.status, 422);
    let text = String::from_utf8(c.get("/metrics").await.body.to_vec()).unwrap();
    let typed: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    assert!(typed.len() >= 5, "{text}");
    let build = text.lines().find(|l| l.starts_with("ingestd_build_info{")).expect("ingestd_build_info");
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && build.ends_with(" 1"), "{build}");
    for name in typed {
        assert!(text.lines().any(|l| l.starts_with(&format!("# HELP {name} "))), "no # HELP for {name}:\n{text}");
    }
    // Each ingestd_ series has the type and the label names of its entry in
    // telemetry::METRICS (the list docs/operations.md is held to).
    for line in text.lines().filter(|l| l.starts_with("# TYPE ingestd_")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        let listed = ingestd::telemetry::METRICS.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(format!("{:?}", listed.kind).to_lowercase(), kind, "{name}");
    }
    for line in text.lines().filter(|l| l.starts_with("ingestd_")) {
        let (series, _) = line.rsplit_once(' ').unwrap();
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let name = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        let listed = ingestd::telemetry::METRICS.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{line}"));
        for label in labels.trim_end_matches('}').split(',').filter(|l| !l.is_empty()) {
            let key = label.split('=').next().unwrap();
            assert!(key == "le" || listed.labels.contains(&key), "{line}: label {key} is not listed for {name}");
        }
    }
    server.stop().await;
}
