//! API keys and runtime rate-limit policies: what `ingestd keys …` and the
//! admin API do, and how every process keeps up with the database.
//!
//! Every [`REFRESH`] each process re-reads the active keys and the runtime
//! policies, and adds the rate-limit decisions it made to the stored counts
//! (so the admin API shows every process's), so a key revoked anywhere stops working everywhere within
//! 2 s (+ one query), inside the 5 s SPEC allows; the process that revokes
//! or sets applies it at once. While the database cannot be read the last
//! keys read stay in force (and ingestion, needing the database, fails anyway).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use auth::{KeyRing, Permissions, Principal, Scope, SigningSecret};
use ingest_http::admin::{AdminError, AdminFuture};
use ingest_http::admin::{DecisionCounts, Decisions, NewOrgPrice, OrgPriceView, PolicySource, RateLimitView};
use ingest_http::{Admin, CreatedKey, KeyView, NewKey};
use ratelimit::{DecisionTally, Policy, PolicyRegistry};
use storage::{ApiKeyRow, OrgRateLimit, Store};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// How often each process re-reads keys and runtime policies.
pub const REFRESH: Duration = Duration::from_secs(2);

/// A key just created: the only time its secret exists outside the caller.
/// `Debug` shows neither secret.
pub struct NewApiKey {
    pub row: ApiKeyRow,
    pub key: String,
    pub signing_secret: Option<SigningSecret>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey").field("row", &self.row).finish_non_exhaustive()
    }
}

