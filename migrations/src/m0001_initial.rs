// The trait is declared with elided lifetimes (`&SchemaManager`) under async_trait;
// spelling them out makes the signatures differ from the trait's (E0195).
#![allow(elided_lifetimes_in_paths)]

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageRecords {
    Table,
    OrganizationId,
    RequestId,
    ProjectId,
    UserId,
    Provider,
    ModelName,
    ModelVersion,
    ContextWindow,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    CachedTokens,
    ReasoningTokens,
    LatencyMs,
    TimeToFirstTokenMs,
    Tags,
    Metadata,
    OccurredAt,
    ReceivedAt,
    Source,
}

#[derive(DeriveIden)]
enum DeadLetters {
    Table,
    Id,
    Source,
    MessageKey,
    Payload,
    Error,
    FirstSeenAt,
    LastSeenAt,
    DeliveryCount,
    ReplayedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    Scope,
    OrganizationId,
    Label,
    KeyDigest,
    SigningSecret,
    CreatedAt,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UsageRecords::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(UsageRecords::OrganizationId).string().not_null())
                    .col(ColumnDef::new(UsageRecords::RequestId).uuid().not_null())
                    .col(ColumnDef::new(UsageRecords::ProjectId).string())
                    .col(ColumnDef::new(UsageRecords::UserId).string())
                    .col(ColumnDef::new(UsageRecords::Provider).string().not_null())
                    .col(ColumnDef::new(UsageRecords::ModelName).string().not_null())
                    .col(ColumnDef::new(UsageRecords::ModelVersion).string())
                    .col(ColumnDef::new(UsageRecords::ContextWindow).big_integer())
                    .col(ColumnDef::new(UsageRecords::PromptTokens).big_integer().not_null())
                    .col(ColumnDef::new(UsageRecords::CompletionTokens).big_integer().not_null())
                    .col(ColumnDef::new(UsageRecords::TotalTokens).big_integer().not_null())
                    .col(ColumnDef::new(UsageRecords::CachedTokens).big_integer())
                    .col(ColumnDef::new(UsageRecords::ReasoningTokens).big_integer())
                    .col(ColumnDef::new(UsageRecords::LatencyMs).double())
                    .col(ColumnDef::new(UsageRecords::TimeToFirstTokenMs).double())
                    .col(ColumnDef::new(UsageRecords::Tags).json_binary().not_null())
                    .col(ColumnDef::new(UsageRecords::Metadata).json_binary())
                    .col(ColumnDef::new(UsageRecords::OccurredAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(UsageRecords::ReceivedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(UsageRecords::Source).string_len(16).not_null())
                    // The idempotency key: one row per (organization, request).
                    .primary_key(Index::create().col(UsageRecords::OrganizationId).col(UsageRecords::RequestId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("usage_records_org_occurred_at")
                    .table(UsageRecords::Table)
                    .if_not_exists()
                    .col(UsageRecords::OrganizationId)
                    .col(UsageRecords::OccurredAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(DeadLetters::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(DeadLetters::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(DeadLetters::Source).string_len(16).not_null())
                    // Identity of the message at its source (NATS: stream/sequence;
                    // Redis: key/entry id), so a redelivered poison message is one row.
                    .col(ColumnDef::new(DeadLetters::MessageKey).string().not_null())
                    .col(ColumnDef::new(DeadLetters::Payload).blob().not_null())
                    .col(ColumnDef::new(DeadLetters::Error).text().not_null())
                    .col(ColumnDef::new(DeadLetters::FirstSeenAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(DeadLetters::LastSeenAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(DeadLetters::DeliveryCount).big_integer().not_null())
                    .col(ColumnDef::new(DeadLetters::ReplayedAt).timestamp_with_time_zone())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("dead_letters_source_message_key")
                    .table(DeadLetters::Table)
                    .if_not_exists()
                    .unique()
                    .col(DeadLetters::Source)
                    .col(DeadLetters::MessageKey)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ApiKeys::Id).uuid().not_null().primary_key())
                    // "org", "service" or "admin"
                    .col(ColumnDef::new(ApiKeys::Scope).string_len(16).not_null())
                    .col(ColumnDef::new(ApiKeys::OrganizationId).string())
                    .col(ColumnDef::new(ApiKeys::Label).string())
                    // SHA-256 of the key; the key itself is never stored.
                    .col(ColumnDef::new(ApiKeys::KeyDigest).blob().not_null().unique_key())
                    .col(ColumnDef::new(ApiKeys::SigningSecret).string())
                    .col(ColumnDef::new(ApiKeys::CreatedAt).timestamp_with_time_zone().not_null())
                    .col(ColumnDef::new(ApiKeys::RevokedAt).timestamp_with_time_zone())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [ApiKeys::Table.into_iden(), DeadLetters::Table.into_iden(), UsageRecords::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
