//! The admin API (`/admin/v1/…`, admin keys only): API keys and
//! per-organization rate-limit policies. Every request and response body is
//! a type of this module (or [`PolicyConfig`] of `ingest-ratelimit`), parsed
//! and serialised only here, where the status codes are chosen too; what
//! the operations do is the [`Admin`] implementation's business (ingestd's,
//! over its database). `docs/openapi.json` is checked against these types.
//!
//! | route | |
//! |---|---|
//! | `GET /admin/v1/keys` | every key, revoked ones included; never a secret |
//! | `POST /admin/v1/keys` | `{"scope": "org"\|"service"\|"admin", "organization_id"?, "label"?, "signing_secret"?: bool}` → 201 with the key, shown once |
//! | `DELETE /admin/v1/keys/{id}` | revoke; 204, or 404 when unknown or already revoked |
//! | `GET /admin/v1/orgs/{org}/rate-limit` | the policy in force, where it comes from, and the requests it admitted and refused in the last hour and day ([`DecisionCounts`]) |
//! | `PUT /admin/v1/orgs/{org}/rate-limit` | a [`PolicyConfig`]: `{"per_minute": n}` (or `per_hour`, `per_day`, or `max_requests` + `window_secs` [+ `burst_size`]) → [`RateLimitView`] |
//! | `DELETE /admin/v1/orgs/{org}/rate-limit` | back to the configured policy; 204, or 404 when none was set |
//! | `GET /admin/v1/orgs/{org}/prices` | the organization's own prices, past and future ones included |
//! | `PUT /admin/v1/orgs/{org}/prices` | an [`OrgPriceRequest`]: its price for a provider and exact model name from `effective_from` on → [`OrgPriceView`] |
//! | `DELETE /admin/v1/orgs/{org}/prices?provider=…&model=…[&effective_from=…]` | ends it (default: now); 204, or 404 when none was in force then or later |

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use ratelimit::{Policy, PolicyConfig, PolicyProblem};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::ApiError;
use crate::error::json_response;

/// Every admin route: (path pattern, allowed methods). `/openapi.json`
/// documents each; a test holds the two together.
pub const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("/admin/v1/keys", "GET, POST"),
    ("/admin/v1/keys/{id}", "DELETE"),
    ("/admin/v1/orgs/{org}/rate-limit", "GET, PUT, DELETE"),
    ("/admin/v1/orgs/{org}/prices", "GET, PUT, DELETE"),
];

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub type AdminFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AdminError>> + Send + 'a>>;

/// What the admin API does.
pub trait Admin: Send + Sync + 'static {
    fn list_keys(&self) -> AdminFuture<'_, Vec<KeyView>>;
    fn create_key(&self, request: NewKey) -> AdminFuture<'_, CreatedKey>;
    /// Whether an active key was revoked.
    fn revoke_key(&self, id: Uuid) -> AdminFuture<'_, bool>;
    fn rate_limit(&self, org: String) -> AdminFuture<'_, RateLimitView>;
    /// Sets `org`'s runtime policy (already parsed and checked here).
    fn set_rate_limit(&self, org: String, policy: Policy) -> AdminFuture<'_, RateLimitView>;
    /// Whether a runtime policy was removed.
    fn remove_rate_limit(&self, org: String) -> AdminFuture<'_, bool>;
    /// `org`'s own prices, by model and start.
    fn org_prices(&self, org: String) -> AdminFuture<'_, Vec<OrgPriceView>>;
    /// Sets `org`'s price (already parsed and checked here).
    fn set_org_price(&self, org: String, price: NewOrgPrice) -> AdminFuture<'_, OrgPriceView>;
    /// Ends `org`'s price for `provider` and `model` at `at`; false when
    /// none was in force then or later.
    fn end_org_price(
        &self,
        org: String,
        provider: String,
        model: String,
        at: time::OffsetDateTime,
    ) -> AdminFuture<'_, bool>;
}

/// An admin operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong; the message says how (400).
    #[error("{0}")]
    Invalid(String),
    /// Storage failed (503).
    #[error("storage is unavailable")]
    Unavailable,
}

// The request and response bodies. Each is one Rust type, read and written
// only here; `docs/openapi.json` is checked against them
// (`tests::admin_bodies_agree_with_openapi`).

/// `GET /admin/v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// A key as listed: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyView {
    pub id: Uuid,
    pub scope: String,
    pub organization_id: Option<String>,
    pub label: Option<String>,
    /// Whether requests with this key must be signed.
    pub signed: bool,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// `read`, `write` or both (SPEC §10).
    pub permissions: Vec<String>,
}

