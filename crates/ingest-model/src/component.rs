use std::future::Future;
use std::pin::Pin;

/// What a [`Component`] says about itself: `Ok` when usable, with a note on
/// its state when there is one to tell (e.g. "deciding locally"); `Err`
/// says why it is not.
pub type Readiness = Result<Option<String>, String>;

/// A part of the running service that reports its own health: the database,
/// the writer, each stream source, the rate limiter. The service lists its
/// components by name; `GET /health/ready` asks each for its
/// [`readiness`](Self::readiness) (ready when all are), and `/metrics` lets
/// each [`record_gauges`](Self::record_gauges) before it renders.
pub trait Component: Send + Sync + 'static {
    fn readiness(&self) -> Pin<Box<dyn Future<Output = Readiness> + Send + '_>>;

    /// Sets the component's gauges (through the `metrics` facade); `name`
    /// is the one it is listed under. Most components have none.
    fn record_gauges(&self, name: &'static str) {
        let _ = name;
    }
}
