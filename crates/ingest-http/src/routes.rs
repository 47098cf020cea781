//! The router and the handlers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use model::{ErrorCode, IngestReport, IngestionResponse, RecordOutcome, RecordSink, Source, decode, ids};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::json_response;
use crate::server::AppState;
use crate::{ApiError, body};

/// Every route: (path, allowed methods). `/openapi.json` documents each one;
/// a test holds the two together.
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("/health", "GET"),
    ("/health/ready", "GET"),
    ("/v1/usage", "POST"),
    ("/v1/usage/batch", "POST"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
];

type Resp = Response<Full<Bytes>>;

pub(crate) async fn handle<S: RecordSink>(state: Arc<AppState<S>>, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let route = ROUTES.iter().find(|(p, _)| *p == path);
    let label = route.map_or("other", |(p, _)| *p);
    let response = match route {
        None => ApiError::NotFound { path }.into_response(),
        Some((_, allow)) if req.method().as_str() != *allow && !(req.method() == Method::HEAD && *allow == "GET") => {
            ApiError::MethodNotAllowed { method: req.method().to_string(), allow }.into_response()
        }
        Some((p, _)) => {
            let timeout = Duration::from_secs(state.config.request_timeout_secs);
            match tokio::time::timeout(timeout, dispatch(&state, p, req)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => e.into_response(),
                Err(_) => ApiError::Timeout { secs: state.config.request_timeout_secs }.into_response(),
            }
        }
    };
    metrics::counter!("ingestd_http_requests_total", "route" => label, "status" => response.status().as_str().to_owned())
        .increment(1);
    metrics::histogram!("ingestd_http_request_duration_seconds", "route" => label)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn dispatch<S: RecordSink>(state: &AppState<S>, path: &str, req: Request<Incoming>) -> Result<Resp, ApiError> {
    match path {
        "/health" => Ok(health(state)),
        "/health/ready" => Ok(ready(state).await),
        "/v1/usage" => ingest(state, req, Kind::Single).await,
        "/v1/usage/batch" => ingest(state, req, Kind::Batch).await,
        "/metrics" => Ok(text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", (state.metrics)())),
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
    for (name, check) in &state.readiness {
        let result = tokio::time::timeout(Duration::from_secs(2), check()).await;
        let status = match result {
            Ok(Ok(())) => json!({ "status": "up" }),
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
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Batch,
}

async fn ingest<S: RecordSink>(state: &AppState<S>, req: Request<Incoming>, kind: Kind) -> Result<Resp, ApiError> {
    let limit = state.config.max_body_bytes;
    body::check_headers(req.headers(), limit)?;
    let (parts, incoming) = req.into_parts();
    let bytes = body::read(&parts.headers, incoming, limit).await?;

    // Decoding borrows the body; it is finished before the first await below.
    let (response_id, decoded) = match kind {
        Kind::Single => {
            let raw = decode::single(&bytes)?;
            let decoded = state.ingestor.decode(&[raw], |_| ids::generate());
            let id = match &decoded[0] {
                Ok(r) => Some(r.request_id),
                Err(rejected) => rejected.request_id,
            };
            (id.unwrap_or_else(ids::generate), decoded)
        }
        Kind::Batch => {
            let envelope = decode::batch(&bytes)?;
            let max = state.config.max_batch_size;
            match envelope.records.len() {
                0 => return Err(ApiError::EmptyBatch { max }),
                n if n > max => return Err(ApiError::BatchTooLarge { count: n, max }),
                _ => {}
            }
            let decoded = state.ingestor.decode(&envelope.records, |_| ids::generate());
            (envelope.batch_id.unwrap_or_else(ids::generate), decoded)
        }
    };
    drop(bytes);

    let report = state.ingestor.store(decoded, Source::Http).await?;
    count_records(&report);
    let status = status_for(&report, kind);
    let body = IngestionResponse::new(response_id, &report, OffsetDateTime::now_utc());
    Ok(json_response(status, &body))
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

fn count_records(report: &IngestReport) {
    for (outcome, n) in
        [("accepted", report.accepted()), ("duplicate", report.duplicates()), ("rejected", report.rejected())]
    {
        if n > 0 {
            metrics::counter!("ingestd_records_total", "source" => "http", "outcome" => outcome).increment(n as u64);
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
        served.sort();
        assert_eq!(documented, served);
        for path in ["/v1/usage", "/v1/usage/batch"] {
            let responses = doc["paths"][path]["post"]["responses"].as_object().unwrap();
            for status in ["200", "400", "403", "413", "415", "422", "503"] {
                assert!(responses.contains_key(status), "{path} does not document {status}");
            }
        }
        assert!(doc["paths"]["/v1/usage/batch"]["post"]["responses"].get("207").is_some());
    }
}