/// Creates, lists and revokes keys; keeps a [`KeyRing`] in step.
///
/// A change made here and a refresh never interleave (`lock`): otherwise a
/// refresh that read the table just before a revocation could put the key
/// back for one interval.
#[derive(Clone, Debug)]
pub struct Keys {
    store: Store,
    ring: Arc<KeyRing>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Keys {
    pub fn new(store: Store, ring: Arc<KeyRing>) -> Keys {
        Keys { store, ring, lock: Arc::default() }
    }

    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// Creates a key. An `org` key needs `organization`; the others must not have one.
    pub async fn create(
        &self,
        scope: Scope,
        organization: Option<String>,
        label: Option<String>,
        signing_secret: bool,
        permissions: Permissions,
    ) -> Result<NewApiKey> {
        let new = new_key(scope, organization, label, signing_secret, permissions)?;
        let _changing = self.lock.lock().await;
        self.store.insert_api_key(&new.row).await.context("storing the key")?;
        if let Some(principal) = principal(&new.row) {
            self.ring.insert(digest_of(&new.row), principal);
        }
        Ok(new)
    }

    /// On a database without any key (revoked ones count): creates a service
    /// key and returns it, to be shown once. Of several processes starting
    /// together one creates it.
    pub async fn bootstrap(&self) -> Result<Option<NewApiKey>> {
        let new = new_key(Scope::Service, None, Some("created at first start".to_owned()), false, Permissions::WRITE)?;
        let _changing = self.lock.lock().await;
        if !self.store.insert_first_api_key(&new.row).await.context("creating the first key")? {
            return Ok(None);
        }
        if let Some(principal) = principal(&new.row) {
            self.ring.insert(digest_of(&new.row), principal);
        }
        Ok(Some(new))
    }

    pub async fn list(&self, include_revoked: bool) -> Result<Vec<ApiKeyRow>> {
        Ok(self.store.list_api_keys(include_revoked).await?)
    }

    /// Whether an active key was revoked.
    pub async fn revoke(&self, id: Uuid) -> Result<bool> {
        let _changing = self.lock.lock().await;
        let revoked = self.store.revoke_api_key(id).await?;
        self.ring.remove(id);
        Ok(revoked)
    }

    /// Re-reads the active keys into the ring; how many there are.
    pub async fn refresh(&self) -> Result<usize> {
        let _reading = self.lock.lock().await;
        let rows = self.store.list_api_keys(false).await?;
        let keys: Vec<_> = rows.iter().filter_map(|row| Some((digest_of(row), principal(row)?))).collect();
        let n = keys.len();
        self.ring.replace(keys);
        Ok(n)
    }
}

fn new_key(
    scope: Scope,
    organization: Option<String>,
    label: Option<String>,
    signed: bool,
    permissions: Permissions,
) -> Result<NewApiKey> {
    match (scope, &organization) {
        (Scope::Org, None) => bail!("an org key needs an organization (organization_id; --org on the command line)"),
        (Scope::Org, Some(org)) => {
            if let Err(rule) = model::validate::check_organization_id(org) {
                bail!("the organization {rule}");
            }
        }
        (_, Some(_)) => bail!("a {scope} key is not bound to an organization; leave the organization out"),
        (_, None) => {}
    }
    if let Some(Err(rule)) = label.as_deref().map(model::validate::check_label) {
        bail!("the label {rule}");
    }
    let key = auth::key::generate();
    let signing_secret = signed.then(SigningSecret::generate);
    let row = ApiKeyRow {
        id: Uuid::now_v7(),
        scope: scope.as_str().to_owned(),
        organization_id: organization,
        label,
        digest: auth::key::digest(&key).to_vec(),
        signing_secret: signing_secret.as_ref().map(|s| s.expose().to_owned()),
        created_at: OffsetDateTime::now_utc(),
        revoked_at: None,
        permissions: permissions.as_str().to_owned(),
    };
    Ok(NewApiKey { row, key, signing_secret })
}

fn digest_of(row: &ApiKeyRow) -> auth::Digest {
    let mut digest = [0u8; 32];
    if row.digest.len() == 32 {
        digest.copy_from_slice(&row.digest);
    }
    digest
}

/// The principal of a stored key; `None` (and an error logged) for a row
/// that does not make sense, which then authenticates nothing.
fn principal(row: &ApiKeyRow) -> Option<Principal> {
    let broken = |why: &str| {
        tracing::error!(key_id = %row.id, why, "ignoring a malformed api_keys row");
        None
    };
    let Some(scope) = Scope::parse(&row.scope) else { return broken("unknown scope") };
    if row.digest.len() != 32 {
        return broken("digest is not 32 bytes");
    }
    if scope == Scope::Org && row.organization_id.is_none() {
        return broken("org key without an organization");
    }
    let signing_secret = match &row.signing_secret {
        None => None,
        Some(text) => match SigningSecret::parse(text) {
            Ok(secret) => Some(secret),
            Err(_) => return broken("malformed signing secret"),
        },
    };
    let Some(permissions) = Permissions::parse(&row.permissions) else { return broken("unknown permissions") };
    Some(Principal { key_id: row.id, scope, permissions, organization: row.organization_id.clone(), signing_secret })
}

/// Runtime per-organization policies (admin API), over the configured ones.
/// Changes and refreshes never interleave, as for [`Keys`].
#[derive(Clone, Debug)]
pub struct RateLimits {
    lock: Arc<tokio::sync::Mutex<()>>,
    store: Store,
    /// The limiter's registry; `None` when rate limiting is disabled (the
    /// policies are still stored, for when it is enabled).
    registry: Option<Arc<PolicyRegistry>>,
    configured: BTreeMap<String, Policy>,
    /// This process's decisions not yet added to the stored counts.
    decisions: Arc<DecisionTally>,
    /// Held from draining `decisions` until their commit, so that a flush
    /// finds the counts of one under way stored, not missing.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

/// How long the stored decision counts are kept, in minutes: the day the
/// admin API shows and a day more.
const KEEP_DECISIONS_MINUTES: i64 = 2 * 24 * 60;

impl RateLimits {
    pub fn new(store: Store, registry: Option<Arc<PolicyRegistry>>, configured: BTreeMap<String, Policy>) -> Self {
        RateLimits {
            lock: Arc::default(),
            store,
            registry,
            configured,
            decisions: Arc::default(),
            flushing: Arc::default(),
        }
    }

