//! The rate-limit layer (SPEC §4): one check per ingestion request, before
//! its body is read.
//!
//! The organization is the one the API-key layer ([`crate::key_layer`]) put in the
//! request's extensions ([`Organization`]); otherwise the `X-Organization-Id`
//! header; otherwise `anonymous`. It is never taken from the body, which nobody has
//! vouched for. Only `/v1/…` ingestion is limited: probes, metrics, the API
//! description and the read endpoints (`/v1/usage/records|summary|export`)
//! are not.
//!
//! Every response under the limiter carries `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining`, `X-RateLimit-Reset` and the IETF
//! `RateLimit-Policy` / `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-10). A refusal is a 429 with
//! `Retry-After` and a JSON body, and the request never reaches the handler,
//! so nothing is stored.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use ratelimit::{Decision, DecisionTally, Limiter, Policy, RateLimiter};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::{Layer, Service, ServiceExt};

use crate::ApiError;
use crate::error::json_response;

/// Names the organization of a request that is not authenticated as one.
pub const ORGANIZATION_HEADER: HeaderName = HeaderName::from_static("x-organization-id");
/// The key of requests that name no organization.
pub const ANONYMOUS: &str = "anonymous";
/// Longest accepted organization id, as for records.
const MAX_ORGANIZATION_LEN: usize = 256;

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The organization an authentication layer established for a request.
/// When present in the request's extensions it decides the rate-limit key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Organization(pub String);

/// Puts [`RateLimitService`] in front of a service.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
    decisions: Option<Arc<DecisionTally>>,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        RateLimitLayer { limiter, decisions: None }
    }

    /// Also counts every decision in `decisions` (by organization), for the
    /// service to store (`GET /admin/v1/orgs/{org}/rate-limit` shows them).
    pub fn counting(mut self, decisions: Option<Arc<DecisionTally>>) -> Self {
        self.decisions = decisions;
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService { inner, limiter: self.limiter.clone(), decisions: self.decisions.clone() }
    }
}

/// Checks the organization's budget, then calls the inner service or
/// answers 429; adds the rate-limit headers either way.
#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: Arc<Limiter>,
    decisions: Option<Arc<DecisionTally>>,
}

type Reply = Response<crate::body::Body>;

impl<S, B> Service<Request<B>> for RateLimitService<S>
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
        // The inner service is made ready in `call`, after the check, so a
        // request waiting on the limiter holds no concurrency permit.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        // Reads do not spend the organization's ingestion allowance.
        let path = req.uri().path();
        if !path.starts_with("/v1/") || crate::read::is_read_path(path) {
            return Box::pin(inner.oneshot(req));
        }
        let organization = match organization(&req) {
            Ok(org) => org,
            Err(e) => return Box::pin(std::future::ready(Ok(e.into_response()))),
        };
        let (limiter, decisions) = (self.limiter.clone(), self.decisions.clone());
        Box::pin(async move {
            let backend = limiter.backend_name();
            let decision = match limiter.check(&organization, 1).await {
                Ok(decision) => decision,
                Err(e) => {
                    metrics::counter!("ingestd_rate_limit_decisions_total", "result" => "error", "backend" => backend)
                        .increment(1);
                    tracing::warn!(error = %e, organization, "rate limiter failed; refusing the request");
                    return Ok(ApiError::RateLimiterUnavailable.into_response());
                }
            };
            let result = if decision.is_allowed() { "allowed" } else { "limited" };
            metrics::counter!("ingestd_rate_limit_decisions_total", "result" => result, "backend" => backend)
                .increment(1);
            let (name, policy) = policy_of(limiter.registry(), &organization);
            if !decision.is_allowed() {
                metrics::counter!("ingestd_rate_limit_refusals_total", "policy" => name).increment(1);
            }
            if let Some(decisions) = &decisions {
                decisions.record(&organization, decision.is_allowed());
            }
            let mut response = match decision {
                Decision::Allowed { .. } => inner.oneshot(req).await?,
                Decision::Limited { .. } => too_many_requests(&organization, &decision),
            };
            set_headers(response.headers_mut(), name, &policy, &decision);
            Ok(response)
        })
    }
}

/// The rate-limit key of a request (see the module documentation).
fn organization<B>(req: &Request<B>) -> Result<String, ApiError> {
    if let Some(Organization(org)) = req.extensions().get::<Organization>() {
        return Ok(org.clone());
    }
    Ok(organization_header(req.headers())?.unwrap_or_else(|| ANONYMOUS.to_owned()))
}

