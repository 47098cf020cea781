//! Durable storage for usage records: SQLite (embedded default) or
//! PostgreSQL, over SeaORM.
//!
//! - [`Store`]: the connection, migrations, idempotent bulk inserts, dead
//!   letters. Table definitions stay private to this crate. The writer's
//!   SQLite inserts use the SQLite C API directly (`sqlite.rs` says why).
//! - [`Writer`]: the group-commit writer. Every adapter submits through a
//!   [`WriterHandle`] (which implements [`model::RecordSink`]); concurrent
//!   submissions are committed together in one transaction and each caller is
//!   answered only after that commit.
//!
//! This crate knows nothing of HTTP or streams.

mod admin;
mod config;
mod error;
mod postgres;
mod prices;
mod read;
mod rerate;
mod retention;
mod rollups;
mod schema;
mod sqlite;
mod store;
mod writer;

pub use admin::{ApiKeyRow, OrgRateLimit};
pub use config::{DatabaseConfig, SqliteSynchronous, WriterConfig};
pub use error::Error;
pub use prices::{CatalogVersion, ImportReport, PriceBook, Priced, StoredPrice};
pub use rerate::RerateReport;
pub use retention::{DroppedPartition, RetentionReport};
pub use rollups::RebuildReport;
pub use store::{Backend, DeadLetterFilter, Store, StoredDeadLetter};
pub use writer::{Writer, WriterHandle};