    /// Re-reads the runtime policies and applies them (a runtime policy wins
    /// over a configured one; removing it restores the configured one).
    pub async fn refresh(&self) -> Result<()> {
        let Some(registry) = &self.registry else { return Ok(()) };
        let _reading = self.lock.lock().await;
        let mut wanted = self.configured.clone();
        for row in self.store.list_org_rate_limits().await? {
            match policy_of(&row) {
                Ok(policy) => {
                    wanted.insert(row.organization_id, policy);
                }
                Err(e) => tracing::error!(organization = row.organization_id, error = %e, "ignoring a stored policy"),
            }
        }
        for (org, _) in registry.overrides() {
            if !wanted.contains_key(&org) {
                registry.remove_override(&org);
            }
        }
        for (org, policy) in wanted {
            if registry.override_for(&org) != Some(policy) {
                registry.set_override(&org, policy);
            }
        }
        Ok(())
    }

    /// Sets an organization's runtime policy.
    pub async fn set(&self, org: &str, policy: Policy) -> Result<()> {
        let row = OrgRateLimit {
            organization_id: org.to_owned(),
            max_requests: policy.max_requests(),
            window_ms: u64::try_from(policy.window().as_millis()).unwrap_or(u64::MAX),
            burst_size: policy.burst_size(),
            updated_at: OffsetDateTime::now_utc(),
        };
        let _changing = self.lock.lock().await;
        self.store.set_org_rate_limit(&row).await?;
        if let Some(registry) = &self.registry {
            registry.set_override(org, policy);
        }
        Ok(())
    }

    /// Removes an organization's runtime policy; whether there was one.
    pub async fn remove(&self, org: &str) -> Result<bool> {
        let _changing = self.lock.lock().await;
        let removed = self.store.remove_org_rate_limit(org).await?;
        if let Some(registry) = &self.registry {
            match self.configured.get(org) {
                Some(policy) => {
                    registry.set_override(org, *policy);
                }
                None => {
                    registry.remove_override(org);
                }
            }
        }
        Ok(removed)
    }

    /// Where the limiter counts its decisions, for [`flush`](Self::flush).
    pub fn decisions(&self) -> Arc<DecisionTally> {
        self.decisions.clone()
    }

    /// Adds this process's decisions since the last flush to the stored
    /// counts (and deletes counts older than two days). On failure, or when
    /// the flush is dropped before its commit, the counts stay here for the
    /// next flush.
    pub async fn flush(&self) -> Result<()> {
        let _flushing = self.flushing.lock().await;
        let drained = self.decisions.drain();
        if drained.overflowed > 0 {
            tracing::warn!(
                decisions = drained.overflowed,
                cells = ratelimit::MAX_CELLS,
                "rate-limit decisions not counted: too many organizations between two flushes"
            );
        }
        if drained.rows.is_empty() {
            return Ok(());
        }
        let taken = Taken { tally: &self.decisions, rows: Some(drained.rows) };
        let rows = taken.rows.as_deref().unwrap_or_default();
        let rows: Vec<_> = rows.iter().map(|r| (r.key.as_str(), r.minute, r.admitted, r.refused)).collect();
        let keep_from = unix_minute() - KEEP_DECISIONS_MINUTES;
        self.store.add_rate_limit_counts(&rows, keep_from).await.context("storing rate-limit decision counts")?;
        taken.stored();
        Ok(())
    }

    /// `org`'s decisions over the last hour and day, this process's
    /// unstored ones included when they can be stored.
    async fn decision_counts(&self, org: &str) -> Result<DecisionCounts> {
        if let Err(e) = self.flush().await {
            tracing::warn!(error = format!("{e:#}"), "answering with the stored rate-limit counts only");
        }
        let now = unix_minute();
        let counts = |(admitted, refused)| Decisions { admitted, refused };
        Ok(DecisionCounts {
            last_hour: counts(self.store.rate_limit_counts(org, now - 59).await?),
            last_day: counts(self.store.rate_limit_counts(org, now - (24 * 60 - 1)).await?),
        })
    }

