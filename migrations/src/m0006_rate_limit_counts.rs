// See m0001 for why elided lifetimes are allowed here.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Rate-limit decisions per organization and minute, from every ingestd
/// process: each adds what it decided every few seconds (an upsert that
/// adds), `GET /admin/v1/orgs/{org}/rate-limit` sums the last hour and day,
/// and rows older than two days are deleted as new ones arrive.
#[derive(DeriveIden)]
enum RateLimitCounts {
    Table,
    OrganizationId,
    /// Minutes since the Unix epoch (UTC): `unix seconds / 60`.
    Minute,
    Admitted,
    Refused,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RateLimitCounts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(RateLimitCounts::OrganizationId).string().not_null())
                    .col(ColumnDef::new(RateLimitCounts::Minute).big_integer().not_null())
                    .col(ColumnDef::new(RateLimitCounts::Admitted).big_integer().not_null())
                    .col(ColumnDef::new(RateLimitCounts::Refused).big_integer().not_null())
                    .primary_key(Index::create().col(RateLimitCounts::OrganizationId).col(RateLimitCounts::Minute))
                    .to_owned(),
            )
            .await?;
        // The prune deletes by minute alone.
        manager
            .create_index(
                Index::create()
                    .name("rate_limit_counts_minute")
                    .table(RateLimitCounts::Table)
                    .col(RateLimitCounts::Minute)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RateLimitCounts::Table).if_exists().to_owned()).await
    }
}
