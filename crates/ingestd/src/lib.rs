//! The ingestd service: configuration, composition, the command line.
//!
//! [`App::build`] connects storage, applies migrations and starts the
//! group-commit writer; [`App::run`] serves HTTP on a listener until a
//! shutdown future resolves, then drains: stop accepting, finish in-flight
//! requests, commit what the writer holds. Tests run the whole service
//! in-process on `127.0.0.1:0` this way.

pub mod config;
pub mod dlq;
pub mod keys;
mod nats;
pub mod prices;
mod redis;
pub mod retention;
pub mod rollups;
mod supervise;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ingest_http::AppState;
use model::{Component, Ingestor};
use ratelimit::Limiter;
use storage::{Store, Writer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use telemetry::{Telemetry, init_logging, metrics_handle};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A composed service, ready to run.
pub struct App {
    config: Config,
    store: Store,
    writer: Writer,
    limiter: Option<Arc<Limiter>>,
    /// With `auth.mode = "api_key"`.
    keys: Option<keys::Keys>,
    limits: keys::RateLimits,
    first_key: Option<keys::NewApiKey>,
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
        let invalid = |e: ratelimit::BuildError| anyhow::anyhow!("invalid configuration: rate_limit.{e}");
        let configured = config.rate_limit.org_policies().map_err(invalid)?;
        let (limiter, registry) = match config.rate_limit.enabled {
            true => {
                // Starts whether Redis answers or not (SPEC §4): until it
                // does, requests are decided per fail mode, as during any outage.
                let (limiter, registry) = config.rate_limit.build(&config.redis.url).map_err(|e| match e {
                    ratelimit::BuildError::Limiter(e) => anyhow::Error::new(e)
                        .context(format!("rate-limit backend redis at {}", config::mask_url(&config.redis.url))),
                    e => invalid(e),
                })?;
                (Some(Arc::new(limiter)), Some(registry))
            }
            false => (None, None),
        };
        // The first `migrate` loads the catalog snapshot; again here (it is
        // idempotent) in case that migrate stopped before it could.
        store.load_catalog_snapshot().await.context("loading the price catalog")?;
        store.refresh_prices().await.context("reading prices")?;
        let limits = keys::RateLimits::new(store.clone(), registry, configured);
        limits.refresh().await.context("reading runtime rate limits")?;
        let (keys, first_key) = match config.auth.mode {
            config::AuthMode::ApiKey => {
                let keys = keys::Keys::new(store.clone(), Arc::new(auth::KeyRing::new()));
                keys.refresh().await.context("reading API keys")?;
                let first = keys.bootstrap().await?;
                (Some(keys), first)
            }
            config::AuthMode::None => (None, None),
        };
        let writer = Writer::spawn(store.clone(), config.writer.clone());
        Ok(App { config, store, writer, limiter, keys, limits, first_key })
    }

    /// The service key created because the database had none: show it once.
    /// `None` when keys existed already (or `auth.mode = "none"`).
    pub fn take_first_key(&mut self) -> Option<keys::NewApiKey> {
        self.first_key.take()
    }

    /// The keys this process accepts (`auth.mode = "api_key"`).
    pub fn keys(&self) -> Option<&keys::Keys> {
        self.keys.as_ref()
    }

    /// The rate limiter in front of ingestion, when `rate_limit.enabled`.
    pub fn limiter(&self) -> Option<&Arc<Limiter>> {
        self.limiter.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves until `shutdown` resolves; then finishes in-flight requests
    /// (up to `server.shutdown_grace_secs`) and commits everything queued.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
        let App { config, store, writer, limiter, keys, limits, first_key: _ } = self;
        let refresh = keys::spawn_refresh(keys.clone(), limits.clone(), store.clone());
        let sweeper = limiter.clone().map(|limiter| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let dropped = limiter.sweep();
                    tracing::debug!(dropped, "rate-limit sweep");
                }
            })
        });
        // Stream sources: they stop when shutdown begins, before the writer.
        let stop_sources = CancellationToken::new();
        let sources: Vec<Spawned> = nats::spawn(&config, writer.handle(), &store, stop_sources.clone())
            .into_iter()
            .chain(redis::spawn(&config, writer.handle(), &store, stop_sources.clone()))
            .collect();
        let mut components: Vec<(&'static str, Arc<dyn Component>)> =
            vec![("storage", Arc::new(store.clone())), ("writer", Arc::new(writer.handle()))];
        if let Some(limiter) = limiter.clone() {
            components.push(("rate_limiter", Arc::new(ingest_http::LimiterHealth(limiter))));
        }
        for (name, _, health) in &sources {
            components.push((*name, Arc::new(health.clone())));
        }
        let metrics = telemetry::metrics_handle();
        telemetry::register_event_counters(&sources.iter().map(|(name, _, _)| *name).collect::<Vec<_>>());
        let state = Arc::new(AppState {
            ingestor: Ingestor::new(writer.handle(), config.validation.clone()),
            config: config.server.clone(),
            components,
            metrics: Arc::new(move || telemetry::render(&metrics)),
            version: VERSION,
            limiter,
            // Counted for the admin API, so only where there is one.
            decisions: keys.as_ref().map(|_| limits.decisions()),
            keys: keys.as_ref().map(|k| k.ring().clone()),
            // Without keys there is no admin: an open admin API would let
            // anyone mint keys that outlive `auth.mode = "none"`.
            admin: keys.clone().map(|keys| {
                Arc::new(keys::AdminApi { keys, limits: limits.clone(), store: store.clone() })
                    as Arc<dyn ingest_http::Admin>
            }),
            reader: Some(Arc::new(store.clone()) as Arc<dyn model::UsageReader>),
            continue_trace: Some(telemetry::continue_trace),
        });
        tracing::info!(addr = %listener.local_addr()?, version = VERSION, "ingestd listening");
        // On shutdown the sources stop fetching at once and finish their batch
        // in hand while HTTP drains; the writer outlives both.
        // One deadline, measured from the signal, covers HTTP, the sources
        // and the writer (`server.shutdown_grace_secs`).
        let grace = Duration::from_secs(config.server.shutdown_grace_secs);
        let signalled = Arc::new(std::sync::OnceLock::new());
        let stop_on_shutdown = stop_sources.clone();
        let shutdown = {
            let signalled = signalled.clone();
            async move {
                shutdown.await;
                signalled.get_or_init(tokio::time::Instant::now);
                stop_on_shutdown.cancel();
            }
        };
        let served = ingest_http::serve(listener, state, shutdown).await;
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        refresh.abort();
        stop_sources.cancel();
        let deadline = *signalled.get_or_init(tokio::time::Instant::now) + grace;
        for (name, task, _) in sources {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!(source = name, error = format!("{e:#}"), "stream source failed"),
                Ok(Err(e)) => tracing::error!(source = name, error = %e, "stream source task failed"),
                Err(_) => tracing::warn!(source = name, "stream source did not stop within the grace period"),
            }
        }
        writer.shutdown_by(deadline).await;
        // The decisions of the last requests, counted after the last
        // refresh: after the records, in what is left of the grace period.
        match tokio::time::timeout_at(deadline, limits.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = format!("{e:#}"), "could not store the last rate-limit decision counts")
            }
            Err(_) => tracing::warn!("the last rate-limit decision counts were not stored within the grace period"),
        }
        served?;
        tracing::info!("ingestd stopped");
        Ok(())
    }
}

/// A running stream source: its name (readiness, metrics), task and health.
type Spawned = (&'static str, tokio::task::JoinHandle<Result<()>>, broker::Health);

/// How often idle rate-limit keys are dropped (inserts also sweep, amortised).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The configured database for a command that needs the schema up to date
/// (`retention`, `prices`): refused with what to run when it is not.
pub async fn open_migrated(config: &Config) -> Result<storage::Store> {
    let store = storage::Store::connect(&config.database)
        .await
        .with_context(|| format!("database {}", config::mask_url(&config.database.url)))?;
    let pending = store.pending_migrations().await?;
    if !pending.is_empty() {
        anyhow::bail!("the database needs migrations ({}); run `ingestd migrate`", pending.join(", "));
    }
    Ok(store)
}

/// Resolves on SIGTERM or SIGINT.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // The handlers are installed now, not at the first poll: the server may
    // accept connections before it polls this future, and a SIGTERM in that
    // window would otherwise kill the process without draining.
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        match handlers {
            Ok((mut term, mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    }
}
