//! The router and the handlers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::Principal;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use model::decode::Rejected;
use model::{
    Deadline, ErrorCode, FieldError, IngestReport, IngestionResponse, RecordOutcome, RecordSink, Source, UsageRecord,
    decode, ids,
};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::json_response;
use crate::{ApiError, AppState, body};

/// Every route: (path, allowed methods). `/openapi.json` documents each one;
/// a test holds the two together.
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("/health", "GET"),
    ("/health/ready", "GET"),
    ("/v1/usage", "POST"),
    ("/v1/usage/batch", "POST"),
    (crate::otlp::TRACES, "POST"),
    (crate::read::RECORDS, "GET"),
    (crate::read::SUMMARY, "GET"),
    (crate::read::EXPORT, "GET"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
];

type Resp = Response<crate::body::Body>;

pub(crate) async fn handle<S: RecordSink>(state: Arc<AppState<S>>, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let route = ROUTES.iter().find(|(p, _)| *p == path);
    let label = route.map_or(if path.starts_with("/admin/") { "admin" } else { "other" }, |(p, _)| *p);
    let secs = state.config.request_timeout_secs;
    let response = match (route, state.admin.as_deref()) {
        (None, Some(admin)) if path.starts_with("/admin/") => timed(secs, crate::admin::dispatch(admin, req)).await,
        (None, _) => ApiError::NotFound { path }.into_response(),
        (Some((_, allow)), _)
            if req.method().as_str() != *allow && !(req.method() == Method::HEAD && *allow == "GET") =>
        {
            ApiError::MethodNotAllowed { method: req.method().to_string(), allow }.into_response()
        }
        // Ingestion keeps its own time: its deadline stops waiting for a
        // commit that has not begun, never for one under way (SPEC §2: a
        // 503 means nothing was or will be committed).
        (Some((p @ ("/v1/usage" | "/v1/usage/batch"), _)), _) => {
            let kind = if *p == "/v1/usage" { Kind::Single } else { Kind::Batch };
            let deadline = Deadline { at: started + Duration::from_secs(secs), secs };
            caught(ingest(&state, req, kind, deadline)).await
        }
        (Some((crate::otlp::TRACES, _)), _) => {
            let deadline = Deadline { at: started + Duration::from_secs(secs), secs };
            caught(crate::otlp::traces(&state, req, deadline)).await
        }
        (Some((p, _)), _) if crate::read::is_read_path(p) => timed(secs, read(&state, req, p)).await,
        (Some((p, _)), _) => timed(secs, dispatch(&state, p)).await,
    };
    metrics::counter!("ingestd_http_requests_total", "route" => label, "status" => response.status().as_str().to_owned())
        .increment(1);
    metrics::histogram!("ingestd_http_request_duration_seconds", "route" => label)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Runs a handler under the request timeout (503 `timeout` past it).
async fn timed(secs: u64, handler: impl std::future::Future<Output = Result<Resp, ApiError>>) -> Resp {
    match tokio::time::timeout(Duration::from_secs(secs), caught(handler)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout { secs }.into_response(),
    }
}

/// Runs a handler, turning a panic into a 500 `internal_error` (logged and
/// counted in `ingestd_panics_total`) instead of a dropped connection. A
/// panic is a defect of ingestd, never the client's fault; the process
/// keeps serving.
async fn caught(handler: impl std::future::Future<Output = Result<Resp, ApiError>>) -> Resp {
    use futures::FutureExt as _;
    match std::panic::AssertUnwindSafe(handler).catch_unwind().await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => e.into_response(),
        Err(panic) => {
            let what = model::panic_message(&*panic);
            tracing::error!(panic = %what, "a request handler panicked");
            metrics::counter!("ingestd_panics_total", "where" => "http").increment(1);
            ApiError::Internal.into_response()
        }
    }
}

/// The read endpoints (`read.rs`); the key layer checked the permission.
async fn read<S>(state: &AppState<S>, req: Request<Incoming>, path: &str) -> Result<Resp, ApiError> {
    let principal = req.extensions().get::<Arc<Principal>>().cloned();
    if state.keys.is_some() && principal.is_none() {
        return Err(ApiError::MissingApiKey);
    }
    let (reader, principal) = (state.reader.as_ref(), principal.as_deref());
    match path {
        crate::read::RECORDS => crate::read::records(reader, req, principal).await,
        crate::read::SUMMARY => crate::read::summary(reader, req, principal).await,
        _ => crate::read::export(reader, req, principal).await,
    }
}

