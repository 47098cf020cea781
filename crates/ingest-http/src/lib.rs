//! The HTTP edge of ingestd: a hyper 1 server with a tower stack, no web
//! framework.
//!
//! Routes (SPEC §2, §10, §11): `GET /health`, `GET /health/ready`, `POST /v1/usage`,
//! `POST /v1/usage/batch`, `POST /v1/traces` (OTLP/HTTP, `otlp.rs`),
//! `GET /v1/usage/records|summary|export` (`read.rs`),
//! `GET /metrics`, `GET /openapi.json`, `/admin/v1/…` (`admin.rs`).
//!
//! The stack, outermost first: request id (`x-request-id`, generated when
//! absent, echoed) → tracing span → CORS → API key ([`key_layer`]) →
//! rate limit per organization ([`limit_layer`], before the body is read) → load
//! shedding over a concurrency limit → the router, where each handler runs
//! under the request timeout. Bodies are read with a byte limit and
//! decompressed (gzip, brotli, zstd) with the same limit on the *decompressed* size,
//! so neither a large body nor a compression bomb can make memory follow it.
//!
//! Every failure a client can cause maps to a 4xx with a specific message in
//! one place ([`error::ApiError`]); storage trouble maps to 503 with
//! `Retry-After`. This crate stores nothing itself: it calls
//! [`model::Ingestor`], generic over [`model::RecordSink`].

pub mod admin;
pub mod body;
mod config;
mod error;
pub mod key_layer;
pub mod limit_layer;
mod otlp;
mod read;
mod routes;
mod server;
mod state;

pub use admin::{Admin, AdminError, CreatedKey, KeyList, KeyView, NewKey, PolicySource, RateLimitView};
pub use body::Body;
pub use config::HttpConfig;
pub use error::ApiError;
pub use key_layer::AuthLayer;
pub use limit_layer::LimiterHealth;
pub use limit_layer::{Organization, RateLimitLayer};
pub use server::serve;
pub use state::AppState;

/// The API description served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");
