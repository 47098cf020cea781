//! Keeps a stream source running: a source task that ends while the
//! service runs — an error it gave up on, a panic, an unexpected return —
//! is started again after a backoff delay, and readiness fails (the
//! source's health says why) until the new task has connected.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use broker::{Backoff, Health, RetryConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A task that ran this long before it ended starts again without waiting
/// out the backoff of earlier failures.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Runs `start()` in a task of its own, again and again, until `shutdown`.
/// The returned task ends with the last run's result once shut down.
pub(crate) fn supervise<F, Fut>(
    name: &'static str,
    health: Health,
    retry: RetryConfig,
    shutdown: CancellationToken,
    mut start: F,
) -> JoinHandle<Result<()>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::new(retry);
        loop {
            let began = Instant::now();
            let outcome = tokio::spawn(start()).await;
            if shutdown.is_cancelled() {
                return match outcome {
                    Ok(result) => result,
                    Err(e) => Err(anyhow::anyhow!("{name} source task failed: {e}")),
                };
            }
            let why = match outcome {
                Ok(Ok(())) => "it returned while the service was running".to_owned(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) if e.is_panic() => format!("it panicked: {}", model::panic_message(&*e.into_panic())),
                Err(e) => e.to_string(),
            };
            if began.elapsed() >= STABLE_AFTER {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::error!(source = name, reason = %why, retry_in = ?delay, "stream source stopped; restarting it");
            metrics::counter!("ingestd_source_restarts_total", "source" => name).increment(1);
            health.set_disconnected(format!("{name}: the source stopped ({why}); restarting in {delay:?}"));
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    })
}

/// One task for a source's members (each supervised on its own): it ends
/// once they all have, with the first error among them.
pub(crate) fn join_members(members: Vec<JoinHandle<Result<()>>>) -> JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut result = Ok(());
        for member in members {
            let ended = member.await.map_err(anyhow::Error::new).and_then(|r| r);
            result = result.and(ended);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A source that panics, then fails, then runs until shutdown: it is
    /// restarted each time, and readiness fails while it is down.
    #[tokio::test]
    async fn a_stopped_source_is_restarted_and_unready_meanwhile() {
        let runs = Arc::new(AtomicU32::new(0));
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let retry = RetryConfig { initial_delay_ms: 50, max_delay_ms: 50, ..RetryConfig::default() };
        let task = {
            let (runs, health, shutdown) = (runs.clone(), health.clone(), shutdown.clone());
            supervise("test", health.clone(), retry, shutdown.clone(), move || {
                let (runs, health, shutdown) = (runs.clone(), health.clone(), shutdown.clone());
                async move {
                    match runs.fetch_add(1, Ordering::SeqCst) {
                        0 => panic!("poisoned message"),
                        1 => anyhow::bail!("gave up"),
                        _ => {
                            health.set_ok();
                            shutdown.cancelled().await;
                            Ok(())
                        }
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut saw_down = None;
        while runs.load(Ordering::SeqCst) < 3 || health.check().is_err() {
            if let Err(why) = health.check()
                && why.contains("restarting")
            {
                saw_down.get_or_insert(why);
            }
            assert!(Instant::now() < deadline, "not restarted: {:?}", health.check());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let why = saw_down.expect("readiness failed while the source was down");
        assert!(why.contains("test: the source stopped"), "{why}");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}