async fn dispatch<S: RecordSink>(state: &AppState<S>, path: &str) -> Result<Resp, ApiError> {
    match path {
        "/health" => Ok(health(state)),
        "/health/ready" => Ok(ready(state).await),
        "/metrics" => {
            for (name, component) in &state.components {
                component.record_gauges(name);
            }
            Ok(text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", (state.metrics)()))
        }
        "/openapi.json" => Ok(text(StatusCode::OK, "application/json", crate::OPENAPI.to_owned())),
        _ => Err(ApiError::NotFound { path: path.to_owned() }),
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

fn health<S>(state: &AppState<S>) -> Resp {
    json_response(
        StatusCode::OK,
        &json!({ "status": "healthy", "service": "ingestd", "version": state.version, "timestamp": now_rfc3339() }),
    )
}

async fn ready<S>(state: &AppState<S>) -> Resp {
    let mut components = serde_json::Map::new();
    let mut ok = true;
    for (name, component) in &state.components {
        let result = tokio::time::timeout(Duration::from_secs(2), component.readiness()).await;
        let status = match result {
            Ok(Ok(None)) => json!({ "status": "up" }),
            Ok(Ok(Some(state))) => json!({ "status": "up", "state": state }),
            Ok(Err(e)) => {
                ok = false;
                json!({ "status": "down", "error": e })
            }
            Err(_) => {
                ok = false;
                json!({ "status": "down", "error": "no answer within 2 s" })
            }
        };
        components.insert((*name).to_owned(), status);
    }
    let (status, word) = if ok { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not_ready") };
    json_response(status, &json!({ "status": word, "components": components, "timestamp": now_rfc3339() }))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut response = Response::new(crate::body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Batch,
}

async fn ingest<S: RecordSink>(
    state: &AppState<S>,
    req: Request<Incoming>,
    kind: Kind,
    deadline: Deadline,
) -> Result<Resp, ApiError> {
    let limit = state.config.max_body_bytes;
    body::check_headers(req.headers(), limit)?;
    let (parts, incoming) = req.into_parts();
    // Set by the API-key layer; absent with `auth.mode = "none"`. With keys
    // on, a request without one never gets here; should it, it is refused.
    let principal = parts.extensions.get::<Arc<Principal>>().cloned();
    if state.keys.is_some() && principal.is_none() {
        return Err(ApiError::MissingApiKey);
    }
    let idempotency = idempotency_key(&parts.headers, principal.as_deref())?;
    let bytes = tokio::time::timeout_at(deadline.at.into(), body::read(&parts.headers, incoming, limit))
        .await
        .map_err(|_| ApiError::Timeout { secs: deadline.secs })??;
    if let Some(secret) = principal.as_ref().and_then(|p| p.signing_secret.as_ref()) {
        verify_signature(secret, &parts.headers, &bytes)?;
    }

    // Records without a `request_id`: with an idempotency key, an id derived
    // from it, so a retried request maps to the same rows; else a fresh v7.
    let caller: &[u8] = principal.as_ref().map_or(&[], |p| p.key_id.as_bytes());
    let default_id = |i: usize, record: &UsageRecord| match &idempotency {
        Some((kind, key)) => idempotent_id(kind, caller, key, record, i),
        None => ids::generate(),
    };
    // Decoding borrows the body; it is finished before the first await below.
    let (response_id, mut decoded) = match kind {
        Kind::Single => {
            let raw = decode::single(&bytes)?;
            let decoded = state.ingestor.decode_with(&[raw], default_id);
            let id = match &decoded[0] {
                Ok(r) => Some(r.request_id),
                Err(rejected) => rejected.request_id,
            };
            (id.unwrap_or_else(ids::generate), decoded)
        }
        Kind::Batch => {
            let max = state.config.max_batch_size;
            let envelope = decode::batch(&bytes, max)?;
            if envelope.records.is_empty() {
                return Err(ApiError::EmptyBatch { max });
            }
            let decoded = state.ingestor.decode_with(&envelope.records, default_id);
            (envelope.batch_id.unwrap_or_else(ids::generate), decoded)
        }
    };
    drop(bytes);
    if let Some(principal) = &principal {
        forbid_foreign_records(principal, &mut decoded);
    }

    let report = state.ingestor.store_before(decoded, Source::Http, deadline).await?;
    count_records(&report, Source::Http);
    let status = status_for(&report, kind);
    let body = IngestionResponse::new(response_id, &report, OffsetDateTime::now_utc());
    Ok(json_response(status, &body))
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's idempotency key, with the header it came from: a signed
/// request's `webhook-id` (covered by the signature, unlike any other
/// header, so a replayed request cannot be made to look new); otherwise
/// `Idempotency-Key`.
fn idempotency_key(
    headers: &http::HeaderMap,
    principal: Option<&Principal>,
) -> Result<Option<(&'static str, String)>, ApiError> {
    if principal.is_some_and(|p| p.signing_secret.is_some()) {
        // Verified before any record is decoded; absent → 401 there.
        return Ok(headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .map(|id| ("webhook-id", id.trim().to_owned())));
    }
    if let Some(value) = headers.get(IDEMPOTENCY_KEY) {
        let invalid = |rule| ApiError::InvalidIdempotencyKey { rule };
        let key = value.to_str().map_err(|_| invalid("must be visible ASCII"))?.trim();
        if key.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(invalid("must be at most 255 characters"));
        }
        return Ok(Some((IDEMPOTENCY_KEY, key.to_owned())));
    }
    Ok(None)
}

/// The id of the record at `index` of a request with an idempotency key:
/// a UUID v8 whose first 48 bits are the record's own timestamp (so ids stay
/// roughly time-ordered, as v7 ids are) and the rest a hash of the
/// organization, the calling API key's id (empty with auth off), the
/// idempotency key and the index. The API key's id keeps two clients of one
/// organization that happen to pick the same idempotency key apart.
fn idempotent_id(header: &str, caller: &[u8], key: &str, record: &UsageRecord, index: usize) -> uuid::Uuid {
    let ms = u64::try_from(record.timestamp.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let index = index.to_string();
    ids::derived_ordered(
        ms,
        &[b"http", header.as_bytes(), record.organization_id.as_bytes(), caller, key.as_bytes(), index.as_bytes()],
    )
}

pub(crate) fn verify_signature(
    secret: &auth::SigningSecret,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = auth::webhook::Headers {
        id: text("webhook-id"),
        timestamp: text("webhook-timestamp"),
        signature: text("webhook-signature"),
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    secret.verify(&signed, body, now).map_err(|e| {
        metrics::counter!("ingestd_auth_failures_total", "code" => "invalid_signature").increment(1);
        ApiError::InvalidSignature { reason: e.to_string() }
    })
}

/// An organization key writes only its own organization's records: the
/// others are rejected one by one (`organization_forbidden`).
pub(crate) fn forbid_foreign_records(principal: &Principal, decoded: &mut [Result<UsageRecord, Rejected>]) {
    for item in decoded.iter_mut() {
        if let Ok(record) = item
            && !principal.may_write(&record.organization_id)
        {
            let message = format!(
                "this API key writes only for organization {:?}, not {:?}",
                principal.organization.as_deref().unwrap_or(""),
                record.organization_id
            );
            *item = Err(Rejected {
                request_id: Some(record.request_id),
                errors: vec![FieldError::new("organization_id", ErrorCode::OrganizationForbidden, message)],
            });
        }
    }
}

/// SPEC §2: 200 all stored (duplicates included); 207 some stored, some
/// rejected; 422 none stored; 403 when every rejection is a forbidden
/// organization.
fn status_for(report: &IngestReport, kind: Kind) -> StatusCode {
    let rejected = report.rejected();
    let stored = report.accepted() + report.duplicates();
    if rejected == 0 {
        return StatusCode::OK;
    }
    if stored > 0 && kind == Kind::Batch {
        return StatusCode::MULTI_STATUS;
    }
    let all_forbidden = report.outcomes.iter().all(|o| match o {
        RecordOutcome::Rejected(r) => r.errors.iter().all(|e| e.code == ErrorCode::OrganizationForbidden),
        _ => true,
    });
    if all_forbidden { StatusCode::FORBIDDEN } else { StatusCode::UNPROCESSABLE_ENTITY }
}

pub(crate) fn count_records(report: &IngestReport, source: Source) {
    for (outcome, n) in
        [("accepted", report.accepted()), ("duplicate", report.duplicates()), ("rejected", report.rejected())]
    {
        if n > 0 {
            metrics::counter!("ingestd_records_total", "source" => source.as_str(), "outcome" => outcome)
                .increment(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ROUTES;

    /// `/openapi.json` documents exactly the routes the router serves, with
    /// the status codes SPEC §2 promises.
    #[test]
    fn openapi_agrees_with_the_router() {
        let doc: serde_json::Value = serde_json::from_str(crate::OPENAPI).expect("docs/openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(&str, String)> = paths
            .iter()
            .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (p.as_str(), m.to_uppercase())))
            .collect();
        documented.sort();
        let mut served: Vec<(&str, String)> = ROUTES.iter().map(|(p, m)| (*p, m.to_string())).collect();
        for (p, methods) in crate::admin::ADMIN_ROUTES {
            served.extend(methods.split(", ").map(|m| (*p, m.to_owned())));
        }
        served.sort();
        assert_eq!(documented, served);
        for path in ["/v1/usage", "/v1/usage/batch"] {
            let responses = doc["paths"][path]["post"]["responses"].as_object().unwrap();
            for status in ["200", "400", "401", "403", "413", "415", "422", "503"] {
                assert!(responses.contains_key(status), "{path} does not document {status}");
            }
        }
        assert!(doc["paths"]["/v1/usage/batch"]["post"]["responses"].get("207").is_some());
    }
}
