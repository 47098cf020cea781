//! `POST /v1/traces` (SPEC §11): OTLP/HTTP trace export, protobuf or JSON.
//!
//! The same path as `/v1/usage/batch` from the body on: API key and rate
//! limit in the layers, the body limit after decompression, then
//! `otlp::usage_spans` maps each span that carries token usage to a record
//! in ingestd's JSON, the one record decoder validates it, the writer stores
//! it (`source = otlp`). The answer is an `ExportTraceServiceResponse` in
//! the request's encoding; rejected usage spans are counted in its
//! `partial_success`, spans without usage are not rejections.

use std::sync::Arc;

use auth::{Principal, Scope};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use model::decode::Rejected;
use model::{Deadline, ErrorCode, FieldError, IngestReport, RecordOutcome, RecordSink, Source, UsageRecord};
use serde_json::value::RawValue;

use crate::{ApiError, AppState, body};

pub(crate) const TRACES: &str = "/v1/traces";

type Resp = Response<crate::body::Body>;

pub(crate) async fn traces<S: RecordSink>(
    state: &AppState<S>,
    req: Request<Incoming>,
    deadline: Deadline,
) -> Result<Resp, ApiError> {
    let limit = state.config.max_body_bytes;
    let encoding =
        body::check_media(req.headers(), limit, otlp::Encoding::MEDIA_TYPES, otlp::Encoding::from_media_type)?;
    let (parts, incoming) = req.into_parts();
    let principal = parts.extensions.get::<Arc<Principal>>().cloned();
    if state.keys.is_some() && principal.is_none() {
        return Err(ApiError::MissingApiKey);
    }
    let bytes = tokio::time::timeout_at(deadline.at.into(), body::read(&parts.headers, incoming, limit))
        .await
        .map_err(|_| ApiError::Timeout { secs: deadline.secs })??;
    // A key that demands signatures demands them here too (an OTel
    // exporter cannot sign; give it a key without a signing secret).
    if let Some(secret) = principal.as_ref().and_then(|p| p.signing_secret.as_ref()) {
        crate::routes::verify_signature(secret, &parts.headers, &bytes)?;
    }
    let request = otlp::decode(&bytes, encoding).map_err(|e| match e {
        otlp::DecodeError::TooMany { .. } => ApiError::OtlpTooLarge(e.to_string()),
        otlp::DecodeError::Malformed { .. } => ApiError::MalformedOtlp(e.to_string()),
    })?;
    drop(bytes);

    // SPEC §11: an organization key's own organization, whatever the spans
    // say; otherwise the `X-Organization-Id` header; otherwise each
    // resource's `ingestd.organization_id`.
    let organization = match principal.as_deref() {
        Some(p) if p.scope == Scope::Org => p.organization.clone(),
        // Read as the rate limit reads it, whether or not the limit is on;
        // the rate limit takes a tab inside, an organization id does not.
        _ => match crate::limit_layer::organization_header(&parts.headers)? {
            Some(org) if org.contains('\t') => {
                return Err(ApiError::InvalidOrganizationHeader { rule: "must not hold a tab".into() });
            }
            org => org,
        },
    };
    let spans = otlp::usage_spans(&request, organization.as_deref());
    drop(request);

    let raw: Vec<&RawValue> = spans.usage.iter().filter_map(|s| s.record.as_deref().ok()).collect();
    let mut valid = state.ingestor.decode(&raw, |_| model::ids::generate()).into_iter();
    let mut decoded: Vec<Result<UsageRecord, Rejected>> = Vec::with_capacity(spans.usage.len());
    for span in &spans.usage {
        decoded.push(match &span.record {
            // One decoded record per mapped one, in order.
            Ok(_) => valid.next().unwrap_or_else(|| Err(rejected(ErrorCode::InvalidRecord, "not decoded".into()))),
            Err(problem) => Err(rejected(ErrorCode::InvalidSpanId, problem.to_string())),
        });
    }
    if let Some(principal) = &principal {
        crate::routes::forbid_foreign_records(principal, &mut decoded);
    }

    let report = state.ingestor.store_before(decoded, Source::Otlp, deadline).await?;
    crate::routes::count_records(&report, Source::Otlp);
    count_spans(&report, spans.without_usage);
    let rejected = report.rejected() as u64;
    let message = if rejected > 0 { explain(&report, &spans, rejected) } else { String::new() };
    if rejected > 0 {
        tracing::warn!(rejected, first = %message, "OTLP usage spans rejected");
    }
    let mut response = Response::new(crate::body::full(otlp::response(encoding, rejected, &message)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    Ok(response)
}

fn rejected(code: ErrorCode, message: String) -> Rejected {
    Rejected { request_id: None, errors: vec![FieldError::new("", code, message)] }
}

fn count_spans(report: &IngestReport, without_usage: u64) {
    let counts = [
        ("accepted", report.accepted() as u64),
        ("duplicate", report.duplicates() as u64),
        ("rejected", report.rejected() as u64),
        ("without_usage", without_usage),
    ];
    for (outcome, n) in counts {
        if n > 0 {
            metrics::counter!("ingestd_otlp_spans_total", "outcome" => outcome).increment(n);
        }
    }
}

/// `partial_success.error_message`: how many were rejected, and the first
/// one's span and problem (field, code, message).
fn explain(report: &IngestReport, spans: &otlp::Spans, rejected: u64) -> String {
    let total = spans.usage.len();
    let first = report.outcomes.iter().zip(&spans.usage).find_map(|(outcome, span)| match outcome {
        RecordOutcome::Rejected(r) => Some((span, r.errors.first())),
        _ => None,
    });
    let Some((span, Some(error))) = first else {
        return format!("{rejected} of {total} usage spans rejected");
    };
    let field = if error.field.is_empty() { String::new() } else { format!("{}: ", error.field) };
    let hint = match (error.field.as_str(), error.code) {
        ("organization_id", ErrorCode::MissingField) => {
            " (send the header X-Organization-Id, or the resource attribute ingestd.organization_id)"
        }
        _ => "",
    };
    format!(
        "{rejected} of {total} usage spans rejected; first: span {} of trace {}: {field}{} [{}]{hint}",
        span.span_id,
        span.trace_id,
        error.message,
        error.code.as_str()
    )
}