/// The `X-Organization-Id` header, trimmed, when a request sends one: 400
/// `invalid_organization_header` when it is not visible ASCII, empty, or
/// longer than an organization id may be. The one reading of the header, for
/// the rate limit and for `POST /v1/traces`.
pub(crate) fn organization_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(ORGANIZATION_HEADER) else {
        return Ok(None);
    };
    let invalid = |rule: &str| ApiError::InvalidOrganizationHeader { rule: rule.to_owned() };
    let org = value.to_str().map_err(|_| invalid("must be visible ASCII"))?.trim();
    if org.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if org.len() > MAX_ORGANIZATION_LEN {
        return Err(invalid(&format!("must be at most {MAX_ORGANIZATION_LEN} bytes")));
    }
    Ok(Some(org.to_owned()))
}

/// The policy deciding `organization` and its name in `RateLimit-Policy`.
fn policy_of(registry: &ratelimit::PolicyRegistry, organization: &str) -> (&'static str, Policy) {
    match registry.override_for(organization) {
        Some(policy) => ("organization", policy),
        None => ("default", registry.default_policy()),
    }
}

fn too_many_requests(organization: &str, decision: &Decision) -> Reply {
    let retry = decision.retry_after_secs().unwrap_or(1).max(1);
    let timestamp = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    let body = json!({
        "error": "Rate limit exceeded",
        "code": "rate_limited",
        "organization_id": organization,
        "retry_after_seconds": retry,
        "timestamp": timestamp,
    });
    let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
    response
}

/// The headers of SPEC §4. `RateLimit-Policy` advertises the capacity `C` as
/// the quota over the policy's window; `RateLimit` the requests still
/// admitted now and the seconds until the bucket is full again.
fn set_headers(headers: &mut HeaderMap, name: &'static str, policy: &Policy, decision: &Decision) {
    let reset = decision.reset_secs();
    headers.insert(LIMIT, HeaderValue::from(decision.limit()));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining()));
    headers.insert(RESET, HeaderValue::from(reset));
    let window = policy.window().as_secs_f64().ceil() as u64;
    let fields = [
        (POLICY, format!("\"{name}\";q={};w={window}", policy.capacity())),
        (RATELIMIT, format!("\"{name}\";r={};t={reset}", decision.remaining())),
    ];
    for (field, value) in fields {
        // Digits, quotes and ASCII names only: always a valid header value.
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(field, value);
        }
    }
}

/// The limiter as a [`Component`](model::Component): unready only while it
/// refuses every request (`fail_mode = "closed"` without Redis); deciding
/// locally or admitting everything keeps the service ready. Its gauges are
/// the fallback state and count and the in-memory key count.
pub struct LimiterHealth(pub Arc<Limiter>);

impl model::Component for LimiterHealth {
    fn readiness(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = model::Readiness> + Send + '_>> {
        Box::pin(async move {
            let limiter = &self.0;
            // An unready service gets no requests to close the breaker.
            limiter.probe().await;
            match (limiter.refusing(), limiter.fallback_active()) {
                (true, _) => Err("rate limiter: redis unreachable; fail_mode = \"closed\" refuses requests".into()),
                (false, true) => Ok(Some(format!("{}: fallback (deciding per fail_mode)", limiter.backend_name()))),
                (false, false) => Ok(Some(limiter.backend_name().to_owned())),
            }
        })
    }

