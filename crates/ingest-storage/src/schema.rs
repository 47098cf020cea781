//! Table and column names, private to the crate; the DDL is in `migrations/`.

use sea_orm::DeriveIden;

/// The column order of every insert is the migration's (m0001); the
/// writer's statements (`sqlite.rs`, `postgres.rs`) name the columns.
#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum UsageRecords {
    Table,
    OrganizationId,
    RequestId,
    ProjectId,
    UserId,
    Provider,
    ModelName,
    ModelVersion,
    PromptTokens,
    CompletionTokens,
    CachedTokens,
    CacheWriteTokens,
    ReasoningTokens,
    OccurredAt,
    CostNanoUsd,
    PriceId,
    Pricing,
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum DeadLetters {
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

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum ApiKeys {
    Table,
    Id,
    Scope,
    OrganizationId,
    Label,
    KeyDigest,
    SigningSecret,
    CreatedAt,
    RevokedAt,
    Permissions,
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum OrgRateLimits {
    Table,
    OrganizationId,
    MaxRequests,
    WindowMs,
    BurstSize,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum RateLimitCounts {
    Table,
    OrganizationId,
    Minute,
    Admitted,
    Refused,
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Prices {
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

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum PriceCatalogs {
    Table,
    Version,
    EffectiveFrom,
    Entries,
    LoadedAt,
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum PriceBook {
    Table,
    Id,
    Generation,
}
