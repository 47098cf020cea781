//! What the `ingestd` benches share: sizes from the environment, and the
//! whole service in-process on a test database.

use std::net::SocketAddr;

use testkit::TestDatabase;

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// ingestd on `db`, auth off, serving on a loopback port.
pub struct Service {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    pub async fn start(db: &TestDatabase, edit: impl FnOnce(&mut ingestd::Config)) -> Service {
        let mut config = ingestd::Config { database: db.config.clone(), ..ingestd::Config::default() };
        config.auth.mode = ingestd::config::AuthMode::None;
        edit(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = ingestd::App::build(config).await.expect("app");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run(listener, async move {
            let _ = stopped.await;
        }));
        Service { addr, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("app task").expect("app");
    }
}
