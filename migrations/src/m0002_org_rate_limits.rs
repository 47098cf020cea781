// See m0001 for why elided lifetimes are allowed here.
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Per-organization rate-limit policies set at runtime through the admin API
/// (`PUT /admin/v1/orgs/{org}/rate-limit`). Every ingestd process reads the
/// table every 2 s; a row here wins over `[rate_limit.orgs]` in the config.
#[derive(DeriveIden)]
enum OrgRateLimits {
    Table,
    OrganizationId,
    MaxRequests,
    WindowMs,
    BurstSize,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OrgRateLimits::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(OrgRateLimits::OrganizationId).string().not_null().primary_key())
                    .col(ColumnDef::new(OrgRateLimits::MaxRequests).big_integer().not_null())
                    .col(ColumnDef::new(OrgRateLimits::WindowMs).big_integer().not_null())
                    .col(ColumnDef::new(OrgRateLimits::BurstSize).big_integer().not_null())
                    .col(ColumnDef::new(OrgRateLimits::UpdatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(OrgRateLimits::Table).if_exists().to_owned()).await
    }
}
