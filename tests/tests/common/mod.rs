//! The whole service in-process on a real socket, for black-box tests.

#![allow(dead_code)] // each test binary uses its own part of this

use std::net::SocketAddr;

use ingestd::{App, Config};
use storage::Store;
use testkit::http::Client;
use testkit::{Kind, TestDatabase};
use tokio::sync::oneshot;

pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    /// The service key printed at first start (`auth.mode = "api_key"` on an
    /// empty database).
    pub first_key: Option<String>,
    /// The keys the process accepts (`auth.mode = "api_key"`).
    pub keys: Option<ingestd::keys::Keys>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub db: TestDatabase,
}

/// Another ingestd process on the same database (for "every process within
/// 5 s" tests).
pub struct Peer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

struct Started {
    addr: SocketAddr,
    store: Store,
    first_key: Option<String>,
    keys: Option<ingestd::keys::Keys>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(db: &TestDatabase, edit: impl FnOnce(&mut Config)) -> Started {
    let mut config = Config { database: db.config.clone(), ..Config::default() };
    config.server.bind = "127.0.0.1:0".into();
    // Most suites are about other things; tests/tests/auth.rs turns keys on.
    config.auth.mode = ingestd::config::AuthMode::None;
    edit(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut app = App::build(config).await.expect("build the app");
    let first_key = app.take_first_key().map(|k| k.key);
    let keys = app.keys().cloned();
    let store = app.store().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(listener, async move {
        let _ = stopped.await;
    }));
    Started { addr, store, first_key, keys, stop, task }
}

impl Server {
    pub async fn start(kind: Kind, edit: impl FnOnce(&mut Config)) -> Server {
        Self::start_on(TestDatabase::new(kind).await, edit).await
    }

    pub async fn start_on(db: TestDatabase, edit: impl FnOnce(&mut Config)) -> Server {
        let s = start(&db, edit).await;
        Server {
            addr: s.addr,
            store: s.store,
            first_key: s.first_key,
            keys: s.keys,
            stop: Some(s.stop),
            task: s.task,
            db,
        }
    }

    /// A second process on this server's database.
    pub async fn peer(&self, edit: impl FnOnce(&mut Config)) -> Peer {
        let s = start(&self.db, edit).await;
        Peer { addr: s.addr, stop: Some(s.stop), task: s.task }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await.unwrap()
    }

    pub async fn stop(mut self) -> TestDatabase {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        self.db
    }

    pub async fn count(&self, org: &str) -> u64 {
        self.store.count_records(Some(org)).await.unwrap()
    }
}

/// An admin API request with `key`, and a JSON body when there is one.
pub async fn admin(
    c: &mut Client,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&serde_json::Value>,
) -> testkit::http::Reply {
    let bearer = format!("Bearer {key}");
    let mut headers = vec![("authorization", bearer.as_str())];
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json"));
            serde_json::to_vec(b).unwrap()
        }
        None => Vec::new(),
    };
    c.send(method, path, &headers, bytes).await.unwrap()
}

impl Peer {
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await.unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Stream messages for the isolation tests (issue 15), in publish order,
/// with what they must come to: every message that cannot be stored is
/// dead-lettered and the source goes on; every other record is stored.
pub struct PoisonMix {
    pub payloads: Vec<String>,
    /// Rows of `org` once everything is consumed.
    pub rows: u64,
    /// Messages dead-lettered (whole or in part).
    pub dead_letters: u64,
}

/// Call [`testkit::refuse_model`] with `"poison"` on the store first.
pub fn poison_mix(org: &str) -> PoisonMix {
    use serde_json::json;
    let good = |i: u64| testkit::record_json(org, i);
    let mut payloads: Vec<String> = (0..10).map(|i| good(i).to_string()).collect();
    let edit = |i: u64, pointer: &str, value: serde_json::Value| {
        let mut r = good(i);
        *r.pointer_mut(pointer).unwrap() = value;
        r
    };
    // Made the decoder panic (and the source task die) before.
    payloads.push(edit(100, "/timestamp", json!("9999-12-31T23:59:59-01:00")).to_string());
    // PostgreSQL refused these inside a shared commit before.
    payloads.push(edit(101, "/provider", json!("open\u{0}ai")).to_string());
    payloads.push(edit(102, "/metadata", json!({ "note": "a\u{0}b" })).to_string());
    // Valid, but the database refuses it (the test's constraint): the batch's
    // other record is stored, the message dead-lettered.
    let poison = edit(103, "/model/name", json!("poison"));
    payloads.push(json!({ "records": [good(104), poison] }).to_string());
    // SPEC §5: a record with a `records` member is still a record.
    let mut shaped = good(105);
    shaped["records"] = json!([{ "not": "a record" }]);
    payloads.push(shaped.to_string());
    payloads.extend((10..20).map(|i| good(i).to_string()));
    PoisonMix { payloads, rows: 10 + 1 + 1 + 10, dead_letters: 4 }
}
