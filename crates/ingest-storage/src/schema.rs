//! Table and column names, private to the crate; the DDL is in `migrations/`.

use sea_orm::DeriveIden;

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

impl UsageRecords {
    /// Insert order; values are produced in the same order by `store::row_values`.
    pub(crate) const COLUMNS: [UsageRecords; 20] = [
        UsageRecords::OrganizationId,
        UsageRecords::RequestId,
        UsageRecords::ProjectId,
        UsageRecords::UserId,
        UsageRecords::Provider,
        UsageRecords::ModelName,
        UsageRecords::ModelVersion,
        UsageRecords::ContextWindow,
        UsageRecords::PromptTokens,
        UsageRecords::CompletionTokens,
        UsageRecords::TotalTokens,
        UsageRecords::CachedTokens,
        UsageRecords::ReasoningTokens,
        UsageRecords::LatencyMs,
        UsageRecords::TimeToFirstTokenMs,
        UsageRecords::Tags,
        UsageRecords::Metadata,
        UsageRecords::OccurredAt,
        UsageRecords::ReceivedAt,
        UsageRecords::Source,
    ];
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
