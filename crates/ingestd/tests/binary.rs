//! The real `ingestd` binary as an operator runs it.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::http::Client;
use testkit::record_json;

const BIN: &str = env!("CARGO_BIN_EXE_ingestd");

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A clean environment: no stray INGESTD_* or legacy variables from the caller.
fn ingestd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn invalid_configuration_exits_64_naming_the_key_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the port: if ingestd tried to bind first, it would report "address in use".
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out =
        ingestd(dir.path()).env("BIND_ADDR", &addr).env("INGESTD_SERVER__MAX_BATCH_SIZE", "many").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.max_batch_size"), "{stderr}");
    assert!(!stderr.contains("in use"), "{stderr}");

    // A value that parses but cannot work: `now + skew` would overflow.
    let out = ingestd(dir.path())
        .args(["config", "check"])
        .env("INGESTD_VALIDATION__MAX_FUTURE_SKEW_SECS", "18446744073709551615")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("validation.max_future_skew_secs"));

    std::fs::write(dir.path().join("ingestd.toml"), "[server]\nbnd = \"x\"\n").unwrap();
    let out = ingestd(dir.path()).arg("config").arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bnd"));
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let out = ingestd(dir.path())
        .args(["config", "check"])
        .env("DATABASE_URL", "postgres://ingest:s3cret@db.internal/usage")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("postgres://ingest:***@db.internal/usage"), "{stdout}");
    assert!(!stdout.contains("s3cret"));
    assert!(stdout.contains("max_batch_size = 1000"));
}

