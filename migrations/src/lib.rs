//! Schema migrations for ingestd, valid on SQLite and PostgreSQL.
//!
//! Column types are chosen for people who query the database directly
//! (SPEC §6): on PostgreSQL `uuid`, `timestamptz` and `jsonb`; on SQLite the
//! same columns have TEXT affinity and hold canonical lower-case UUIDs, RFC 3339
//! UTC timestamps and JSON text. Token counts are 64-bit integers.
//!
//! Migrations are append-only: never edit one that has been released.

pub use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_org_rate_limits;
mod m0003_partitioned_usage_records;
mod m0004_prices;
mod m0005_usage_rollups;
mod m0006_rate_limit_counts;

pub use m0003_partitioned_usage_records::PARTITION_MONTHS_BACK;
pub use m0005_usage_rollups::{fill_rollups_sql, saturating_sum};

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_org_rate_limits::Migration),
            Box::new(m0003_partitioned_usage_records::Migration),
            Box::new(m0004_prices::Migration),
            Box::new(m0005_usage_rollups::Migration),
            Box::new(m0006_rate_limit_counts::Migration),
        ]
    }
}
