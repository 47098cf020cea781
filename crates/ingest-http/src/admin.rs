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
//! | `GET /admin/v1/orgs/{org}/rate-limit` | the policy in force and where it comes from |
//! | `PUT /admin/v1/orgs/{org}/rate-limit` | a [`PolicyConfig`]: `{"per_minute": n}` (or `per_hour`, `per_day`, or `max_requests` + `window_secs` [+ `burst_size`]) → [`RateLimitView`] |
//! | `DELETE /admin/v1/orgs/{org}/rate-limit` | back to the configured policy; 204, or 404 when none was set |

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
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

type Resp = Response<Full<Bytes>>;

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
    let mut response = Response::new(Full::new(Bytes::new()));
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
    use super::percent_decode;

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