#[test]
fn the_config_file_is_named_by_dash_c_or_ingestd_config_and_prefixed_variables_win() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("elsewhere.toml");
    std::fs::write(&file, "[server]\nmax_batch_size = 77\n").unwrap();
    let check = |cmd: &mut Command| {
        let out = cmd.args(["config", "check"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(check(ingestd(dir.path()).arg("-c").arg(&file)).contains("max_batch_size = 77"));
    assert!(check(ingestd(dir.path()).env("INGESTD_CONFIG", &file)).contains("max_batch_size = 77"));
    // The environment over the file; the prefixed name over the legacy one.
    let out = check(
        ingestd(dir.path())
            .env("INGESTD_CONFIG", &file)
            .env("INGESTD_SERVER__MAX_BATCH_SIZE", "78")
            .env("INGESTD_DATABASE__URL", "postgres://prefixed/x")
            .env("DATABASE_URL", "postgres://legacy/x"),
    );
    assert!(out.contains("max_batch_size = 78") && out.contains("postgres://prefixed/x"), "{out}");
    // A file that does not exist: bad configuration, exit 64.
    let out = ingestd(dir.path()).args(["-c", "nope.toml", "config", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn migrate_creates_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let out = ingestd(dir.path())
        .arg("migrate")
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", db.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = storage::DatabaseConfig { url: format!("sqlite://{}", db.display()), ..Default::default() };
        let store = storage::Store::connect(&config).await.unwrap();
        assert!(store.pending_migrations().await.unwrap().is_empty());
        assert_eq!(store.count_records(None).await.unwrap(), 0);
    });
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

fn start(dir: &std::path::Path, db_url: &str) -> Running {
    start_with(dir, db_url, &[])
}

fn start_with(dir: &std::path::Path, db_url: &str, env: &[(&str, &str)]) -> Running {
    let addr = free_addr();
    let child = ingestd(dir)
        // These tests are about other things (unless `env` says otherwise);
        // tests/tests/auth.rs and `first_start_prints_a_service_key…` below
        // cover API keys.
        .env("INGESTD_AUTH__MODE", "none")
        .envs(env.iter().copied())
        .env("DATABASE_URL", db_url)
        .env("BIND_ADDR", addr.to_string())
        .env("INGESTD_SERVER__SHUTDOWN_GRACE_SECS", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    listening(child, addr)
}

/// Waits until the child listens on `addr`.
fn listening(child: Child, addr: SocketAddr) -> Running {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "ingestd did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    Running { child, addr }
}

/// SIGTERM while clients write: every acknowledged record is stored, the
/// process exits 0 within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut running = start(dir.path(), &url);
    let addr = running.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (stop, answered) = (stop.clone(), answered.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let Ok(mut client) = Client::connect(addr).await else { return acked };
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<_> = (0..10).map(|k| record_json(&format!("org-{c}"), i * 10 + k)).collect();
                    let body = serde_json::to_vec(&serde_json::json!({ "records": batch })).unwrap();
                    match client.send("POST", "/v1/usage/batch", &[("content-type", "application/json")], body).await {
                        Ok(reply) if reply.status == 200 => {
                            acked.extend(batch.iter().map(|r| r["request_id"].as_str().unwrap().to_owned()));
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        // 503 while draining, or the connection closed: not acknowledged.
                        Ok(_) | Err(_) => break,
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    // The signal comes once the clients are writing: some batches answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "no batch was answered in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = running.child.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || {
        let status = running.child.wait().unwrap();
        let mut stderr = String::new();
        running.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status.0.code(), Some(0), "exit status; stderr:\n{}", status.1);
    assert!(sent.elapsed() < Duration::from_secs(10), "took {:?} to stop", sent.elapsed());
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }
    assert!(acked.len() >= 100, "only {} records acknowledged before SIGTERM", acked.len());

    let config = storage::DatabaseConfig { url, ..Default::default() };
    let store = storage::Store::connect(&config).await.unwrap();
    use sea_orm::ConnectionTrait;
    let rows = store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            store.connection().get_database_backend(),
            "SELECT request_id FROM usage_records",
        ))
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> =
        rows.iter().map(|r| r.try_get_by_index::<String>(0).unwrap()).collect();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} acknowledged records lost, e.g. {:?}", lost.len(), lost.first());
}

/// Stops with SIGTERM and returns (exit code, stdout when piped + stderr).
fn terminate(mut running: Running) -> (Option<i32>, String) {
    assert!(Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap().success());
    let status = running.child.wait().unwrap();
    let mut output = String::new();
    if let Some(mut stdout) = running.child.stdout.take() {
        stdout.read_to_string(&mut output).unwrap();
    }
    running.child.stderr.take().unwrap().read_to_string(&mut output).unwrap();
    (status.code(), output)
}

type Received = Arc<std::sync::Mutex<Vec<(String, String, bytes::Bytes)>>>;

/// A stand-in OTLP/HTTP collector that records (path, content-type, body).
async fn fake_collector() -> (SocketAddr, Received) {
    fake_collector_over(None).await
}

/// The same collector; with `tls`, it speaks HTTPS only.
async fn fake_collector_over(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Received) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (store, tls) = (store.clone(), tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ct =
                            req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        store.lock().unwrap().push((path, ct, body));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::new(),
                        )))
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else { return };
                        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                    None => {
                        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_over_otlp() {
    let (collector, received) = fake_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    let endpoint = format!("http://{collector}");
    let running = start_with(
        dir.path(),
        &url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "ingestd-eu"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,service.namespace=billing"),
        ],
    );
    let mut client = Client::connect(running.addr).await.unwrap();
    for i in 0..3 {
        assert_eq!(client.post_json("/v1/usage", &record_json("org-otel", i)).await.status, 200);
    }
    // A caller's W3C trace context: its trace continues through ingestd.
    let (caller_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let body = serde_json::to_vec(&record_json("org-otel", 3)).unwrap();
    let headers = [("content-type", "application/json"), ("traceparent", traceparent.as_str())];
    assert_eq!(client.send("POST", "/v1/usage", &headers, body).await.unwrap().status, 200);
    // A malformed one is ignored: the request starts a trace of its own.
    let body = serde_json::to_vec(&record_json("org-otel", 4)).unwrap();
    let headers = [("content-type", "application/json"), ("traceparent", "00-not-a-trace-01")];
    assert_eq!(client.send("POST", "/v1/usage", &headers, body).await.unwrap().status, 200);
    let (code, stderr) = tokio::task::spawn_blocking(move || terminate(running)).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let received = received.lock().unwrap();
    let traces: Vec<_> = received.iter().filter(|(path, _, _)| path == "/v1/traces").collect();
    assert!(
        !traces.is_empty(),
        "no export reached the collector; got {:?}",
        received.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    assert_eq!(traces[0].1, "application/x-protobuf");
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;
    let exports: Vec<ExportTraceServiceRequest> =
        traces.iter().map(|(_, _, body)| ExportTraceServiceRequest::decode(body.as_ref()).unwrap()).collect();
    let resources: Vec<_> = exports.iter().flat_map(|e| &e.resource_spans).collect();
    let attribute = |key: &str| {
        let resource = resources[0].resource.as_ref().unwrap();
        match resource.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.clone()) {
            Some(Value::StringValue(s)) => s,
            other => panic!("resource attribute {key}: {other:?}"),
        }
    };
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, not the built-in "ingestd".
    assert_eq!(attribute("service.name"), "ingestd-eu");
    assert_eq!(attribute("deployment.environment.name"), "test");
    assert_eq!(attribute("service.namespace"), "billing");
    let spans: Vec<_> = resources.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
    let requests: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.name == "request"
                && s.attributes.iter().any(|kv| {
                    kv.key == "path"
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(p)) if p == "/v1/usage")
                })
        })
        .collect();
    assert_eq!(requests.len(), 5, "request spans: {}", requests.len());
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let continued: Vec<_> = requests.iter().filter(|s| hex(&s.trace_id) == caller_trace).collect();
    assert_eq!(continued.len(), 1, "one request span continues the caller's trace");
    assert_eq!(hex(&continued[0].parent_span_id), caller_span, "its parent is the caller's span");
    assert!(
        requests.iter().filter(|s| hex(&s.trace_id) != caller_trace).all(|s| s.parent_span_id.is_empty()),
        "requests without traceparent start their own traces"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_does_not_slow_requests() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    // Nothing listens there.
    let endpoint = format!("http://{}", free_addr());
    let running = start_with(dir.path(), &url, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]);
    let mut client = Client::connect(running.addr).await.unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        assert_eq!(client.post_json("/v1/usage", &record_json("org-otel", i)).await.status, 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "a request took {slowest:?}");
    let sent = Instant::now();
    let (code, stderr) = tokio::task::spawn_blocking(move || terminate(running)).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(sent.elapsed() < Duration::from_secs(15), "shutdown took {:?}", sent.elapsed());
}

