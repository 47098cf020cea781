// See m0001 for why elided lifetimes are allowed here.
#![allow(elided_lifetimes_in_paths)]

//! Reading usage back (SPEC §10; docs/api.md, "Reading usage").
//!
//! - `usage_rollups`: per organization, UTC hour (`hour_start`, Unix
//!   seconds), provider, model, project and user (`''` when the record has
//!   none), the sums of requests, tokens by kind and cost (nano-USD, priced
//!   rows only) and the count of unpriced requests. The writer keeps it in
//!   step in the same transaction as the rows; sums saturate at 2^63 − 1
//!   instead of failing a commit. Filled here from the rows already stored.
//! - `api_keys.permissions`: `write`, `read` or `read,write` (existing keys
//!   keep `write`).
//! - SQLite only: `occurred_at` is rewritten with a fixed nine-digit
//!   fraction (`2026-01-02T03:04:05.000000000Z`), so that the text order of
//!   the column is the order of the times (`…05.5Z` sorted before `…05Z`),
//!   and the `(organization_id, occurred_at)` index gains `request_id`, the
//!   order of `GET /v1/usage/records`. (On PostgreSQL the primary key
//!   already is that index.)

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const CREATE_ROLLUPS: &str = "CREATE TABLE usage_rollups ( \
    organization_id TEXT NOT NULL, \
    hour_start BIGINT NOT NULL, \
    provider TEXT NOT NULL, \
    model_name TEXT NOT NULL, \
    project_id TEXT NOT NULL, \
    user_id TEXT NOT NULL, \
    requests BIGINT NOT NULL, \
    prompt_tokens BIGINT NOT NULL, \
    completion_tokens BIGINT NOT NULL, \
    total_tokens BIGINT NOT NULL, \
    cached_tokens BIGINT NOT NULL, \
    cache_write_tokens BIGINT NOT NULL, \
    reasoning_tokens BIGINT NOT NULL, \
    cost_nano_usd BIGINT NOT NULL, \
    unpriced_requests BIGINT NOT NULL, \
    PRIMARY KEY (organization_id, hour_start, provider, model_name, project_id, user_id))";

/// `sum(column)` saturated at 2^63 − 1 instead of failing: on PostgreSQL
/// the sum of `int8` is a `numeric`; SQLite's `sum()` fails on overflow, so
/// the high and low 32 bits are summed apart (neither can overflow below
/// 2^31 rows) and joined, where an overflow makes a float that `min` caps.
pub fn saturating_sum(backend: DbBackend, column: &str) -> String {
    let max = "9223372036854775807";
    match backend {
        DbBackend::Postgres => format!("LEAST(COALESCE(sum({column}), 0), {max})::int8"),
        _ => format!(
            "CAST(min(COALESCE(sum({column} >> 32), 0) * 4294967296 + COALESCE(sum({column} & 4294967295), 0), \
             {max}) AS INTEGER)"
        ),
    }
}

/// The rollups of the rows `filter` (a `WHERE …` clause, or empty) selects.
pub fn fill_rollups_sql(backend: DbBackend, filter: &str) -> String {
    let hour = match backend {
        DbBackend::Postgres => "(floor(extract(epoch from occurred_at) / 3600) * 3600)::int8".to_owned(),
        _ => "CAST(strftime('%s', substr(occurred_at, 1, 13) || ':00:00') AS INTEGER)".to_owned(),
    };
    let sum = |c: &str| saturating_sum(backend, c);
    format!(
        "INSERT INTO usage_rollups (organization_id, hour_start, provider, model_name, project_id, user_id, \
         requests, prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_write_tokens, \
         reasoning_tokens, cost_nano_usd, unpriced_requests) \
         SELECT organization_id, {hour}, provider, model_name, COALESCE(project_id, ''), COALESCE(user_id, ''), \
         count(*), {}, {}, {}, {}, {}, {}, {}, sum(CASE WHEN cost_nano_usd IS NULL THEN 1 ELSE 0 END) \
         FROM usage_records {filter} GROUP BY 1, 2, 3, 4, 5, 6",
        sum("prompt_tokens"),
        sum("completion_tokens"),
        sum("total_tokens"),
        sum("cached_tokens"),
        sum("cache_write_tokens"),
        sum("reasoning_tokens"),
        sum("cost_nano_usd"),
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        let mut statements = vec![
            CREATE_ROLLUPS.to_owned(),
            "ALTER TABLE api_keys ADD COLUMN permissions TEXT NOT NULL DEFAULT 'write'".to_owned(),
        ];
        if backend == DbBackend::Sqlite {
            // `YYYY-MM-DDTHH:MM:SS[.f…]Z` → `YYYY-MM-DDTHH:MM:SS.fffffffffZ`.
            statements.push(
                "UPDATE usage_records SET occurred_at = substr(occurred_at, 1, 19) || '.' || \
                 substr(CASE WHEN instr(occurred_at, '.') > 0 \
                        THEN substr(occurred_at, 21, length(occurred_at) - 21) ELSE '' END || '000000000', 1, 9) \
                 || 'Z' WHERE length(occurred_at) <> 30"
                    .to_owned(),
            );
            statements.push("DROP INDEX IF EXISTS usage_records_org_occurred_at".to_owned());
            statements.push(
                "CREATE INDEX usage_records_org_occurred_at_request_id \
                 ON usage_records (organization_id, occurred_at, request_id)"
                    .to_owned(),
            );
        }
        statements.push(fill_rollups_sql(backend, ""));
        for sql in statements {
            db.execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP TABLE IF EXISTS usage_rollups").await?;
        manager
            .alter_table(Table::alter().table(Alias::new("api_keys")).drop_column(Alias::new("permissions")).to_owned())
            .await?;
        if manager.get_database_backend() == DbBackend::Sqlite {
            db.execute_unprepared("DROP INDEX IF EXISTS usage_records_org_occurred_at_request_id").await?;
            db.execute_unprepared(
                "CREATE INDEX IF NOT EXISTS usage_records_org_occurred_at ON usage_records (organization_id, occurred_at)",
            )
            .await?;
        }
        Ok(())
    }
}
