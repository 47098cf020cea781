//! The admin API (`/admin/v1/…`, admin keys only): API keys and
//! per-organization rate-limit policies. The HTTP side lives here; what the
//! operations do is the [`Admin`] implementation's business (ingestd's,
//! over its database).
//!
//! | route | |
//! |---|---|
//! | `GET /admin/v1/keys` | every key, revoked ones included; never a secret |
//! | `POST /admin/v1/keys` | `{"scope": "org"\|"service"\|"admin", "organization_id"?, "label"?, "signing_secret"?: bool}` → 201 with the key, shown once |
//! | `DELETE /admin/v1/keys/{id}` | revoke; 204, or 404 when unknown or already revoked |
//! | `GET /admin/v1/orgs/{org}/rate-limit` | the policy in force and where it comes from |
//! | `PUT /admin/v1/orgs/{org}/rate-limit` | `{"per_minute": n}` (or `per_hour`, `per_day`, or `max_requests` + `window_secs` [+ `burst_size`]) |
//! | `DELETE /admin/v1/orgs/{org}/rate-limit` | back to the configured policy; 204, or 404 when none was set |

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
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
    fn rate_limit(&self, org: String) -> AdminFuture<'_, serde_json::Value>;
    /// `body` as sent (its text, so numbers are read exactly): the shape of a
    /// `[rate_limit.orgs.…]` config section.
    fn set_rate_limit(&self, org: String, body: Box<serde_json::value::RawValue>)
    -> AdminFuture<'_, serde_json::Value>;
    /// Whether a runtime policy was removed.
    fn remove_rate_limit(&self, org: String) -> AdminFuture<'_, bool>;
}

/// An admin operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong; the message says how (400).
    #[error("{0}")]
    Invalid(String),
    /// The request is well-formed but asks for something that cannot be
    /// (422), e.g. a rate-limit policy whose bucket is too deep.
    #[error("{0}")]
    Unprocessable(String),
    /// Storage failed (503).
    #[error("storage is unavailable")]
    Unavailable,
}

/// A key as listed: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Serialize)]
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

type Resp = Response<Full<Bytes>>;

/// Serves one admin request (authentication already done).
pub(crate) async fn dispatch(admin: &dyn Admin, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    let not_allowed = |allow: &'static str| ApiError::MethodNotAllowed { method: method.to_string(), allow };
    match segments.as_slice() {
        ["admin", "v1", "keys"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, &serde_json::json!({ "keys": admin.list_keys().await? }))),
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
                    let body: Box<serde_json::value::RawValue> = read_json(req).await?;
                    Ok(json_response(StatusCode::OK, &admin.set_rate_limit(org, body).await?))
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
            AdminError::Unprocessable(message) => ApiError::InvalidPolicy { message },
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
