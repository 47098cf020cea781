//! API keys and runtime rate-limit policies: the small tables the admin API
//! and `ingestd keys` manage, and every process reads every few seconds; and
//! the rate-limit decisions per organization and minute every process adds to.

use sea_orm::Value;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Order, Query};
use sea_orm::{ConnectionTrait, TransactionTrait};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::schema::{ApiKeys, OrgRateLimits, RateLimitCounts};
use crate::{Error, Store};

/// An API key as stored: never the key itself, only its SHA-256 digest.
/// `Debug` leaves out the digest and the signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: Uuid,
    /// `org`, `service` or `admin`.
    pub scope: String,
    pub organization_id: Option<String>,
    pub label: Option<String>,
    pub digest: Vec<u8>,
    /// `whsec_…`: kept as is, since verifying an HMAC needs the secret.
    pub signing_secret: Option<String>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    /// `write`, `read` or `read,write` (SPEC §10).
    pub permissions: String,
}

impl std::fmt::Debug for ApiKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRow")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("organization_id", &self.organization_id)
            .field("label", &self.label)
            .field("signed", &self.signing_secret.is_some())
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

/// A rate-limit policy set at runtime for one organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgRateLimit {
    pub organization_id: String,
    pub max_requests: u64,
    pub window_ms: u64,
    pub burst_size: u64,
    pub updated_at: OffsetDateTime,
}

const KEY_COLUMNS: [ApiKeys; 9] = [
    ApiKeys::Id,
    ApiKeys::Scope,
    ApiKeys::OrganizationId,
    ApiKeys::Label,
    ApiKeys::KeyDigest,
    ApiKeys::SigningSecret,
    ApiKeys::CreatedAt,
    ApiKeys::RevokedAt,
    ApiKeys::Permissions,
];