/// `POST /admin/v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub scope: String,
    #[serde(default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    /// Also create a signing secret (`whsec_…`); requests must then be signed.
    #[serde(default)]
    pub signing_secret: bool,
    /// `["read"]`, `["write"]` (the default) or both.
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
}

/// A new key: the only time its secret is shown.
#[derive(Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    pub api_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey").field("key", &self.key).finish_non_exhaustive()
    }
}

/// `GET|PUT /admin/v1/orgs/{org}/rate-limit`: the policy in force and
/// where it comes from. (The `PUT` body is a [`PolicyConfig`], the shape of
/// a `[rate_limit.orgs.…]` section.)
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitView {
    pub organization_id: String,
    pub source: PolicySource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    /// The window in seconds (a fraction for windows that are not whole seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_size: Option<u64>,
    /// `max_requests + burst_size`: how many requests a fresh bucket admits at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// False when rate limiting is disabled (policies are still kept).
    pub enforced: bool,
    /// The organization's requests admitted and refused (429) by the
    /// limiter, in every process sharing the database.
    pub decisions: DecisionCounts,
}

/// Rate-limit decisions of one organization over the last hour and day.
/// Counted per UTC minute: `last_hour` is the current minute and the 59
/// before it, `last_day` the current minute and the 1439 before it. Each
/// process adds its counts every 2 s (the answering one first adds its own),
/// so another process's last seconds may be missing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DecisionCounts {
    pub last_hour: Decisions,
    pub last_day: Decisions,
}

/// Requests the limiter admitted and refused.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Decisions {
    pub admitted: u64,
    pub refused: u64,
}

impl RateLimitView {
    /// `policy` is `None` only for the default policy of a service that
    /// limits nothing.
    pub fn new(organization_id: String, source: PolicySource, policy: Option<Policy>, enforced: bool) -> Self {
        RateLimitView {
            organization_id,
            source,
            max_requests: policy.map(|p| p.max_requests()),
            window_secs: policy.map(|p| p.window().as_secs_f64()),
            burst_size: policy.map(|p| p.burst_size()),
            capacity: policy.map(|p| p.capacity()),
            enforced,
            decisions: DecisionCounts::default(),
        }
    }
}

/// Where the policy in force comes from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// Set through this API (stored; wins over the configuration).
    Runtime,
    /// `[rate_limit.orgs.…]` in the configuration.
    Config,
    /// `[rate_limit.default]`.
    Default,
}

/// `PUT /admin/v1/orgs/{org}/prices`: the organization's negotiated price
/// for `provider` (as records send it; trimmed and lower-cased like them)
/// and the exact `model.name`, from `effective_from` (RFC 3339, to the
/// second) on. Rates are USD per token as decimal strings (`"0.0000025"`,
/// `"2.5e-6"`), never JSON numbers; an omitted cache rate falls back to
/// `input` and an omitted `reasoning` to `output` (SPEC §9).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrgPriceRequest {
    pub provider: String,
    pub model: String,
    pub effective_from: String,
    pub input: String,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

/// The rate syntax the admin API takes (`docs/openapi.json`'s pattern
/// `^(0|[1-9][0-9]{0,9})(\.[0-9]{1,18})?([eE]-?[0-9])?$`): every such text is
/// an exact decimal of at most 27 places, so [`pricing::parse_rate`] takes
/// it whole.
fn rate_syntax(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let whole_ok = whole == "0" || (digits(whole) && whole.len() <= 10 && !whole.starts_with('0'));
    let fraction_ok = fraction.is_none_or(|f| digits(f) && f.len() <= 18);
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix('-').unwrap_or(e);
        e.len() == 1 && digits(e)
    });
    whole_ok && fraction_ok && exponent_ok
}

/// An [`OrgPriceRequest`] once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrgPrice {
    pub provider: String,
    pub model: String,
    pub effective_from: time::OffsetDateTime,
    pub rates: pricing::Rates,
}

/// `GET /admin/v1/orgs/{org}/prices`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrgPriceList {
    pub organization_id: String,
    pub prices: Vec<OrgPriceView>,
}

/// One price of an organization: in force from `effective_from`
/// (inclusive) to `effective_to` (exclusive; null while open). Rates as
/// decimal strings, only those that were set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrgPriceView {
    pub id: i64,
    pub organization_id: String,
    pub provider: String,
    pub model: String,
    pub effective_from: String,
    pub effective_to: Option<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

