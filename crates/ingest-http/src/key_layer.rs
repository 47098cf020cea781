//! The API-key layer (SPEC §3): every `/v1/…` and `/admin/…` request
//! presents `Authorization: Bearer <key>`; probes, metrics and the API
//! description need none.
//!
//! A key that checks out becomes the request's [`Principal`] (for the
//! handlers: tenancy, signatures) and its rate-limit [`Organization`]: an
//! organization key's own organization, whatever headers say; for service and
//! admin keys the `X-Organization-Id` header when present (the rate-limit
//! layer reads and checks it), else the key's id. `/admin/…` needs an admin
//! key; the read endpoints (`/v1/usage/records|summary|export`) a key with
//! the `read` permission, every other `/v1/…` path one with `write`
//! (SPEC §10; 403 `permission_denied`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use auth::{KeyRing, Lookup, Principal, Scope};
use http::{Request, Response, header};
use tower::{Layer, Service, ServiceExt};

use crate::ApiError;
use crate::limit_layer::{ORGANIZATION_HEADER, Organization};

/// Puts [`AuthService`] in front of a service.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    ring: Arc<KeyRing>,
}

impl AuthLayer {
    pub fn new(ring: Arc<KeyRing>) -> Self {
        AuthLayer { ring }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, ring: self.ring.clone() }
    }
}

/// Checks the key, then calls the inner service with the [`Principal`] and
/// [`Organization`] in the request's extensions, or answers 401/403.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    ring: Arc<KeyRing>,
}

type Reply = Response<crate::body::Body>;

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Reply> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, S::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Made ready in `call` (see the rate-limit layer): a refused request
        // holds nothing.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let path = req.uri().path();
        let admin = path.starts_with("/admin/");
        if !admin && !path.starts_with("/v1/") {
            return Box::pin(inner.oneshot(req));
        }
        let principal = match authenticate(&self.ring, &req) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!("ingestd_auth_failures_total", "code" => e.code()).increment(1);
                return Box::pin(std::future::ready(Ok(e.into_response())));
            }
        };
        if admin && principal.scope != Scope::Admin {
            return Box::pin(std::future::ready(Ok(ApiError::AdminScopeRequired.into_response())));
        }
        // SPEC §10: reading needs `read`, ingesting `write` (admin keys may do both).
        let denied = if crate::read::is_read_path(path) {
            (!principal.may_read()).then_some(ApiError::PermissionDenied { needed: "read", action: "read usage" })
        } else {
            (!admin && !principal.may_ingest())
                .then_some(ApiError::PermissionDenied { needed: "write", action: "ingest records" })
        };
        if let Some(e) = denied {
            return Box::pin(std::future::ready(Ok(e.into_response())));
        }
        let organization = match (principal.scope, &principal.organization) {
            (Scope::Org, Some(org)) => Some(org.clone()),
            _ if req.headers().contains_key(ORGANIZATION_HEADER) => None,
            _ => Some(principal.key_id.to_string()),
        };
        if let Some(org) = organization {
            req.extensions_mut().insert(Organization(org));
        }
        req.extensions_mut().insert(principal);
        Box::pin(inner.oneshot(req))
    }
}

fn authenticate<B>(ring: &KeyRing, req: &Request<B>) -> Result<Arc<Principal>, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or(ApiError::MissingApiKey)?;
    let value = value.to_str().map_err(|_| ApiError::MalformedAuthorization)?;
    let (scheme, key) = value.trim().split_once(' ').ok_or(ApiError::MalformedAuthorization)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MalformedAuthorization);
    }
    match ring.lookup(key.trim()) {
        Lookup::Found(principal) => Ok(principal),
        Lookup::Unknown => Err(ApiError::UnknownApiKey),
        Lookup::Malformed(e) => Err(ApiError::MalformedApiKey { reason: e.to_string() }),
    }
}