    fn record_gauges(&self, _name: &'static str) {
        let limiter = &self.0;
        let backend = limiter.backend_name();
        metrics::gauge!("ingestd_rate_limit_fallback_active", "backend" => backend).set(if limiter.fallback_active() {
            1.0
        } else {
            0.0
        });
        metrics::counter!("ingestd_rate_limit_fallbacks_total", "backend" => backend)
            .absolute(limiter.fallback_count());
        metrics::gauge!("ingestd_rate_limit_memory_keys").set(limiter.memory_keys() as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::convert::Infallible;

    use ratelimit::{ManualClock, MemoryConfig, MemoryLimiter, PolicyRegistry};
    use tower::service_fn;

    use super::*;

    fn limiter(policy: Policy) -> (Arc<Limiter>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let registry = Arc::new(PolicyRegistry::new(policy));
        let memory = MemoryLimiter::with_config(registry, clock.clone(), MemoryConfig::default());
        (Arc::new(Limiter::Memory(memory)), clock)
    }

    fn service(limiter: Arc<Limiter>) -> impl Service<Request<()>, Response = Reply, Error = Infallible> + Clone {
        RateLimitLayer::new(limiter).layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(crate::body::full(&b"stored"[..])))
        }))
    }

    fn post(org: Option<&str>) -> Request<()> {
        let mut req = Request::post("/v1/usage");
        if let Some(org) = org {
            req = req.header("x-organization-id", org);
        }
        req.body(()).unwrap()
    }

    fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
        r.headers().get(name).unwrap_or_else(|| panic!("missing {name}")).to_str().unwrap()
    }

    #[tokio::test]
    async fn headers_count_down_then_429_golden() {
        // 60/min, burst 6: C = 66, T = 1 s.
        let (limiter, clock) = limiter(Policy::per_minute(60).unwrap());
        let svc = service(limiter);
        let first = svc.clone().oneshot(post(Some("org-a"))).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(header(&first, "x-ratelimit-limit"), "66");
        assert_eq!(header(&first, "x-ratelimit-remaining"), "65");
        assert_eq!(header(&first, "x-ratelimit-reset"), "1");
        assert_eq!(header(&first, "ratelimit-policy"), "\"default\";q=66;w=60");
        assert_eq!(header(&first, "ratelimit"), "\"default\";r=65;t=1");
        for _ in 1..66 {
            assert_eq!(svc.clone().oneshot(post(Some("org-a"))).await.unwrap().status(), StatusCode::OK);
        }
        let refused = svc.clone().oneshot(post(Some("org-a"))).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "retry-after"), "1");
        assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
        assert_eq!(header(&refused, "x-ratelimit-reset"), "66");
        assert_eq!(header(&refused, "ratelimit"), "\"default\";r=0;t=66");
        let body = http_body_util::BodyExt::collect(refused.into_body()).await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "Rate limit exceeded");
        assert_eq!(body["organization_id"], "org-a");
        assert_eq!(body["retry_after_seconds"], 1);
        assert!(OffsetDateTime::parse(body["timestamp"].as_str().unwrap(), &Rfc3339).is_ok());
        // Another organization has its own bucket; time refills this one.
        assert_eq!(svc.clone().oneshot(post(Some("org-b"))).await.unwrap().status(), StatusCode::OK);
        clock.advance(Duration::from_secs(1));
        assert_eq!(svc.clone().oneshot(post(Some("org-a"))).await.unwrap().status(), StatusCode::OK);
        assert_eq!(svc.clone().oneshot(post(Some("org-a"))).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn override_is_named_in_the_policy_header() {
        let (limiter, _) = limiter(Policy::per_minute(60).unwrap());
        limiter.set_org_limit("big", Policy::new(1000, Duration::from_secs(3600), 0).unwrap());
        let svc = service(limiter.clone());
        let r = svc.clone().oneshot(post(Some("big"))).await.unwrap();
        assert_eq!(header(&r, "ratelimit-policy"), "\"organization\";q=1000;w=3600");
        assert_eq!(header(&r, "x-ratelimit-limit"), "1000");
        limiter.remove_org_limit("big");
        let r = svc.oneshot(post(Some("big"))).await.unwrap();
        assert_eq!(header(&r, "ratelimit-policy"), "\"default\";q=66;w=60");
    }

    #[tokio::test]
    async fn extension_wins_over_header_and_anonymous_is_the_fallback() {
        let (limiter, _) = limiter(Policy::new(1, Duration::from_secs(60), 0).unwrap()); // C = 1
        let svc = service(limiter);
        assert_eq!(svc.clone().oneshot(post(None)).await.unwrap().status(), StatusCode::OK);
        assert_eq!(svc.clone().oneshot(post(None)).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
        // The header says "anonymous"'s neighbour, the extension says "x": the extension decides.
        let mut req = post(Some("anonymous"));
        req.extensions_mut().insert(Organization("x".into()));
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn probes_are_not_limited_and_bad_headers_are_400() {
        let (limiter, _) = limiter(Policy::new(1, Duration::from_secs(60), 0).unwrap());
        let svc = service(limiter);
        for _ in 0..5 {
            let r = svc.clone().oneshot(Request::get("/health").body(()).unwrap()).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert!(r.headers().get("x-ratelimit-limit").is_none());
        }
        let long = "o".repeat(257);
        for bad in ["  ", long.as_str()] {
            let r = svc.clone().oneshot(post(Some(bad))).await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let mut req = post(None);
        req.headers_mut().insert("x-organization-id", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), StatusCode::BAD_REQUEST);
        // None of the refused requests used the budget.
        assert_eq!(svc.oneshot(post(None)).await.unwrap().status(), StatusCode::OK);
    }
}
