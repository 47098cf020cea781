//! JSONTestSuite (tests/data/JSONTestSuite, MIT) through the real HTTP
//! endpoints: `y_*` documents are JSON and must get past the parser (they are
//! not records, so field errors or a batch-shape error, never
//! `malformed_json`), `n_*` must be refused with 400 `malformed_json`, and
//! `i_*` may go either way but never crash or get a 5xx. The service must
//! still be healthy afterwards.

mod common;

use std::path::Path;

use common::Server;
use testkit::Kind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_suite_document_gets_a_client_error_or_is_parsed() {
    let server = Server::start(Kind::Sqlite, |c| c.rate_limit.enabled = false).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/JSONTestSuite/test_parsing");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() > 300, "the suite is incomplete: {} files", files.len());

    let mut failures = Vec::new();
    let mut client = server.client().await;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(file).unwrap();
        for path in ["/v1/usage", "/v1/usage/batch"] {
            let reply = match client.send("POST", path, &[("content-type", "application/json")], body.clone()).await {
                Ok(reply) => reply,
                Err(e) => {
                    failures.push(format!("{name} {path}: connection error {e}"));
                    client = server.client().await;
                    continue;
                }
            };
            let status = reply.status.as_u16();
            let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let ok = match (&name[..2], path) {
                // JSON, but not a record: field errors.
                ("y_", "/v1/usage") => status == 422,
                // JSON, but not a batch object: a shape error, never a syntax error.
                ("y_", _) => (status == 422 || status == 400) && code != "malformed_json",
                ("n_", _) => status == 400 && code == "malformed_json",
                _ => (400..500).contains(&status),
            };
            if !ok {
                failures.push(format!("{name} {path}: {status} {}", String::from_utf8_lossy(&reply.body)));
            }
        }
    }
    assert!(failures.is_empty(), "{} unexpected answers:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(client.get("/health").await.status, 200);
    // Of any organization: no suite document is a record.
    assert_eq!(server.store.count_records(None).await.unwrap(), 0, "a suite document was stored");
    server.stop().await;
}