impl Store {
    /// Stores a new key.
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), Error> {
        let mut q = Query::insert();
        q.into_table(ApiKeys::Table).columns(KEY_COLUMNS).values_panic(self.key_values(key));
        self.connection().execute_raw(self.build(&q)).await?;
        Ok(())
    }

    /// Stores `key` only when there is no key at all (revoked ones count);
    /// whether it was stored. For the first start: of several processes
    /// starting together, one creates the key.
    pub async fn insert_first_api_key(&self, key: &ApiKeyRow) -> Result<bool, Error> {
        let mut none = Query::select();
        none.expr(Expr::val(1)).from(ApiKeys::Table);
        let mut select = Query::select();
        for v in self.key_values(key) {
            select.expr(v);
        }
        // `INSERT … SELECT <values> WHERE NOT EXISTS (SELECT 1 FROM api_keys)`
        select.and_where(Expr::exists(none).not());
        let mut q = Query::insert();
        q.into_table(ApiKeys::Table)
            .columns(KEY_COLUMNS)
            .select_from(select)
            .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
        let stmt = self.build(&q);
        // SQLite runs the statement under its one write lock; PostgreSQL's
        // READ COMMITTED would let two transactions both see no key, so they
        // take turns on an advisory lock first.
        let txn = self.connection().begin().await?;
        if self.backend() == crate::Backend::Postgres {
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7283910055)").await?;
        }
        let result = txn.execute_raw(stmt).await?;
        txn.commit().await?;
        Ok(result.rows_affected() == 1)
    }

    /// Every key, oldest first; revoked ones only when asked.
    pub async fn list_api_keys(&self, include_revoked: bool) -> Result<Vec<ApiKeyRow>, Error> {
        let mut q = Query::select();
        q.columns(KEY_COLUMNS)
            .from(ApiKeys::Table)
            .order_by(ApiKeys::CreatedAt, Order::Asc)
            .order_by(ApiKeys::Id, Order::Asc);
        if !include_revoked {
            q.and_where(Expr::col(ApiKeys::RevokedAt).is_null());
        }
        let rows = self.connection().query_all_raw(self.build(&q)).await?;
        rows.iter()
            .map(|row| {
                Ok(ApiKeyRow {
                    id: self.get_uuid(row, 0)?,
                    scope: row.try_get_by_index(1)?,
                    organization_id: row.try_get_by_index(2)?,
                    label: row.try_get_by_index(3)?,
                    digest: row.try_get_by_index(4)?,
                    signing_secret: row.try_get_by_index(5)?,
                    created_at: self
                        .get_time(row, 6)?
                        .ok_or_else(|| Error::from(sea_orm::DbErr::Type("a key without created_at".into())))?,
                    revoked_at: self.get_time(row, 7)?,
                    permissions: row.try_get_by_index(8)?,
                })
            })
            .collect()
    }

    /// Revokes a key; false when there is no such key or it was revoked already.
    pub async fn revoke_api_key(&self, id: Uuid) -> Result<bool, Error> {
        let mut q = Query::update();
        q.table(ApiKeys::Table)
            .value(ApiKeys::RevokedAt, self.timestamp(OffsetDateTime::now_utc()))
            .and_where(Expr::col(ApiKeys::Id).eq(self.uuid(id)))
            .and_where(Expr::col(ApiKeys::RevokedAt).is_null());
        Ok(self.connection().execute_raw(self.build(&q)).await?.rows_affected() > 0)
    }

    fn key_values(&self, key: &ApiKeyRow) -> [sea_orm::sea_query::SimpleExpr; 9] {
        [
            self.uuid(key.id).into(),
            key.scope.clone().into(),
            key.organization_id.clone().into(),
            key.label.clone().into(),
            Value::Bytes(Some(key.digest.clone())).into(),
            key.signing_secret.clone().into(),
            self.timestamp(key.created_at).into(),
            match key.revoked_at {
                Some(t) => self.timestamp(t).into(),
                None => Expr::cust("NULL"),
            },
            key.permissions.clone().into(),
        ]
    }

    /// Sets (or replaces) an organization's runtime policy.
    pub async fn set_org_rate_limit(&self, limit: &OrgRateLimit) -> Result<(), Error> {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut q = Query::insert();
        q.into_table(OrgRateLimits::Table)
            .columns([
                OrgRateLimits::OrganizationId,
                OrgRateLimits::MaxRequests,
                OrgRateLimits::WindowMs,
                OrgRateLimits::BurstSize,
                OrgRateLimits::UpdatedAt,
            ])
            .values_panic([
                limit.organization_id.clone().into(),
                as_i64(limit.max_requests).into(),
                as_i64(limit.window_ms).into(),
                as_i64(limit.burst_size).into(),
                self.timestamp(limit.updated_at).into(),
            ])
            .on_conflict(
                OnConflict::column(OrgRateLimits::OrganizationId)
                    .update_columns([
                        OrgRateLimits::MaxRequests,
                        OrgRateLimits::WindowMs,
                        OrgRateLimits::BurstSize,
                        OrgRateLimits::UpdatedAt,
                    ])
                    .to_owned(),
            );
        self.connection().execute_raw(self.build(&q)).await?;
        Ok(())
    }

    /// Removes an organization's runtime policy; whether there was one.
    pub async fn remove_org_rate_limit(&self, organization_id: &str) -> Result<bool, Error> {
        let mut q = Query::delete();
        q.from_table(OrgRateLimits::Table).and_where(Expr::col(OrgRateLimits::OrganizationId).eq(organization_id));
        Ok(self.connection().execute_raw(self.build(&q)).await?.rows_affected() > 0)
    }

    /// Every runtime policy.
    pub async fn list_org_rate_limits(&self) -> Result<Vec<OrgRateLimit>, Error> {
        let mut q = Query::select();
        q.columns([
            OrgRateLimits::OrganizationId,
            OrgRateLimits::MaxRequests,
            OrgRateLimits::WindowMs,
            OrgRateLimits::BurstSize,
            OrgRateLimits::UpdatedAt,
        ])
        .from(OrgRateLimits::Table)
        .order_by(OrgRateLimits::OrganizationId, Order::Asc);
        let rows = self.connection().query_all_raw(self.build(&q)).await?;
        let as_u64 = |n: i64| u64::try_from(n).unwrap_or(0);
        rows.iter()
            .map(|row| {
                Ok(OrgRateLimit {
                    organization_id: row.try_get_by_index(0)?,
                    max_requests: as_u64(row.try_get_by_index(1)?),
                    window_ms: as_u64(row.try_get_by_index(2)?),
                    burst_size: as_u64(row.try_get_by_index(3)?),
                    updated_at: self
                        .get_time(row, 4)?
                        .ok_or_else(|| Error::from(sea_orm::DbErr::Type("a policy without updated_at".into())))?,
                })
            })
            .collect()
    }

    /// Adds rate-limit decisions (organization, minute, admitted, refused)
    /// to the stored counts, in one statement, and deletes the rows of
    /// minutes before `keep_from`.
    pub async fn add_rate_limit_counts(&self, rows: &[(&str, i64, u64, u64)], keep_from: i64) -> Result<(), Error> {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        // In key order, whoever calls: processes adding to the same rows
        // lock them in the same order, so PostgreSQL sees no deadlock.
        let mut rows = rows.to_vec();
        rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let tx = self.connection().begin().await?;
        // Bounded statements: at most 4 × 1000 parameters each.
        for chunk in rows.chunks(1000) {
            let mut q = Query::insert();
            q.into_table(RateLimitCounts::Table).columns([
                RateLimitCounts::OrganizationId,
                RateLimitCounts::Minute,
                RateLimitCounts::Admitted,
                RateLimitCounts::Refused,
            ]);
            for &(org, minute, admitted, refused) in chunk {
                q.values_panic([org.into(), minute.into(), as_i64(admitted).into(), as_i64(refused).into()]);
            }
            // Saturating, as the rollups' upsert: a count never makes the flush fail.
            let added = |column: &str| {
                Expr::cust(format!(
                    "CASE WHEN rate_limit_counts.{column} > 9223372036854775807 - excluded.{column} \
                     THEN 9223372036854775807 ELSE rate_limit_counts.{column} + excluded.{column} END"
                ))
            };
            q.on_conflict(
                OnConflict::columns([RateLimitCounts::OrganizationId, RateLimitCounts::Minute])
                    .value(RateLimitCounts::Admitted, added("admitted"))
                    .value(RateLimitCounts::Refused, added("refused"))
                    .to_owned(),
            );
            tx.execute_raw(self.build(&q)).await?;
        }
        let mut prune = Query::delete();
        prune.from_table(RateLimitCounts::Table).and_where(Expr::col(RateLimitCounts::Minute).lt(keep_from));
        tx.execute_raw(self.build(&prune)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An organization's stored decisions from minute `from` on: (admitted, refused).
    pub async fn rate_limit_counts(&self, organization_id: &str, from: i64) -> Result<(u64, u64), Error> {
        let mut q = Query::select();
        let sum = |column: &str| Expr::cust(migration::saturating_sum(self.db_backend(), column));
        q.expr(sum("admitted"))
            .expr(sum("refused"))
            .from(RateLimitCounts::Table)
            .and_where(Expr::col(RateLimitCounts::OrganizationId).eq(organization_id))
            .and_where(Expr::col(RateLimitCounts::Minute).gte(from));
        let row = self.connection().query_one_raw(self.build(&q)).await?;
        let sum = |i: usize| -> Result<u64, Error> {
            let n: i64 = match &row {
                Some(row) => row.try_get_by_index(i)?,
                None => 0,
            };
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok((sum(0)?, sum(1)?))
    }
}
