// See m0001 for why elided lifetimes are allowed here.
#![allow(elided_lifetimes_in_paths)]

//! Cost per record (SPEC §9; docs/pricing.md).
//!
//! - `usage_records` gains `cache_write_tokens` (SPEC §1), `cost_nano_usd`
//!   (integer nano-USD, null when unpriced), `price_id` (the `prices` row
//!   used) and `pricing` (`priced` / `unpriced`; existing rows are
//!   `unpriced` until `ingestd prices rerate`). On PostgreSQL the columns
//!   reach every partition.
//! - `prices`: effective-dated prices, one row per (catalog key or
//!   organization price) and period. Catalog rows have `organization_id`
//!   null, the catalog `version`, the catalog key as `model` and LiteLLM's
//!   `litellm_provider` as `provider`; an organization's rows have its id,
//!   the record provider and the exact `model.name`. `rates` is JSON with
//!   decimal strings (never numbers). A row is in force from
//!   `effective_from` (inclusive) to `effective_to` (exclusive; null = open).
//! - `price_catalogs`: the catalog versions loaded (`litellm-1.110.2` on
//!   first start).
//! - `price_book`: one row whose `generation` every change to `prices`
//!   increments in the same transaction; processes reload their in-memory
//!   prices when it moves.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageRecords {
    Table,
    CacheWriteTokens,
    CostNanoUsd,
    PriceId,
    Pricing,
}

#[derive(DeriveIden)]
enum Prices {
    Table,
    Id,
    OrganizationId,
    Version,
    Provider,
    Model,
    EffectiveFrom,
    EffectiveTo,
    Rates,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PriceCatalogs {
    Table,
    Version,
    EffectiveFrom,
    Entries,
    LoadedAt,
}

#[derive(DeriveIden)]
enum PriceBook {
    Table,
    Id,
    Generation,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on SQLite too (sea-orm-migration's default there is
    /// none): a crash or a second process cannot leave it half applied.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in [
            ColumnDef::new(UsageRecords::CacheWriteTokens).big_integer().null().to_owned(),
            ColumnDef::new(UsageRecords::CostNanoUsd).big_integer().null().to_owned(),
            ColumnDef::new(UsageRecords::PriceId).big_integer().null().to_owned(),
            ColumnDef::new(UsageRecords::Pricing).string().not_null().default("unpriced").to_owned(),
        ] {
            let mut column = column;
            manager.alter_table(Table::alter().table(UsageRecords::Table).add_column(&mut column).to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(Prices::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Prices::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Prices::OrganizationId).string().null())
                    .col(ColumnDef::new(Prices::Version).string().null())
                    .col(ColumnDef::new(Prices::Provider).string().not_null())
                    .col(ColumnDef::new(Prices::Model).string().not_null())
                    .col(ColumnDef::new(Prices::EffectiveFrom).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(Prices::EffectiveTo).timestamp_with_time_zone().null())
                    .col(ColumnDef::new(Prices::Rates).text().not_null())
                    .col(ColumnDef::new(Prices::CreatedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("prices_by_model")
                    .table(Prices::Table)
                    .col(Prices::Model)
                    .col(Prices::OrganizationId)
                    .col(Prices::EffectiveFrom)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PriceCatalogs::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(PriceCatalogs::Version).string().not_null().primary_key())
                    .col(ColumnDef::new(PriceCatalogs::EffectiveFrom).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(PriceCatalogs::Entries).big_integer().not_null())
                    .col(ColumnDef::new(PriceCatalogs::LoadedAt).timestamp_with_time_zone().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PriceBook::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(PriceBook::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(PriceBook::Generation).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(PriceBook::Table)
                    .columns([PriceBook::Id, PriceBook::Generation])
                    .values_panic([1.into(), 0.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [PriceBook::Table.into_iden(), PriceCatalogs::Table.into_iden(), Prices::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        for column in [
            UsageRecords::Pricing.into_iden(),
            UsageRecords::PriceId.into_iden(),
            UsageRecords::CostNanoUsd.into_iden(),
            UsageRecords::CacheWriteTokens.into_iden(),
        ] {
            manager.alter_table(Table::alter().table(UsageRecords::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
