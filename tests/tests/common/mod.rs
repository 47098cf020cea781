//! The whole service in-process on a real socket, for black-box tests.

use std::net::SocketAddr;

use ingestd::{App, Config};
use storage::Store;
use testkit::http::Client;
use testkit::{Kind, TestDatabase};
use tokio::sync::oneshot;

pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub db: TestDatabase,
}

impl Server {
    pub async fn start(kind: Kind, edit: impl FnOnce(&mut Config)) -> Server {
        Self::start_on(TestDatabase::new(kind).await, edit).await
    }

    pub async fn start_on(db: TestDatabase, edit: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config { database: db.config.clone(), ..Config::default() };
        config.server.bind = "127.0.0.1:0".into();
        edit(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::build(config).await.expect("build the app");
        let store = app.store().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(listener, async move {
            let _ = stopped.await;
        }));
        Server { addr, store, stop: Some(stop), task, db }
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