/// An RFC 3339 time in UTC, within the years every backend stores (1 to
/// 9999, as records' `timestamp`).
fn rfc3339_request(field: &str, text: &str) -> Result<time::OffsetDateTime, ApiError> {
    let invalid = |why: String| ApiError::InvalidRequest { message: format!("{field}: {text:?} {why}") };
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| invalid(format!("is not an RFC 3339 time ({e})")))?;
    t.checked_to_offset(time::UtcOffset::UTC)
        .filter(|utc| (1..=9999).contains(&utc.year()))
        .ok_or_else(|| invalid("is outside the years 1 to 9999 (UTC)".into()))
}

/// A provider as records' `provider` (SPEC §1): no control characters as
/// sent, 1 to 64 characters once trimmed, stored lower-cased.
fn provider_request(sent: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::InvalidRequest { message: format!("provider {why}") };
    if sent.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    match sent.trim().chars().take(65).count() {
        0 => Err(invalid("must be at least 1 character(s) long")),
        65.. => Err(invalid("must be at most 64 characters long")),
        _ => Ok(sent.trim().to_lowercase()),
    }
}

fn identifier_request(field: &str, value: &str) -> Result<(), ApiError> {
    model::validate::check_organization_id(value)
        .map_err(|rule| ApiError::InvalidRequest { message: format!("{field} {rule}") })
}

impl OrgPriceRequest {
    /// Checks the request: identifiers as in records, a time, exact
    /// non-negative decimal rates.
    pub fn parse(self) -> Result<NewOrgPrice, ApiError> {
        let provider = provider_request(&self.provider)?;
        identifier_request("model", &self.model)?;
        let effective_from = rfc3339_request("effective_from", &self.effective_from)?;
        let rate = |field: &str, text: &str| {
            let invalid = |why: String| ApiError::InvalidRequest {
                message: format!("{field}: {why} (rates are USD per token as decimal strings, e.g. \"0.0000025\")"),
            };
            if !rate_syntax(text) {
                return Err(invalid(format!(
                    "{text:?} is not a rate: at most 10 digits before the point and 18 after, an optional exponent of -9 to 9"
                )));
            }
            pricing::parse_rate(text).map_err(invalid)
        };
        let optional = |field: &str, text: &Option<String>| text.as_deref().map(|t| rate(field, t)).transpose();
        let base = pricing::KindRates {
            input: Some(rate("input", &self.input)?),
            output: Some(rate("output", &self.output)?),
            cache_read: optional("cache_read", &self.cache_read)?,
            cache_write: optional("cache_write", &self.cache_write)?,
            reasoning: optional("reasoning", &self.reasoning)?,
        };
        Ok(NewOrgPrice {
            provider,
            model: self.model,
            effective_from,
            rates: pricing::Rates { base, ..pricing::Rates::default() },
        })
    }
}

/// The `DELETE …/prices` query: `provider`, `model`, `effective_from`
/// (default: now).
fn end_price_query(query: Option<&str>) -> Result<(String, String, time::OffsetDateTime), ApiError> {
    let (mut provider, mut model, mut at) = (None, None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "provider" => provider = Some(provider_request(&value)?),
            "model" => model = Some(value.into_owned()),
            "effective_from" => at = Some(rfc3339_request("effective_from", &value)?),
            other => {
                return Err(ApiError::InvalidRequest {
                    message: format!("unknown query parameter {other:?}: provider, model and effective_from are"),
                });
            }
        }
    }
    let missing = |what: &str| ApiError::InvalidRequest { message: format!("the query needs {what}") };
    let provider = provider.ok_or_else(|| missing("provider"))?;
    let model = model.ok_or_else(|| missing("model"))?;
    identifier_request("model", &model)?;
    Ok((provider, model, at.unwrap_or_else(time::OffsetDateTime::now_utc)))
}

