use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A source's state as `/health/ready` and `/metrics` show it. Cheap to clone;
/// the source writes, the service reads.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connected: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl Health {
    pub fn new() -> Self {
        Health::default()
    }

    /// Connected to the server, and the last batch (if any) was committed.
    pub fn set_ok(&self) {
        self.inner.connected.store(true, Ordering::Relaxed);
        *self.inner.problem.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Disconnected (or not yet connected); `why` is shown in readiness.
    pub fn set_disconnected(&self, why: impl Into<String>) {
        self.inner.connected.store(false, Ordering::Relaxed);
        *self.inner.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
    }

    /// Connected, but something else keeps failing (e.g. storage).
    pub fn set_degraded(&self, why: impl Into<String>) {
        *self.inner.problem.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
    }

    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// `Ok` when ready; otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        let problem = self.inner.problem.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match (self.connected(), problem) {
            (true, None) => Ok(()),
            (_, Some(why)) => Err(why),
            (false, None) => Err("not connected".into()),
        }
    }
}

/// A source is ready while connected and committing; its gauge is
/// `ingestd_source_connected{source}`.
impl model::Component for Health {
    fn readiness(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = model::Readiness> + Send + '_>> {
        let state = self.check().map(|()| None);
        Box::pin(async move { state })
    }

    fn record_gauges(&self, name: &'static str) {
        metrics::gauge!("ingestd_source_connected", "source" => name).set(if self.connected() { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_latest_state() {
        let h = Health::new();
        assert_eq!(h.check(), Err("not connected".into()));
        h.set_ok();
        assert_eq!(h.check(), Ok(()));
        h.clone().set_degraded("storage: down");
        assert_eq!(h.check(), Err("storage: down".into()));
        h.set_disconnected("connection refused");
        assert!(!h.connected());
        assert_eq!(h.check(), Err("connection refused".into()));
    }
}
