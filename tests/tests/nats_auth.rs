//! The NATS source against servers that demand credentials or TLS (issue
//! 22): token, user and password, an NKey seed, and TLS with a certificate
//! authority of the test's own. Each server is a throwaway `nats-server`
//! started with those settings; a record published by an authorized client
//! is stored, and wrong credentials keep the source (and readiness) down
//! with the server's reason.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use ingestd::config::NatsConfig;
use serde_json::Value;
use testkit::nats::{ThrowawayNats, unique};
use testkit::{Kind, record_json};

use common::Server;

mod common;

fn settings(url: String) -> NatsConfig {
    NatsConfig {
        url,
        subject: format!("{}.usage", unique("auth")),
        stream: unique("AUTH"),
        consumer: unique("ingestd"),
        idle_wait_ms: 100,
        ..NatsConfig::default()
    }
}

/// `/health/ready` until `done` holds for its status and body (20 s at most).
async fn readiness(server: &Server, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let mut c = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = c.get("/health/ready").await;
        let (status, body) = (reply.status.as_u16(), reply.json());
        if done(status, &body) || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ingestd connects with `nats`; a record published by a client connected
/// with `publisher` is stored.
async fn a_record_is_stored(nats: NatsConfig, publisher: async_nats::ConnectOptions) {
    let server = Server::start(Kind::Sqlite, |c| c.nats = nats.clone()).await;
    let (status, body) = readiness(&server, |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["components"]["nats"]["status"], "up");
    let client = publisher.connect(nats.servers().unwrap()).await.expect("the publisher connects");
    let js = async_nats::jetstream::new(client);
    let org = unique("org");
    js.publish(nats.subject.clone(), record_json(&org, 0).to_string().into()).await.unwrap().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.count(&org).await != 1 {
        assert!(Instant::now() < deadline, "the record was not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// ingestd with `nats` cannot connect: readiness is 503 and names the reason.
async fn refused(nats: NatsConfig, reason: &str) {
    let server = Server::start(Kind::Sqlite, |c| c.nats = nats.clone()).await;
    let text = |b: &Value| b["components"]["nats"].to_string().to_lowercase();
    let (status, body) = readiness(&server, |s, b| s == 503 && text(b).contains(reason)).await;
    assert_eq!(status, 503, "{body}");
    assert!(text(&body).contains(reason), "readiness should say {reason:?}: {body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authentication() {
    let nats = ThrowawayNats::start_with(&[OsStr::new("--auth"), OsStr::new("s3cret-token")]);
    let good = NatsConfig { token: Some("s3cret-token".into()), ..settings(nats.url()) };
    a_record_is_stored(good.clone(), async_nats::ConnectOptions::new().token("s3cret-token".into())).await;
    refused(NatsConfig { token: Some("wrong".into()), ..good.clone() }, "authorization violation").await;
    refused(NatsConfig { token: None, ..good }, "authorization violation").await;
    // In the URL, as NATS clients also take it.
    let publisher = async_nats::ConnectOptions::new().token("s3cret-token".into());
    a_record_is_stored(settings(format!("nats://s3cret-token@127.0.0.1:{}", nats.port)), publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authentication() {
    let args = ["--user", "ingest", "--pass", "pa55word"].map(OsStr::new);
    let nats = ThrowawayNats::start_with(&args);
    let good = NatsConfig { user: Some("ingest".into()), password: Some("pa55word".into()), ..settings(nats.url()) };
    let publisher = async_nats::ConnectOptions::new().user_and_password("ingest".into(), "pa55word".into());
    a_record_is_stored(good.clone(), publisher).await;
    // In the URL, as NATS clients also take them.
    let in_url = settings(format!("nats://ingest:pa55word@127.0.0.1:{}", nats.port));
    let publisher = async_nats::ConnectOptions::new().user_and_password("ingest".into(), "pa55word".into());
    a_record_is_stored(in_url, publisher).await;
    refused(NatsConfig { password: Some("nope".into()), ..good }, "authorization violation").await;
    refused(settings(format!("nats://ingest:nope@127.0.0.1:{}", nats.port)), "authorization violation").await;
    // A list of servers: the credentials of the URL that has them.
    let list = settings(format!("nats://127.0.0.1:{0},nats://ingest:pa55word@127.0.0.1:{0}", nats.port));
    let publisher = async_nats::ConnectOptions::new().user_and_password("ingest".into(), "pa55word".into());
    a_record_is_stored(list, publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let (user, stranger) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n", user.public_key())).unwrap();
    let nats = ThrowawayNats::start_with(&[OsStr::new("-c"), conf.as_os_str()]);
    let seed = user.seed().unwrap();
    let good = NatsConfig { nkey_seed: Some(seed.clone()), ..settings(nats.url()) };
    a_record_is_stored(good.clone(), async_nats::ConnectOptions::with_nkey(seed)).await;
    refused(NatsConfig { nkey_seed: Some(stranger.seed().unwrap()), ..good }, "authorization violation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_certificate_authority() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::tls::Authority::new(dir.path());
    let server_cert = ca.issue(dir.path(), "nats", &["127.0.0.1", "localhost"]);
    let args = [
        OsStr::new("--tls"),
        OsStr::new("--tlscert"),
        server_cert.cert_file.as_os_str(),
        OsStr::new("--tlskey"),
        server_cert.key_file.as_os_str(),
    ];
    let nats = ThrowawayNats::start_with(&args);
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let good = NatsConfig { tls_ca_file: Some(ca.ca_file.clone()), ..settings(url) };
    let publisher = async_nats::ConnectOptions::new().add_root_certificates(ca.ca_file.clone());
    a_record_is_stored(good.clone(), publisher).await;
    // Without the authority, the server's certificate is not trusted.
    refused(NatsConfig { tls_ca_file: None, ..good }, "certificate").await;
    // tls_required against a server without TLS: refused, never plain.
    let plain = ThrowawayNats::start();
    let required = NatsConfig { tls_required: true, tls_ca_file: Some(ca.ca_file.clone()), ..settings(plain.url()) };
    // (rustls, reading the plain server's INFO line as a TLS record.)
    refused(required, "corrupt message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::tls::Authority::new(dir.path());
    let server_cert = ca.issue(dir.path(), "nats", &["127.0.0.1", "localhost"]);
    let client = ca.issue(dir.path(), "ingestd", &["ingestd"]);
    // --tlsverify: the server asks every client for a certificate of the CA.
    let args = [
        OsStr::new("--tlsverify"),
        OsStr::new("--tlscert"),
        server_cert.cert_file.as_os_str(),
        OsStr::new("--tlskey"),
        server_cert.key_file.as_os_str(),
        OsStr::new("--tlscacert"),
        ca.ca_file.as_os_str(),
    ];
    let nats = ThrowawayNats::start_with(&args);
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let good = NatsConfig {
        tls_ca_file: Some(ca.ca_file.clone()),
        tls_cert_file: Some(client.cert_file.clone()),
        tls_key_file: Some(client.key_file.clone()),
        ..settings(url)
    };
    let publisher = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.ca_file.clone())
        .add_client_certificate(client.cert_file.clone(), client.key_file.clone());
    a_record_is_stored(good.clone(), publisher).await;
    // Without a client certificate the server ends the handshake.
    let text = |b: &Value| b["components"]["nats"]["status"] == "down";
    let server =
        Server::start(Kind::Sqlite, |c| c.nats = NatsConfig { tls_cert_file: None, tls_key_file: None, ..good }).await;
    let (status, body) = readiness(&server, |s, b| s == 503 && text(b)).await;
    assert_eq!(status, 503, "{body}");
    server.stop().await;
}

/// A `.creds` file that is not one stops nothing else: the source reports
/// it and keeps retrying (what `.creds` holds is read by async-nats, whose
/// JWT authentication needs an operator-mode server, not set up here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_credentials_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("user.creds");
    std::fs::write(&creds, "not a creds file").unwrap();
    let nats = ThrowawayNats::start();
    refused(NatsConfig { credentials_file: Some(creds), ..settings(nats.url()) }, "credentials_file").await;
}