/// A `PUT …/rate-limit` body as a [`PolicyConfig`]: read from the text, so an
/// explicit `null` is refused (leave the field out) and a whole number
/// written with a fraction or exponent (`600.0`, `6e2`) is that whole number,
/// as in records; then the policy it describes. Not a policy → 400; a policy
/// no limiter can keep (its bucket deeper than 2^51 µs) → 422.
fn policy_request(body: &RawValue) -> Result<Policy, ApiError> {
    let invalid = |message: String| ApiError::InvalidRequest { message };
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_str(body.get()).map_err(|_| invalid("the body must be a JSON object".into()))?;
    let mut out = serde_json::Map::new();
    for (name, raw) in fields {
        let text = raw.get();
        let value = match model::decode::whole_number(text) {
            _ if text == "null" => return Err(invalid(format!("{name}: null is not a value; leave the field out"))),
            // From the text, never through a float: 600.00000000000001 stays a fraction.
            Some(Some(whole)) if !text.starts_with('-') => whole.into(),
            _ => serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?,
        };
        out.insert(name, value);
    }
    let config: PolicyConfig =
        serde_json::from_value(serde_json::Value::Object(out)).map_err(|e| invalid(e.to_string()))?;
    if config.is_empty() {
        // In a config file an empty section means the default; here it is a mistake.
        return Err(invalid("set per_minute, per_hour, per_day, or max_requests + window_secs".into()));
    }
    config.policy().map_err(|problem| match problem {
        PolicyProblem::Invalid(message) => ApiError::InvalidRequest { message },
        PolicyProblem::Unenforceable(message) => ApiError::InvalidPolicy { message },
    })
}

type Resp = Response<crate::body::Body>;

/// Serves one admin request (authentication already done).
pub(crate) async fn dispatch(admin: &dyn Admin, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    let not_allowed = |allow: &'static str| ApiError::MethodNotAllowed { method: method.to_string(), allow };
    match segments.as_slice() {
        ["admin", "v1", "keys"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, &KeyList { keys: admin.list_keys().await? })),
            Method::POST => {
                let request: NewKey = read_json(req).await?;
                Ok(json_response(StatusCode::CREATED, &admin.create_key(request).await?))
            }
            _ => Err(not_allowed("GET, POST")),
        },
        ["admin", "v1", "keys", id] => {
            if method != Method::DELETE {
                return Err(not_allowed("DELETE"));
            }
            // Any form Uuid parses, %-escaped as clients send it (`urn%3Auuid%3A…`, `%7B…%7D`).
            let id = percent_decode(id)
                .ok()
                .and_then(|decoded| Uuid::try_parse(&decoded).ok())
                .ok_or_else(|| ApiError::InvalidRequest { message: format!("{id:?} is not a key id (a UUID)") })?;
            match admin.revoke_key(id).await? {
                true => Ok(no_content()),
                false => Err(ApiError::ResourceNotFound { what: format!("active key {id}") }),
            }
        }
        ["admin", "v1", "orgs", org, "rate-limit"] => {
            let org = percent_decode(org)?;
            if let Err(rule) = model::validate::check_organization_id(&org) {
                return Err(ApiError::InvalidRequest { message: format!("the organization in the path {rule}") });
            }
            match method {
                Method::GET => Ok(json_response(StatusCode::OK, &admin.rate_limit(org).await?)),
                Method::PUT => {
                    let body: Box<RawValue> = read_json(req).await?;
                    let policy = policy_request(&body)?;
                    Ok(json_response(StatusCode::OK, &admin.set_rate_limit(org, policy).await?))
                }
                Method::DELETE => match admin.remove_rate_limit(org.clone()).await? {
                    true => Ok(no_content()),
                    false => Err(ApiError::ResourceNotFound { what: format!("a runtime rate limit for {org:?}") }),
                },
                _ => Err(not_allowed("GET, PUT, DELETE")),
            }
        }
        ["admin", "v1", "orgs", org, "prices"] => {
            let org = percent_decode(org)?;
            identifier_request("the organization in the path", &org)?;
            match method {
                Method::GET => {
                    let prices = admin.org_prices(org.clone()).await?;
                    Ok(json_response(StatusCode::OK, &OrgPriceList { organization_id: org, prices }))
                }
                Method::PUT => {
                    let request: OrgPriceRequest = read_json(req).await?;
                    let price = request.parse()?;
                    Ok(json_response(StatusCode::OK, &admin.set_org_price(org, price).await?))
                }
                Method::DELETE => {
                    let (provider, model, at) = end_price_query(req.uri().query())?;
                    let what = format!("a price of {org:?} for {provider:?} {model:?} in force at or after that time");
                    match admin.end_org_price(org, provider, model, at).await? {
                        true => Ok(no_content()),
                        false => Err(ApiError::ResourceNotFound { what }),
                    }
                }
                _ => Err(not_allowed("GET, PUT, DELETE")),
            }
        }
        _ => Err(ApiError::NotFound { path }),
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(message) => ApiError::InvalidRequest { message },
            AdminError::Unavailable => ApiError::StorageUnavailable,
        }
    }
}