    /// The policy in force for `org`, where it comes from, and its recent decisions.
    pub async fn view(&self, org: &str) -> Result<RateLimitView> {
        let runtime = self.store.list_org_rate_limits().await?.into_iter().find(|r| r.organization_id == org);
        let default = self.registry.as_ref().map(|r| r.default_policy());
        let (source, policy) = match (&runtime, self.configured.get(org)) {
            (Some(row), _) => (PolicySource::Runtime, Some(policy_of(row)?)),
            (None, Some(p)) => (PolicySource::Config, Some(*p)),
            (None, None) => (PolicySource::Default, default),
        };
        let mut view = RateLimitView::new(org.to_owned(), source, policy, self.registry.is_some());
        view.decisions = self.decision_counts(org).await?;
        Ok(view)
    }
}

/// Rows drained from a [`DecisionTally`]: given back when dropped before
/// [`stored`](Self::stored) (a failed store, or a flush cancelled midway).
struct Taken<'a> {
    tally: &'a DecisionTally,
    rows: Option<Vec<ratelimit::TallyRow>>,
}

impl Taken<'_> {
    fn stored(mut self) {
        self.rows = None;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(rows) = self.rows.take() {
            self.tally.restore(rows);
        }
    }
}

/// Minutes since the Unix epoch, as the tally counts them.
fn unix_minute() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp().div_euclid(60)
}

fn policy_of(row: &OrgRateLimit) -> Result<Policy> {
    Ok(Policy::new(row.max_requests, Duration::from_millis(row.window_ms), row.burst_size)?)
}

/// Keeps `keys`, `limits` and the store's prices in step with the database
/// until the task is aborted.
pub fn spawn_refresh(keys: Option<Keys>, limits: RateLimits, store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Some(keys) = &keys
                && let Err(e) = keys.refresh().await
            {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not re-read API keys; the last ones read stay in force"
                );
            }
            if let Err(e) = limits.refresh().await {
                tracing::warn!(error = format!("{e:#}"), "could not re-read runtime rate limits");
            }
            if let Err(e) = store.refresh_prices().await {
                tracing::warn!(error = %e, "could not re-read prices; the last ones read stay in force");
            }
            if let Err(e) = limits.flush().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not store rate-limit decision counts; kept for the next try"
                );
            }
        }
    })
}

/// The admin API over [`Keys`], [`RateLimits`] and the stored prices.
pub struct AdminApi {
    pub keys: Keys,
    pub limits: RateLimits,
    pub store: Store,
}

/// An organization's price as the admin API shows it.
pub fn org_price_view(price: &storage::StoredPrice) -> OrgPriceView {
    let rate = |r: Option<pricing::Decimal>| r.map(|d| d.normalize().to_string());
    let base = &price.rates.base;
    OrgPriceView {
        id: price.id,
        organization_id: price.organization_id.clone().unwrap_or_default(),
        provider: price.provider.clone(),
        model: price.model.clone(),
        effective_from: rfc3339(price.effective_from),
        effective_to: price.effective_to.map(rfc3339),
        input: rate(base.input),
        output: rate(base.output),
        cache_read: rate(base.cache_read),
        cache_write: rate(base.cache_write),
        reasoning: rate(base.reasoning),
    }
}

