// See m0001 for why elided lifetimes are allowed here.
#![allow(elided_lifetimes_in_paths)]

//! PostgreSQL: `usage_records` partitioned by month of `occurred_at`, and
//! the idempotency key kept exact in a table of its own.
//!
//! A partitioned table's unique keys must include the partition key, so
//! `(organization_id, request_id)` can no longer be the primary key of
//! `usage_records`. It moves to `usage_record_keys` (one narrow row per
//! stored record, unpartitioned), which the writer inserts into in the same
//! statement as the row (`ON CONFLICT DO NOTHING`; only records whose key was
//! new are inserted into `usage_records`). The rows' own primary key becomes
//! `(organization_id, occurred_at, request_id)`, which also serves what the
//! old `(organization_id, occurred_at)` index served.
//!
//! Partitions: one per UTC month, `usage_records_yYYYYmMM`, created by this
//! migration for the months of existing rows, this month and the next, and
//! later by the writer when a record of another month arrives; a month
//! older than [`PARTITION_MONTHS_BACK`] months gets no partition of its own
//! and lands in `usage_records_default` (so a crafted record cannot make a
//! partition per month of history). docs/storage.md, "Partitions and
//! retention".
//!
//! Existing rows are copied into the new tables inside the migration's
//! transaction; the old table is then dropped. CHECK constraints an
//! operator added to the old table are added again after the copy, NOT
//! VALID ones still NOT VALID; indexes, grants, triggers and views an
//! operator added are not carried over (a view on the table makes the
//! migration fail: drop it first).
//!
//! SQLite: nothing changes (no declarative partitioning; retention deletes
//! rows in bounded batches).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Months before the current one that still get a partition of their own;
/// `ingest-storage` applies the same rule when it creates partitions.
pub const PARTITION_MONTHS_BACK: i32 = 36;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let sql = format!(
            r#"
ALTER TABLE usage_records RENAME TO usage_records_unpartitioned;
ALTER TABLE usage_records_unpartitioned RENAME CONSTRAINT usage_records_pkey TO usage_records_unpartitioned_pkey;
ALTER INDEX usage_records_org_occurred_at RENAME TO usage_records_unpartitioned_org_occurred_at;

CREATE TABLE usage_records (LIKE usage_records_unpartitioned INCLUDING DEFAULTS INCLUDING COMMENTS)
    PARTITION BY RANGE (occurred_at);
ALTER TABLE usage_records ADD CONSTRAINT usage_records_pkey PRIMARY KEY (organization_id, occurred_at, request_id);
CREATE TABLE usage_records_default PARTITION OF usage_records DEFAULT;

CREATE TABLE usage_record_keys (
    organization_id varchar NOT NULL,
    request_id uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    CONSTRAINT usage_record_keys_pkey PRIMARY KEY (organization_id, request_id)
);

DO $$
DECLARE
    month timestamp;
BEGIN
    FOR month IN
        SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC') FROM usage_records_unpartitioned
        WHERE occurred_at AT TIME ZONE 'UTC'
            >= date_trunc('month', now() AT TIME ZONE 'UTC') - interval '{back} months'
        UNION SELECT date_trunc('month', now() AT TIME ZONE 'UTC')
        UNION SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month'
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_records FOR VALUES FROM (%L) TO (%L)',
            to_char(month, '"usage_records_y"YYYY"m"MM'),
            to_char(month, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(month + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00'
        );
    END LOOP;
END $$;

INSERT INTO usage_record_keys (organization_id, request_id, occurred_at)
    SELECT organization_id, request_id, occurred_at FROM usage_records_unpartitioned;
INSERT INTO usage_records SELECT * FROM usage_records_unpartitioned;

-- CHECK constraints an operator added, after the copy and as they were
-- (`pg_get_constraintdef` keeps NOT VALID: rows the old table held under a
-- NOT VALID constraint are copied, not refused).
{checks}
DROP TABLE usage_records_unpartitioned;
"#,
            back = PARTITION_MONTHS_BACK,
            checks = copy_checks("usage_records_unpartitioned"),
        );
        manager.get_connection().execute_unprepared(&sql).await.map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let sql = format!(
            r#"
ALTER TABLE usage_records RENAME TO usage_records_partitioned;
ALTER TABLE usage_records_partitioned RENAME CONSTRAINT usage_records_pkey TO usage_records_partitioned_pkey;
CREATE TABLE usage_records (LIKE usage_records_partitioned INCLUDING DEFAULTS INCLUDING COMMENTS);
INSERT INTO usage_records SELECT * FROM usage_records_partitioned;
ALTER TABLE usage_records ADD CONSTRAINT usage_records_pkey PRIMARY KEY (organization_id, request_id);
CREATE INDEX usage_records_org_occurred_at ON usage_records (organization_id, occurred_at);
{checks}
DROP TABLE usage_records_partitioned;
DROP TABLE usage_record_keys;
"#,
            checks = copy_checks("usage_records_partitioned"),
        );
        manager.get_connection().execute_unprepared(&sql).await.map(|_| ())
    }
}

/// A `DO` block adding to `usage_records` the CHECK constraints of `from`,
/// as they are (`pg_get_constraintdef` keeps NOT VALID).
fn copy_checks(from: &str) -> String {
    format!(
        "DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
        WHERE conrelid = '{from}'::regclass AND contype = 'c'
    LOOP
        EXECUTE format('ALTER TABLE usage_records ADD CONSTRAINT %I %s', c.conname, c.def);
    END LOOP;
END $$;"
    )
}