fn no_content() -> Resp {
    let mut response = Response::new(crate::body::full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    crate::body::check_headers(req.headers(), MAX_ADMIN_BODY)?;
    let (parts, body) = req.into_parts();
    let bytes = crate::body::read(&parts.headers, body, MAX_ADMIN_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::InvalidRequest { message: e.to_string() }
        } else {
            ApiError::MalformedJson { line: e.line(), column: e.column(), message: e.to_string() }
        }
    })
}

/// `%XX` escapes in a path segment (organization ids may hold any character).
fn percent_decode(segment: &str) -> Result<String, ApiError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let hex = hex.and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| ApiError::InvalidRequest {
                message: "the organization in the path has a bad %-escape".into(),
            })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::InvalidRequest { message: "the organization in the path is not UTF-8".into() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;

    /// `docs/openapi.json`, and a schema of it with `$ref`s followed.
    struct Doc(Value);

    impl Doc {
        fn load() -> Doc {
            Doc(serde_json::from_str(crate::OPENAPI).expect("docs/openapi.json is JSON"))
        }

        fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
            match schema.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let pointer = r.strip_prefix('#').expect("local $ref");
                    self.resolve(self.0.pointer(pointer).unwrap_or_else(|| panic!("{r} is not in the document")))
                }
                None => schema,
            }
        }

        /// The operation's request or response body: (schema, examples).
        fn body(&self, path: &str, method: &str, status: Option<&str>) -> (&Value, Vec<&Value>) {
            let op = &self.0["paths"][path][method];
            let content = match status {
                None => &op["requestBody"]["content"]["application/json"],
                Some(code) => &op["responses"][code]["content"]["application/json"],
            };
            assert!(content.is_object(), "{method} {path} {status:?}: no JSON body documented");
            let mut examples: Vec<&Value> = content.get("example").into_iter().collect();
            if let Some(named) = content.get("examples").and_then(Value::as_object) {
                examples.extend(named.values().map(|e| &e["value"]));
            }
            assert!(!examples.is_empty(), "{method} {path} {status:?}: no example");
            (&content["schema"], examples)
        }

        /// Every property the schema names, through `allOf`/`oneOf`/`anyOf`.
        fn properties(&self, schema: &Value) -> BTreeSet<String> {
            let schema = self.resolve(schema);
            let mut out: BTreeSet<String> = schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect();
            for combinator in ["allOf", "oneOf", "anyOf"] {
                for part in schema.get(combinator).and_then(Value::as_array).into_iter().flatten() {
                    out.extend(self.properties(part));
                }
            }
            out
        }

        /// What is wrong with `value` against `schema` (the subset the
        /// document uses: type, enum, const, required, properties,
        /// additionalProperties, items, minimum/maximum, allOf/oneOf).
        /// Properties the schema does not name are errors here even without
        /// `additionalProperties: false`: the document must name every field.
        fn check(&self, schema: &Value, value: &Value, at: &str) -> Vec<String> {
            let schema = self.resolve(schema);
            let mut errors = Vec::new();
            if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
                // Together they describe one object: fields are checked against the union.
                let names = self.properties(schema);
                if let Some(object) = value.as_object() {
                    errors.extend(
                        object.keys().filter(|k| !names.contains(*k)).map(|k| format!("{at}.{k}: not documented")),
                    );
                }
                for part in parts {
                    errors.extend(self.check_open(part, value, at));
                }
                return errors;
            }
            if let Some(parts) = schema.get("oneOf").and_then(Value::as_array) {
                let matching = parts.iter().filter(|p| self.check(p, value, at).is_empty()).count();
                if matching != 1 {
                    errors.push(format!("{at}: matches {matching} of the oneOf alternatives, not one"));
                }
                return errors;
            }
            self.check_shape(schema, value, at, true, &mut errors);
            errors
        }

        /// `check` for one part of an `allOf`: other parts document other fields.
        fn check_open(&self, schema: &Value, value: &Value, at: &str) -> Vec<String> {
            let mut errors = Vec::new();
            self.check_shape(self.resolve(schema), value, at, false, &mut errors);
            errors
        }

        fn check_shape(&self, schema: &Value, value: &Value, at: &str, closed: bool, errors: &mut Vec<String>) {
            let types: Vec<&str> = match &schema["type"] {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let actual = match value {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            let documented =
                types.is_empty() || types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
            if !documented {
                errors.push(format!("{at}: {actual}, documented as {types:?}"));
                return;
            }
            if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                && !allowed.contains(value)
            {
                errors.push(format!("{at}: {value} is not one of {allowed:?}"));
            }
            if let Some(constant) = schema.get("const")
                && constant != value
            {
                errors.push(format!("{at}: {value} is not {constant}"));
            }
            if let (Some(n), Some(min)) = (value.as_f64(), schema.get("minimum").and_then(Value::as_f64))
                && n < min
            {
                errors.push(format!("{at}: {n} < minimum {min}"));
            }
            if let (Some(n), Some(max)) = (value.as_f64(), schema.get("maximum").and_then(Value::as_f64))
                && n > max
            {
                errors.push(format!("{at}: {n} > maximum {max}"));
            }
            if let Value::Array(items) = value
                && let Some(item) = schema.get("items")
            {
                for (i, v) in items.iter().enumerate() {
                    errors.extend(self.check(item, v, &format!("{at}[{i}]")));
                }
            }
            if let Value::Object(object) = value {
                let properties = schema.get("properties").and_then(Value::as_object);
                for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                    let name = name.as_str().unwrap_or_default();
                    if !object.contains_key(name) {
                        errors.push(format!("{at}.{name}: required, missing"));
                    }
                }
                for (name, v) in object {
                    match properties.and_then(|p| p.get(name)) {
                        Some(property) => errors.extend(self.check(property, v, &format!("{at}.{name}"))),
                        None if closed => errors.push(format!("{at}.{name}: not documented")),
                        None => {}
                    }
                }
            }
        }
    }

    /// Each example of the body reads into `T` and writes back unchanged.
    fn examples_round_trip<T: Serialize + DeserializeOwned>(examples: &[&Value], what: &str) {
        for example in examples {
            let typed: T = serde_json::from_value((*example).clone()).unwrap_or_else(|e| {
                panic!("{what}: the example {example} is not a {}: {e}", std::any::type_name::<T>())
            });
            assert_eq!(&serde_json::to_value(&typed).unwrap(), *example, "{what}: the example does not round-trip");
        }
    }

    /// `full` (every optional field set) is valid against the schema, and
    /// the schema names exactly the fields of the type.
    fn type_matches_schema<T: Serialize>(doc: &Doc, schema: &Value, full: &T, what: &str) {
        let value = serde_json::to_value(full).unwrap();
        let errors = doc.check(schema, &value, what);
        assert!(errors.is_empty(), "{what}: {} does not match the document: {errors:#?}", std::any::type_name::<T>());
        let fields: BTreeSet<String> = value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(doc.properties(schema), fields, "{what}: documented properties vs the type's fields");
    }

    fn key_view() -> KeyView {
        KeyView {
            id: Uuid::nil(),
            scope: "org".into(),
            organization_id: Some("acme".into()),
            label: Some("exporter".into()),
            signed: true,
            created_at: "2026-01-01T00:00:00Z".into(),
            revoked_at: Some("2026-01-02T00:00:00Z".into()),
            permissions: vec!["read".into(), "write".into()],
        }
    }

    fn policy(max: u64) -> Policy {
        Policy::new(max, std::time::Duration::from_secs(60), max / 10).unwrap()
    }

    #[test]
    fn admin_bodies_agree_with_openapi() {
        let doc = Doc::load();
        let keys = "/admin/v1/keys";
        let rate_limit = "/admin/v1/orgs/{org}/rate-limit";

        let (schema, examples) = doc.body(keys, "get", Some("200"));
        examples_round_trip::<KeyList>(&examples, "GET keys");
        type_matches_schema(&doc, schema, &KeyList { keys: vec![key_view()] }, "GET keys");

        let (schema, examples) = doc.body(keys, "post", None);
        for example in &examples {
            let _: NewKey = serde_json::from_value((*example).clone()).expect("POST keys example is a NewKey");
        }
        let full = NewKey {
            scope: "org".into(),
            organization_id: Some("acme".into()),
            label: Some("exporter".into()),
            signing_secret: true,
            permissions: Some(vec!["read".into(), "write".into()]),
        };
        type_matches_schema(&doc, schema, &full, "POST keys");
        let service = json!({"scope": "service", "label": null, "signing_secret": false});
        let service: NewKey = serde_json::from_value(service).unwrap();
        let mut written = serde_json::to_value(&service).unwrap();
        written.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        assert_eq!(doc.check(schema, &written, "POST keys (service)"), Vec::<String>::new());

        let (schema, examples) = doc.body(keys, "post", Some("201"));
        for example in &examples {
            let typed: CreatedKey = serde_json::from_value((*example).clone()).expect("201 example is a CreatedKey");
            assert_eq!(&serde_json::to_value(&typed).unwrap(), *example, "201 example round-trips");
        }
        let created =
            CreatedKey { key: key_view(), api_key: "ingestd_x".into(), signing_secret: Some("whsec_x".into()) };
        type_matches_schema(&doc, schema, &created, "POST keys 201");

        for (method, status) in [("get", "200"), ("put", "200")] {
            let (schema, examples) = doc.body(rate_limit, method, Some(status));
            examples_round_trip::<RateLimitView>(&examples, method);
            let full = RateLimitView::new("acme".into(), PolicySource::Runtime, Some(policy(600)), true);
            type_matches_schema(&doc, schema, &full, method);
            let bare =
                serde_json::to_value(RateLimitView::new("acme".into(), PolicySource::Default, None, false)).unwrap();
            assert_eq!(doc.check(schema, &bare, method), Vec::<String>::new(), "{method}: no policy at all");
        }

        let (schema, examples) = doc.body(rate_limit, "put", None);
        for example in &examples {
            let typed: PolicyConfig =
                serde_json::from_value((*example).clone()).expect("PUT example is a PolicyConfig");
            assert!(typed.policy().is_ok(), "the PUT example {example} is a policy");
        }
        let every_field = PolicyConfig {
            per_minute: Some(1),
            per_hour: Some(1),
            per_day: Some(1),
            max_requests: Some(1),
            window_secs: Some(1),
            burst_size: Some(0),
        };
        let fields: BTreeSet<String> =
            serde_json::to_value(&every_field).unwrap().as_object().unwrap().keys().cloned().collect();
        assert_eq!(doc.properties(schema), fields, "PUT rate-limit: documented properties vs PolicyConfig");
        for one in [
            PolicyConfig { per_minute: Some(600), ..PolicyConfig::default() },
            PolicyConfig { per_day: Some(1), ..PolicyConfig::default() },
            PolicyConfig {
                max_requests: Some(10),
                window_secs: Some(1),
                burst_size: Some(5),
                ..PolicyConfig::default()
            },
        ] {
            let value = serde_json::to_value(&one).unwrap();
            assert_eq!(doc.check(schema, &value, "PUT rate-limit"), Vec::<String>::new(), "{value}");
        }
    }

    fn org_price_view() -> OrgPriceView {
        OrgPriceView {
            id: 7,
            organization_id: "acme".into(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            effective_from: "2026-01-01T00:00:00Z".into(),
            effective_to: Some("2026-02-01T00:00:00Z".into()),
            input: Some("0.000002".into()),
            output: Some("0.000008".into()),
            cache_read: Some("0.000001".into()),
            cache_write: Some("0.0000025".into()),
            reasoning: Some("0.00001".into()),
        }
    }

    #[test]
    fn price_bodies_agree_with_openapi() {
        let doc = Doc::load();
        let prices = "/admin/v1/orgs/{org}/prices";
        let (schema, examples) = doc.body(prices, "get", Some("200"));
        examples_round_trip::<OrgPriceList>(&examples, "GET prices");
        let list = OrgPriceList { organization_id: "acme".into(), prices: vec![org_price_view()] };
        type_matches_schema(&doc, schema, &list, "GET prices");
        let (schema, examples) = doc.body(prices, "put", Some("200"));
        examples_round_trip::<OrgPriceView>(&examples, "PUT prices 200");
        type_matches_schema(&doc, schema, &org_price_view(), "PUT prices 200");

        let (schema, examples) = doc.body(prices, "put", None);
        for example in &examples {
            let typed: OrgPriceRequest = serde_json::from_value((*example).clone()).expect("PUT example parses");
            assert!(typed.parse().is_ok(), "the PUT example {example} is a price");
        }
        let full = OrgPriceRequest {
            provider: "OpenAI".into(),
            model: "gpt-4o".into(),
            effective_from: "2026-01-01T00:00:00Z".into(),
            input: "2e-6".into(),
            output: "0.000008".into(),
            cache_read: Some("0.000001".into()),
            cache_write: Some("0.0000025".into()),
            reasoning: Some("0.00001".into()),
        };
        type_matches_schema(&doc, schema, &full, "PUT prices");
    }

    #[test]
    fn price_requests_are_checked() {
        let request = |edit: &dyn Fn(&mut Value)| {
            let mut v = json!({
                "provider": " OpenAI ", "model": "gpt-4o", "effective_from": "2026-01-01T00:00:00.250+01:00",
                "input": "2.5e-6", "output": "0.00001", "cache_read": "0.00000125",
            });
            edit(&mut v);
            serde_json::from_value::<OrgPriceRequest>(v).map_err(|e| e.to_string()).and_then(|r| {
                r.parse().map_err(|e| match e {
                    ApiError::InvalidRequest { message } => message,
                    other => format!("{other:?}"),
                })
            })
        };
        let ok = request(&|_| {}).unwrap();
        assert_eq!(ok.provider, "openai", "trimmed and lower-cased like a record's");
        assert_eq!(ok.effective_from, time::macros::datetime!(2025-12-31 23:00:00.25 UTC));
        assert_eq!(ok.rates.base.input.unwrap().to_string(), "0.0000025");
        assert_eq!(ok.rates.base.cache_write, None, "omitted: falls back to input when pricing");
        let refused = |edit: &dyn Fn(&mut Value), why: &str| {
            let e = request(edit).expect_err(why);
            assert!(e.contains(why), "{e:?} should say {why:?}");
        };
        refused(&|v| v["input"] = json!(0.0000025), "expected a string");
        refused(&|v| v["output"] = json!("-1"), "not a rate");
        refused(&|v| v["output"] = json!("1e-40"), "not a rate");
        for bad in ["00.1", "1.", ".5", " 0.1", "0.1\n", "1e10", "1e+5", "0.0000000000000000001", "12345678901", "+1"] {
            refused(&|v| v["input"] = json!(bad), "not a rate");
        }
        for good in ["0", "0.0000025", "2.5e-6", "9999999999.999999999999999999e9", "9999999999.999999999999999999e-9"]
        {
            assert!(request(&|v| v["input"] = json!(good)).is_ok(), "{good}");
        }
        assert!(request(&|v| v["reasoning"] = json!(null)).is_ok(), "null: not set");
        refused(&|v| v["effective_from"] = json!("yesterday"), "RFC 3339");
        refused(&|v| v["model"] = json!(""), "model");
        refused(&|v| v["provider"] = json!("a\u{7}b"), "control characters");
        refused(&|v| v["provider"] = json!("openai\t"), "control characters");
        refused(&|v| v["provider"] = json!("p".repeat(65)), "at most 64");
        refused(&|v| v["effective_from"] = json!("9999-12-31T23:59:59-01:00"), "years 1 to 9999");
        refused(&|v| v["effective_from"] = json!("0000-01-01T00:30:00+01:00"), "years 1 to 9999");
        refused(&|v| v["currency"] = json!("EUR"), "unknown field");
        refused(&|v| v.as_object_mut().unwrap().retain(|k, _| k != "output"), "missing field `output`");

        let query = |q: &str| end_price_query(Some(q)).map(|(p, m, _)| (p, m));
        assert_eq!(
            query("provider=OpenAI&model=ft%3Agpt-4o%3Aacme%3A%3Ax&effective_from=2026-01-01T00%3A00%3A00Z").unwrap(),
            ("openai".to_owned(), "ft:gpt-4o:acme::x".to_owned())
        );
        assert!(query("model=gpt-4o").is_err(), "provider is needed");
        assert!(query("provider=openai&model=gpt-4o&from=x").is_err(), "unknown parameters are refused");
        assert!(query("provider=openai&model=gpt-4o&effective_from=soon").is_err());
    }

    /// The checker above can fail: a field the document does not name, a
    /// wrong type, a missing required field.
    #[test]
    fn the_schema_check_finds_what_is_wrong() {
        let doc = Doc::load();
        let (schema, _) = doc.body("/admin/v1/orgs/{org}/rate-limit", "get", Some("200"));
        let mut view =
            serde_json::to_value(RateLimitView::new("a".into(), PolicySource::Config, Some(policy(60)), true)).unwrap();
        view["undocumented"] = 1.into();
        view["enforced"] = "yes".into();
        view.as_object_mut().unwrap().remove("source");
        let errors = doc.check(schema, &view, "view");
        assert_eq!(errors.len(), 3, "{errors:#?}");
        let (schema, _) = doc.body("/admin/v1/keys", "post", Some("201"));
        let mut created =
            serde_json::to_value(CreatedKey { key: key_view(), api_key: "k".into(), signing_secret: None }).unwrap();
        created["extra"] = true.into();
        assert_eq!(doc.check(schema, &created, "created").len(), 1);
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("org%2Fa%20b").unwrap(), "org/a b");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        assert!(percent_decode("bad%zz").is_err());
        assert!(percent_decode("cut%2").is_err());
        assert!(percent_decode("%ff").is_err());
        assert!(percent_decode("%+f").is_err());
    }
}
