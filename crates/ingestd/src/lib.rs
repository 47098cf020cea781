//! The ingestd service: configuration, composition, the command line.
//!
//! [`App::build`] connects storage, applies migrations and starts the
//! group-commit writer; [`App::run`] serves HTTP on a listener until a
//! shutdown future resolves, then drains: stop accepting, finish in-flight
//! requests, commit what the writer holds. Tests run the whole service
//! in-process on `127.0.0.1:0` this way.

pub mod config;
mod telemetry;

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_edge::{AppState, ReadinessCheck};
use model::Ingestor;
use storage::{Store, Writer};
use tokio::net::TcpListener;

pub use config::Config;
pub use telemetry::{Telemetry, init_logging, metrics_handle};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A composed service, ready to run.
pub struct App {
    config: Config,
    store: Store,
    writer: Writer,
}

impl App {
    /// Connects to the database, migrates it when `database.auto_migrate`,
    /// and starts the writer.
    pub async fn build(config: Config) -> Result<Self> {
        let store = Store::connect(&config.database)
            .await
            .with_context(|| format!("database {}", config::mask_url(&config.database.url)))?;
        if config.database.auto_migrate {
            store.migrate().await.context("applying migrations")?;
        } else {
            let pending = store.pending_migrations().await?;
            anyhow::ensure!(
                pending.is_empty(),
                "the database needs migrations ({}); run `ingestd migrate` or set database.auto_migrate = true",
                pending.join(", ")
            );
        }
        let writer = Writer::spawn(store.clone(), config.writer.clone());
        Ok(App { config, store, writer })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` resolves; then finishes in-flight requests
    /// (up to `server.shutdown_grace_secs`) and commits everything queued.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
        let App { config, store, writer } = self;
        let storage_check: ReadinessCheck = {
            let store = store.clone();
            Arc::new(move || {
                let store = store.clone();
                Box::pin(async move { store.ping().await.map_err(|e| format!("{e}: {}", source_chain(&e))) })
            })
        };
        let writer_check: ReadinessCheck = {
            let handle = writer.handle();
            Arc::new(move || {
                let open = handle.is_open();
                Box::pin(async move { if open { Ok(()) } else { Err("the writer has stopped".to_owned()) } })
            })
        };
        let metrics = telemetry::metrics_handle();
        let queue = writer.handle();
        let state = Arc::new(AppState {
            ingestor: Ingestor::new(writer.handle(), config.validation.clone()),
            config: config.server.clone(),
            readiness: vec![("storage", storage_check), ("writer", writer_check)],
            metrics: Arc::new(move || {
                metrics::gauge!("ingestd_writer_queue_depth").set(queue.queue_depth() as f64);
                metrics.render()
            }),
            version: VERSION,
        });
        tracing::info!(addr = %listener.local_addr()?, version = VERSION, "ingestd listening");
        http_edge::serve(listener, state, shutdown).await?;
        writer.shutdown().await;
        tracing::info!("ingestd stopped");
        Ok(())
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