fn storage_unavailable(e: storage::Error) -> AdminError {
    unavailable(anyhow::Error::new(e))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// How a key is shown: never its secret.
pub fn key_view(row: &ApiKeyRow) -> KeyView {
    KeyView {
        id: row.id,
        scope: row.scope.clone(),
        organization_id: row.organization_id.clone(),
        label: row.label.clone(),
        signed: row.signing_secret.is_some(),
        created_at: rfc3339(row.created_at),
        revoked_at: row.revoked_at.map(rfc3339),
        permissions: Permissions::parse(&row.permissions)
            .map_or_else(|| vec![row.permissions.clone()], |p| p.names().into_iter().map(str::to_owned).collect()),
    }
}

fn unavailable(e: anyhow::Error) -> AdminError {
    tracing::warn!(error = format!("{e:#}"), "admin request failed");
    AdminError::Unavailable
}

impl Admin for AdminApi {
    fn list_keys(&self) -> AdminFuture<'_, Vec<KeyView>> {
        Box::pin(async move { Ok(self.keys.list(true).await.map_err(unavailable)?.iter().map(key_view).collect()) })
    }

    fn create_key(&self, request: NewKey) -> AdminFuture<'_, CreatedKey> {
        Box::pin(async move {
            let scope = Scope::parse(&request.scope).ok_or_else(|| {
                AdminError::Invalid(format!("scope {:?} is not one of \"org\", \"service\", \"admin\"", request.scope))
            })?;
            let permissions = match &request.permissions {
                None => Permissions::WRITE,
                Some(names) => Permissions::from_names(names.iter().map(String::as_str)).ok_or_else(|| {
                    AdminError::Invalid(format!(
                        "permissions {names:?} must name \"read\", \"write\" or both, each once"
                    ))
                })?,
            };
            // Refused before touching storage, with the reason.
            new_key(scope, request.organization_id.clone(), request.label.clone(), false, permissions)
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            let new = self
                .keys
                .create(scope, request.organization_id, request.label, request.signing_secret, permissions)
                .await
                .map_err(unavailable)?;
            tracing::info!(key_id = %new.row.id, scope = %scope, "API key created through the admin API");
            Ok(CreatedKey {
                key: key_view(&new.row),
                api_key: new.key,
                signing_secret: new.signing_secret.map(|s| s.expose().to_owned()),
            })
        })
    }

    fn revoke_key(&self, id: Uuid) -> AdminFuture<'_, bool> {
        Box::pin(async move {
            let revoked = self.keys.revoke(id).await.map_err(unavailable)?;
            if revoked {
                tracing::info!(key_id = %id, "API key revoked through the admin API");
            }
            Ok(revoked)
        })
    }

    fn rate_limit(&self, org: String) -> AdminFuture<'_, RateLimitView> {
        Box::pin(async move { self.limits.view(&org).await.map_err(unavailable) })
    }

    fn set_rate_limit(&self, org: String, policy: Policy) -> AdminFuture<'_, RateLimitView> {
        Box::pin(async move {
            self.limits.set(&org, policy).await.map_err(unavailable)?;
            tracing::info!(organization = org, "runtime rate limit set through the admin API");
            self.limits.view(&org).await.map_err(unavailable)
        })
    }

    fn remove_rate_limit(&self, org: String) -> AdminFuture<'_, bool> {
        Box::pin(async move { self.limits.remove(&org).await.map_err(unavailable) })
    }

    fn org_prices(&self, org: String) -> AdminFuture<'_, Vec<OrgPriceView>> {
        Box::pin(async move {
            let prices = self.store.stored_prices(Some(&org), None).await.map_err(storage_unavailable)?;
            Ok(prices.iter().map(org_price_view).collect())
        })
    }

    fn set_org_price(&self, org: String, price: NewOrgPrice) -> AdminFuture<'_, OrgPriceView> {
        Box::pin(async move {
            let stored = self
                .store
                .set_org_price(&org, &price.provider, &price.model, price.effective_from, &price.rates)
                .await
                .map_err(storage_unavailable)?;
            tracing::info!(
                organization = org,
                provider = price.provider,
                model = price.model,
                price_id = stored.id,
                "organization price set through the admin API"
            );
            Ok(org_price_view(&stored))
        })
    }

    fn end_org_price(&self, org: String, provider: String, model: String, at: OffsetDateTime) -> AdminFuture<'_, bool> {
        Box::pin(async move {
            let ended = self.store.end_org_price(&org, &provider, &model, at).await.map_err(storage_unavailable)?;
            if ended {
                tracing::info!(organization = org, provider, model, "organization price ended through the admin API");
            }
            Ok(ended)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_counts_come_back_unless_stored() {
        let tally = DecisionTally::new();
        tally.record("a", true);
        // Dropped midway (a failed store, a cancelled flush): given back.
        drop(Taken { tally: &tally, rows: Some(tally.drain().rows) });
        let rows = tally.drain().rows;
        assert_eq!(rows.iter().map(|r| (r.key.as_str(), r.admitted)).collect::<Vec<_>>(), [("a", 1)]);
        // Stored: gone.
        tally.restore(rows);
        Taken { tally: &tally, rows: Some(tally.drain().rows) }.stored();
        assert!(tally.drain().rows.is_empty());
    }
}