#[test]
fn dlq_commands_list_and_replay_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("dlq.db").display());
    let run = |args: &[&str]| ingestd(dir.path()).env("DATABASE_URL", &url).args(args).output().unwrap();
    assert!(run(&["migrate"]).status.success());
    let out = run(&["dlq", "list", "--all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ID") && stdout.trim_end().ends_with("0 dead letter(s)"), "{stdout}");
    let out = run(&["dlq", "replay", "--source", "nats"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 0 dead letter(s)"));
    let out = run(&["dlq", "replay", "--source", "kafka"]);
    assert_eq!(out.status.code(), Some(2), "an unknown source is a usage error");
}

#[test]
fn keys_commands_create_list_and_revoke_and_the_key_is_the_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
    let run = |args: &[&str]| ingestd(dir.path()).env("DATABASE_URL", &url).args(args).output().unwrap();
    assert!(run(&["migrate"]).status.success());
    let out = run(&["keys", "create", "--org", "acme", "--label", "eu gateway", "--signing-secret"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = stdout.lines().last().unwrap().to_owned();
    assert!(key.starts_with("ingestd_") && key.len() == 57, "{stdout}");
    assert!(stdout.contains("whsec_"), "the signing secret is shown once: {stdout}");
    let out = run(&["keys", "create", "--service"]);
    assert!(out.status.success());
    let service = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_owned();
    assert_ne!(service, key);
    // An org key needs --org; scopes exclude each other.
    assert_eq!(run(&["keys", "create"]).status.code(), Some(2));
    assert_eq!(run(&["keys", "create", "--org", "a", "--admin"]).status.code(), Some(2));

    let out = run(&["keys", "list", "--json"]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["scope"].as_str(), rows[0]["organization_id"].as_str()), (Some("org"), Some("acme")));
    assert_eq!((rows[0]["label"].as_str(), rows[0]["signed"].as_bool()), (Some("eu gateway"), Some(true)));
    assert!(!listed.contains(&key) && !listed.contains("whsec_"), "list never shows a secret");
    let table = String::from_utf8_lossy(&run(&["keys", "list"]).stdout).into_owned();
    assert!(table.starts_with("ID") && table.contains("acme") && !table.contains(&key), "{table}");

    let id = rows[0]["id"].as_str().unwrap();
    let out = run(&["keys", "revoke", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = run(&["keys", "revoke", id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no active key"));
    let out = run(&["keys", "list", "--json"]);
    let revoked: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert!(revoked["revoked_at"].is_string());
}

#[tokio::test]
async fn first_start_prints_a_service_key_on_stdout_and_warns_when_auth_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("first.db").display());
    let addr = free_addr();
    let child = ingestd(dir.path())
        .env("DATABASE_URL", &url)
        .env("BIND_ADDR", addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = listening(child, addr);
    let mut client = Client::connect(addr).await.unwrap();
    assert_eq!(client.post_json("/v1/usage", &record_json("org-1", 0)).await.status, 401);
    let (status, output) = terminate(running);
    assert_eq!(status, Some(0), "{output}");
    let key = output
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .find(|w| w.starts_with("ingestd_") && w.len() == 57)
        .unwrap_or_else(|| panic!("no key printed: {output}"))
        .to_owned();
    assert!(output.contains("Authorization: Bearer"), "the hint says how to use it: {output}");
    // The key was printed, not logged: only one occurrence, on stdout.
    assert_eq!(output.matches(&key).count(), 1, "{output}");

    // With the key the same database accepts writes; auth off warns.
    let running = start_with(dir.path(), &url, &[("INGESTD_AUTH__MODE", "api_key")]);
    let mut client = Client::connect(running.addr).await.unwrap();
    let bearer = format!("Bearer {key}");
    let body = serde_json::to_vec(&record_json("org-1", 1)).unwrap();
    let reply = client
        .send("POST", "/v1/usage", &[("content-type", "application/json"), ("authorization", &bearer)], body)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let (_, output) = terminate(running);
    assert!(!output.contains("ingestd_"), "no second key, and no key in the logs: {output}");
    let running = start(dir.path(), &url);
    let (_, output) = terminate(running);
    assert!(output.contains("auth.mode = \"none\""), "{output}");
}

#[test]
fn retention_is_a_dry_run_unless_executed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("retention.db").display());
    let run = |args: &[&str]| ingestd(dir.path()).env("DATABASE_URL", &url).args(args).output().unwrap();
    assert!(run(&["migrate"]).status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = storage::DatabaseConfig { url: url.clone(), ..Default::default() };
        let store = storage::Store::connect(&config).await.unwrap();
        let writer = storage::Writer::spawn(store, storage::WriterConfig::default());
        let now = time::OffsetDateTime::now_utc();
        let records = [now, now - time::Duration::days(500), now - time::Duration::days(800)]
            .map(|t| model::UsageRecord { timestamp: t, ..testkit::record("org", 0) });
        model::RecordSink::store(&writer.handle(), records.to_vec(), model::Source::Http).await.unwrap();
        writer.shutdown().await;
    });

    let out = run(&["retention", "--older-than", "400d"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("dry run: would remove 2 rows"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("organization org: 2 rows older than the cutoff"));

    let out = run(&["retention", "--older-than", "400d", "--execute", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["rows"].as_u64(), report["executed"].as_bool()), (Some(2), Some(true)), "{report}");
    assert!(out.stderr.is_empty(), "--json prints only the summary");

    let out = run(&["retention", "--older-than", "400d"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dry run: would remove 0 rows"));
    let out = run(&["retention", "--older-than", "400"]);
    assert_eq!(out.status.code(), Some(2), "an age without a unit is a usage error");
}

#[test]
fn prices_commands_show_list_import_and_rerate() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("prices.db").display());
    let run = |args: &[&str]| ingestd(dir.path()).env("DATABASE_URL", &url).args(args).output().unwrap();
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(run(&["migrate"]).status.success());

    let out = run(&["prices", "show", "gpt-4o"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("litellm-1.110.2") && stdout(&out).contains("0.0000025"), "{}", stdout(&out));
    let out = run(&["prices", "show", "gpt-4o", "--provider", "azure.ai.openai"]);
    assert!(stdout(&out).contains(r#"catalog key "azure/gpt-4o""#), "{}", stdout(&out));
    let out = run(&["prices", "list", "--provider", "openai"]);
    assert!(stdout(&out).starts_with("# catalog version litellm-1.110.2"), "{}", stdout(&out));
    assert!(stdout(&out).lines().any(|l| l.starts_with("gpt-4o ")), "{}", stdout(&out));
    let out = run(&["prices", "show", "no-such-model"]);
    assert_eq!(out.status.code(), Some(1), "an unknown model is an error");

    // gpt-4o's output price changed; everything else as in the snapshot.
    let text = pricing::catalog::snapshot_json().unwrap();
    let mut all: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(&text).unwrap();
    all.insert(
        "gpt-4o".into(),
        serde_json::value::RawValue::from_string(
            r#"{"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1.2e-05, "litellm_provider": "openai", "mode": "chat"}"#.into(),
        )
        .unwrap(),
    );
    let file = dir.path().join("prices.json");
    std::fs::write(&file, serde_json::to_string(&all).unwrap()).unwrap();
    let out = run(&["prices", "import", file.to_str().unwrap(), "--effective-from", "2026-01-01"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("0 prices added, 1 changed"), "{}", stdout(&out));
    let out = run(&["prices", "show", "gpt-4o"]);
    let history = stdout(&out);
    assert!(history.contains("import-2026-01-01T00:00:00Z") && history.contains("0.000012"), "{history}");
    let out = run(&["prices", "import", file.to_str().unwrap(), "--effective-from", "2025-06-01"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("after the latest stored one"));

    let out = run(&["prices", "rerate", "--from", "2025-01-01", "--to", "2027-01-01", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["examined"].as_u64(), report["changed"].as_u64()), (Some(0), Some(0)), "{report}");
    let out = run(&["prices", "rerate", "--from", "2026-01-01", "--to", "2025-01-01"]);
    assert_eq!(out.status.code(), Some(1), "an empty range is refused");
}

/// `/health/ready` of `addr` until `done` holds (20 s at most).
async fn readiness_until(addr: SocketAddr, done: impl Fn(u16, &serde_json::Value) -> bool) -> (u16, serde_json::Value) {
    let mut client = Client::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = client.get("/health/ready").await;
        let (status, body) = (reply.status.as_u16(), reply.json());
        if done(status, &body) || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `rediss://` to a Redis that speaks only TLS, with a certificate of a
/// private authority named by `SSL_CERT_FILE` (the system's roots are used
/// otherwise): the rate limiter and the Redis Streams source both connect,
/// and an entry added with `redis-cli --tls` is stored. Without the
/// authority, neither connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_authority_serves_the_limiter_and_the_stream_source() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::tls::Authority::new(dir.path());
    let redis = testkit::tls::Redis::start(&ca);
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("tls.db").display());
    let ca_file = ca.ca_file.to_str().unwrap();
    let settings = |trust: &'static str| {
        let trust = if trust == "ca" { ca_file.to_owned() } else { trust.to_owned() };
        vec![
            ("REDIS_URL".to_owned(), redis.url()),
            ("REDIS_STREAM_KEY".to_owned(), "tls:usage".to_owned()),
            ("INGESTD_REDIS__CONSUMER__BLOCK_MS".to_owned(), "100".to_owned()),
            ("INGESTD_RATE_LIMIT__BACKEND".to_owned(), "redis".to_owned()),
            ("SSL_CERT_FILE".to_owned(), trust),
        ]
    };
    let env = settings("ca");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let running = start_with(dir.path(), &db, &env);
    let connected = |s: u16, b: &serde_json::Value| s == 200 && b["components"]["rate_limiter"]["state"] == "redis";
    let (status, body) = readiness_until(running.addr, connected).await;
    assert!(connected(status, &body), "{status} {body}");
    assert_eq!(body["components"]["redis"]["status"], "up", "{body}");
    let added = Command::new("redis-cli")
        .args(["--tls", "--cacert", ca_file, "-h", "127.0.0.1", "-p", &redis.port.to_string()])
        .args(["XADD", "tls:usage", "*", "payload", &record_json("org-tls", 0).to_string()])
        .output()
        .expect("redis-cli (Debian/Ubuntu: apt-get install redis-tools)");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let mut client = Client::connect(running.addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = String::from_utf8(client.get("/metrics").await.body.to_vec()).unwrap();
        if metrics.lines().any(|l| l.starts_with("ingestd_redis_entries_total{outcome=\"stored\"} 1")) {
            break;
        }
        assert!(Instant::now() < deadline, "the entry was not stored:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, stderr) = tokio::task::spawn_blocking(move || terminate(running)).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");

    // The system's roots only: the server's certificate is not trusted.
    let env = settings("/etc/ssl/certs/ca-certificates.crt");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let running = start_with(dir.path(), &db, &env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = readiness_until(running.addr, |s, _| s == 503).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["components"]["redis"]["status"], "down", "{body}");
    assert_ne!(body["components"]["rate_limiter"]["state"], "redis", "{body}");
    let _ = tokio::task::spawn_blocking(move || terminate(running)).await.unwrap();
}

/// An `https://` collector whose certificate comes from a private authority
/// named by `SSL_CERT_FILE`: the spans arrive. With the system's roots only,
/// none do (and requests are not slowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_an_https_collector() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::tls::Authority::new(dir.path());
    let issued = ca.issue(dir.path(), "collector", &["127.0.0.1", "localhost"]);
    let certs = CertificateDer::pem_file_iter(&issued.cert_file).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&issued.key_file).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let (collector, received) = fake_collector_over(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let endpoint = format!("https://{collector}");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    for (trust, expected) in [(ca.ca_file.to_str().unwrap(), true), ("/etc/ssl/certs/ca-certificates.crt", false)] {
        received.lock().unwrap().clear();
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("SSL_CERT_FILE", trust)];
        let running = start_with(dir.path(), &db, &env);
        let mut client = Client::connect(running.addr).await.unwrap();
        for i in 0..3 {
            assert_eq!(client.post_json("/v1/usage", &record_json("org-https", i)).await.status, 200);
        }
        let (code, stderr) = tokio::task::spawn_blocking(move || terminate(running)).await.unwrap();
        assert_eq!(code, Some(0), "{stderr}");
        let traces = received.lock().unwrap().iter().filter(|(path, _, _)| path == "/v1/traces").count();
        assert_eq!(traces > 0, expected, "trusting {trust}: {traces} exports arrived\n{stderr}");
    }
}
