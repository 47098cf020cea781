//! What the handlers share: [`AppState`], built by the service and read by
//! `routes` and `server` (neither imports the other's state).

use std::sync::Arc;

use auth::KeyRing;
use model::{Component, Ingestor};
use ratelimit::{DecisionTally, Limiter};

use crate::HttpConfig;
use crate::admin::Admin;

/// What the handlers share.
pub struct AppState<S> {
    pub ingestor: Ingestor<S>,
    pub config: HttpConfig,
    /// What `/health/ready` asks, by name; each also sets its gauges
    /// before `/metrics` renders.
    pub components: Vec<(&'static str, Arc<dyn Component>)>,
    /// Renders `/metrics` (the exporter's text).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    pub version: &'static str,
    /// Checks each ingestion request's organization (SPEC §4); `None`: no
    /// limiting and no rate-limit headers.
    pub limiter: Option<Arc<Limiter>>,
    /// Counts the limiter's decisions by organization, for the service to
    /// store; `None`: not counted.
    pub decisions: Option<Arc<DecisionTally>>,
    /// The keys accepted (SPEC §3); `None` with `auth.mode = "none"`:
    /// nothing is checked and records of any organization are taken.
    pub keys: Option<Arc<KeyRing>>,
    /// Serves `/admin/v1/…`; `None`: those routes are 404.
    pub admin: Option<Arc<dyn Admin>>,
    /// Serves the read endpoints (`/v1/usage/records|summary|export`);
    /// `None`: they answer 404.
    pub reader: Option<Arc<dyn model::UsageReader>>,
    /// Called with each request's headers and its `request` span, before
    /// anything runs in it: the service sets the span's parent from a W3C
    /// `traceparent` there, so a caller's trace continues through ingestd
    /// (this crate knows no tracing backend).
    pub continue_trace: Option<fn(&http::HeaderMap, &tracing::Span)>,
}
