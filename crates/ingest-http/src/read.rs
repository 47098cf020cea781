//! The read endpoints (SPEC §10; docs/api.md, "Reading usage"):
//! `GET /v1/usage/records`, `/v1/usage/summary` and `/v1/usage/export`.
//!
//! Who reads what: the key layer has already checked the `read`
//! permission. An organization key reads its own organization
//! (`organization_id` may be left out; another one is 403
//! `organization_forbidden`); service and admin keys, and every caller with
//! `auth.mode = "none"`, name it (400 otherwise).
//!
//! Parameters are checked here, all of them before storage is asked:
//! unknown or repeated parameters, bad times, limits or cursors are 400
//! `invalid_request` naming the parameter.

use std::collections::BTreeMap;
use std::sync::Arc;

use auth::{Principal, Scope};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use model::read::{BucketWidth, GroupBy, RecordPosition, StoredRecord, SummaryQuery, SummaryRow, Totals};
use model::{UsageFilter, UsageReader};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::ApiError;
use crate::body::Body;
use crate::error::json_response;

pub(crate) const RECORDS: &str = "/v1/usage/records";
pub(crate) const SUMMARY: &str = "/v1/usage/summary";
pub(crate) const EXPORT: &str = "/v1/usage/export";

/// Whether `path` is a read endpoint (they need the `read` permission and
/// do not spend the ingestion rate limit).
pub(crate) fn is_read_path(path: &str) -> bool {
    matches!(path, RECORDS | SUMMARY | EXPORT)
}

/// Rows per page of `/records`: default and most.
const RECORDS_DEFAULT: u32 = 100;
const RECORDS_MAX: u32 = 1_000;
/// Rows per storage read of an export.
const EXPORT_PAGE: u32 = 1_000;
/// Exports running at once in one process; one more is 503 `overloaded`
/// (each holds up to [`EXPORT_AHEAD`] + 2 pages: up to 16 KiB of metadata
/// per row makes a page at most ≈ 16 MiB).
const MAX_EXPORTS: usize = 4;
static EXPORTS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(MAX_EXPORTS)));
/// Pages an export may hold in memory ahead of the client.
const EXPORT_AHEAD: usize = 2;
/// The longest range `1m` buckets may cover (SPEC §10).
const MINUTE_RANGE_SECS: i64 = 6 * 3_600;

type Resp = Response<Body>;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest { message: message.into() }
}

/// The query string's parameters, each at most once (except `group_by`,
/// which may repeat), only those `allowed`.
fn params(req: &Request<impl Sized>, allowed: &[&str]) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let key = k.strip_suffix("[]").unwrap_or(&k);
        if !allowed.contains(&key) {
            return Err(invalid(format!("unknown parameter {key:?}; this endpoint takes {}", allowed.join(", "))));
        }
        let values = out.entry(key.to_owned()).or_default();
        if !values.is_empty() && key != "group_by" {
            return Err(invalid(format!("parameter {key:?} is given more than once")));
        }
        values.push(v.into_owned());
    }
    Ok(out)
}

fn one<'a>(params: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    params.get(key).and_then(|v| v.first()).map(String::as_str)
}

/// Unix seconds or RFC 3339.
fn time_param(params: &BTreeMap<String, Vec<String>>, key: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(text) = one(params, key) else { return Ok(None) };
    let bad = || invalid(format!("{key} {text:?} is neither Unix seconds nor an RFC 3339 time"));
    let t = if !text.is_empty() && text.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = text.parse().map_err(|_| bad())?;
        OffsetDateTime::from_unix_timestamp(secs).map_err(|_| bad())?
    } else {
        OffsetDateTime::parse(text, &Rfc3339).map_err(|_| bad())?
    };
    let t = t
        .checked_to_offset(time::UtcOffset::UTC)
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or_else(|| invalid(format!("{key} must fall in the years 1 to 9999 (UTC)")))?;
    // Stored times are whole microseconds (PostgreSQL's precision; the
    // decoder keeps no more on either backend): a bound inside a
    // microsecond is moved up to its end, so both backends select the same
    // rows.
    Ok(Some(ceil_micros(t)))
}

/// `t` rounded up to a whole microsecond.
fn ceil_micros(t: OffsetDateTime) -> OffsetDateTime {
    let sub = t.nanosecond() % 1_000;
    if sub == 0 { t } else { t.checked_add(time::Duration::nanoseconds(i64::from(1_000 - sub))).unwrap_or(t) }
}

/// The organization the caller may read, and the filters of every read.
fn filter(principal: Option<&Principal>, params: &BTreeMap<String, Vec<String>>) -> Result<UsageFilter, ApiError> {
    let asked = one(params, "organization_id").map(str::to_owned);
    if let Some(Err(rule)) = asked.as_deref().map(model::validate::check_organization_id) {
        return Err(invalid(format!("organization_id {rule}")));
    }
    // An empty filter would match nothing a summary can tell apart from
    // "none" (rollups group an empty project or user with none): refused.
    for key in ["provider", "model", "project_id", "user_id"] {
        if one(params, key).is_some_and(|v| v.trim().is_empty()) {
            return Err(invalid(format!("{key} must not be empty")));
        }
    }
    let organization_id = match principal {
        Some(p) if p.scope == Scope::Org => {
            let own = p.organization.clone().unwrap_or_default();
            match asked {
                Some(asked) if asked != own => return Err(ApiError::OrganizationForbidden { own, asked }),
                _ => own,
            }
        }
        _ => asked.ok_or_else(|| invalid("organization_id is required (only organization keys may leave it out)"))?,
    };
    let (from, to) = (time_param(params, "from")?, time_param(params, "to")?);
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(invalid("from must not be after to"));
    }
    let text = |key: &str| one(params, key).map(str::to_owned);
    Ok(UsageFilter {
        organization_id,
        from,
        to,
        // Records store the provider trimmed and lower-cased; so is the filter.
        provider: one(params, "provider").map(|p| p.trim().to_lowercase()),
        model: text("model"),
        project_id: text("project_id"),
        user_id: text("user_id"),
    })
}

const FILTERS: [&str; 7] = ["organization_id", "from", "to", "provider", "model", "project_id", "user_id"];

fn with_filters(extra: &[&'static str]) -> Vec<&'static str> {
    FILTERS.iter().chain(extra).copied().collect()
}

fn reader(reader: Option<&Arc<dyn UsageReader>>, path: &str) -> Result<Arc<dyn UsageReader>, ApiError> {
    reader.cloned().ok_or_else(|| ApiError::NotFound { path: path.to_owned() })
}

fn storage(e: model::read::ReadError) -> ApiError {
    tracing::warn!(error = %e, "a read failed");
    ApiError::StorageUnavailable
}

/// An opaque position: base64url of `v1:<unix nanos>:<uuid>`.
fn encode_cursor(p: RecordPosition) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", p.occurred_at.unix_timestamp_nanos(), p.request_id.simple()))
}

fn decode_cursor(text: &str) -> Result<RecordPosition, ApiError> {
    let bad = || invalid("cursor is not one this service gave out");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let mut parts = text.split(':');
    let (Some("v1"), Some(nanos), Some(id), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let nanos: i128 = nanos.parse().map_err(|_| bad())?;
    let occurred_at = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
    if !(1..=9999).contains(&occurred_at.year()) {
        return Err(bad());
    }
    Ok(RecordPosition { occurred_at, request_id: Uuid::try_parse(id).map_err(|_| bad())? })
}

/// `GET /v1/usage/records`.
pub(crate) async fn records(
    state_reader: Option<&Arc<dyn UsageReader>>,
    req: Request<impl Sized>,
    principal: Option<&Principal>,
) -> Result<Resp, ApiError> {
    let params = params(&req, &with_filters(&["limit", "cursor"]))?;
    let filter = filter(principal, &params)?;
    let limit = match one(&params, "limit") {
        None => RECORDS_DEFAULT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=RECORDS_MAX).contains(n))
            .ok_or_else(|| invalid(format!("limit must be a whole number from 1 to {RECORDS_MAX}")))?,
    };
    let after = one(&params, "cursor").map(decode_cursor).transpose()?;
    let reader = reader(state_reader, RECORDS)?;
    let mut rows = reader.records(filter, after, limit + 1).await.map_err(storage)?;
    let next_cursor = (rows.len() > limit as usize).then(|| {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.position()))
    });
    Ok(json_response(StatusCode::OK, &json!({ "object": "list", "data": rows, "next_cursor": next_cursor.flatten() })))
}

/// Buckets per page: (default, most) by width, as OpenAI's Usage API.
fn bucket_limits(width: BucketWidth) -> (u32, u32) {
    match width {
        BucketWidth::Day => (7, 31),
        BucketWidth::Hour => (24, 168),
        BucketWidth::Minute => (60, 1_440),
    }
}

/// `GET /v1/usage/summary`.
pub(crate) async fn summary(
    state_reader: Option<&Arc<dyn UsageReader>>,
    req: Request<impl Sized>,
    principal: Option<&Principal>,
) -> Result<Resp, ApiError> {
    let params = params(&req, &with_filters(&["bucket_width", "group_by", "limit", "page"]))?;
    let filter = filter(principal, &params)?;
    let width = match one(&params, "bucket_width") {
        None => BucketWidth::Day,
        Some(w) => BucketWidth::parse(w).ok_or_else(|| invalid(format!("bucket_width {w:?} is not 1m, 1h or 1d")))?,
    };
    let mut group_by = GroupBy::default();
    for name in params.get("group_by").into_iter().flatten().flat_map(|v| v.split(',')) {
        let flag = match name.trim() {
            "provider" => &mut group_by.provider,
            "model" => &mut group_by.model,
            "project_id" => &mut group_by.project_id,
            "user_id" => &mut group_by.user_id,
            other => {
                return Err(invalid(format!("group_by {other:?} is not one of provider, model, project_id, user_id")));
            }
        };
        *flag = true;
    }
    let from = filter.from.ok_or_else(|| invalid("from is required (Unix seconds or RFC 3339)"))?;
    let to = filter.to.unwrap_or_else(OffsetDateTime::now_utc);
    let w = width.seconds();
    let first = width.floor(from.unix_timestamp());
    // Buckets start in [first, to).
    let to_secs = to.unix_timestamp() + i64::from(to.nanosecond() > 0);
    if width == BucketWidth::Minute && to_secs - first > MINUTE_RANGE_SECS {
        return Err(invalid("bucket_width 1m covers at most 6 hours (from to to); use 1h or 1d"));
    }
    let (default_limit, max_limit) = bucket_limits(width);
    let limit = match one(&params, "limit") {
        None => default_limit,
        Some(text) => text.parse::<u32>().ok().filter(|n| (1..=max_limit).contains(n)).ok_or_else(|| {
            invalid(format!(
                "limit must be a whole number from 1 to {max_limit} with bucket_width {}",
                width_name(width)
            ))
        })?,
    };
    let start = match one(&params, "page") {
        None => first,
        Some(page) => {
            let bad = || invalid("page is not one this service gave out for this query");
            let bytes = URL_SAFE_NO_PAD.decode(page).map_err(|_| bad())?;
            let s: i64 =
                std::str::from_utf8(&bytes).ok().and_then(|t| t.strip_prefix("b1:")?.parse().ok()).ok_or_else(bad)?;
            if s < first || s >= to_secs || (s - first) % w != 0 {
                return Err(bad());
            }
            s
        }
    };
    let mut starts = Vec::new();
    let mut s = start;
    while s < to_secs && starts.len() < limit as usize {
        starts.push(s);
        s += w;
    }
    let has_more = s < to_secs;
    let mut rows: Vec<SummaryRow> = if let (Some(&lo), Some(&hi)) = (starts.first(), starts.last()) {
        let query = SummaryQuery { filter, start: lo, end: hi + w, width, group_by };
        reader(state_reader, SUMMARY)?.summary(query).await.map_err(storage)?
    } else {
        reader(state_reader, SUMMARY)?;
        Vec::new()
    };
    rows.sort_by_key(|r| r.bucket_start);
    let mut rows = rows.into_iter().peekable();
    let data: Vec<Value> = starts
        .iter()
        .map(|&bucket| {
            let mut results = Vec::new();
            while let Some(row) = rows.next_if(|r| r.bucket_start <= bucket) {
                if row.bucket_start == bucket {
                    results.push(result_json(&row, group_by));
                }
            }
            json!({ "object": "bucket", "start_time": bucket, "end_time": bucket + w, "results": results })
        })
        .collect();
    let next_page = has_more.then(|| URL_SAFE_NO_PAD.encode(format!("b1:{s}")));
    Ok(json_response(
        StatusCode::OK,
        &json!({ "object": "page", "data": data, "has_more": has_more, "next_page": next_page }),
    ))
}

fn width_name(w: BucketWidth) -> &'static str {
    match w {
        BucketWidth::Minute => "1m",
        BucketWidth::Hour => "1h",
        BucketWidth::Day => "1d",
    }
}

/// Exact nano-USD as a decimal string with nine decimals.
pub(crate) fn usd(nano: i128) -> String {
    let sign = if nano < 0 { "-" } else { "" };
    let n = nano.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

/// A sum as a JSON number: exact up to 2^64 − 1, which sums of absurd
/// token counts (each up to 2^63 − 1) may pass; those answer 2^64 − 1.
fn count(n: i128) -> Value {
    json!(u64::try_from(n.max(0)).unwrap_or(u64::MAX))
}

fn result_json(row: &SummaryRow, group_by: GroupBy) -> Value {
    let Totals {
        requests,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cached_tokens,
        cache_write_tokens,
        reasoning_tokens,
        cost_nano_usd,
        unpriced_requests,
    } = row.totals;
    let mut out = Map::new();
    out.insert("object".into(), json!("usage.result"));
    for (name, value) in [
        ("requests", requests),
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("cached_tokens", cached_tokens),
        ("cache_write_tokens", cache_write_tokens),
        ("reasoning_tokens", reasoning_tokens),
        ("total_tokens", total_tokens),
    ] {
        out.insert(name.into(), count(value));
    }
    out.insert("cost_usd".into(), json!(usd(cost_nano_usd)));
    out.insert("unpriced_requests".into(), count(unpriced_requests));
    for (on, name, value) in [
        (group_by.provider, "provider", &row.provider),
        (group_by.model, "model", &row.model),
        (group_by.project_id, "project_id", &row.project_id),
        (group_by.user_id, "user_id", &row.user_id),
    ] {
        if on {
            out.insert(name.into(), json!(value));
        }
    }
    Value::Object(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// The CSV header: the columns of SPEC §6, in `StoredRecord`'s order.
pub(crate) const CSV_COLUMNS: [&str; 24] = [
    "organization_id",
    "request_id",
    "occurred_at",
    "provider",
    "model_name",
    "model_version",
    "project_id",
    "user_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "context_window",
    "latency_ms",
    "time_to_first_token_ms",
    "cost_nano_usd",
    "price_id",
    "pricing",
    "tags",
    "metadata",
    "source",
    "received_at",
];

/// A CSV cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`,
/// and, as OWASP also lists, a tab or carriage return first) gets a `'`
/// in front.
pub(crate) fn guard_cell(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{cell}") } else { cell }
}

fn csv_cells(r: &StoredRecord) -> [String; 24] {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    let real = |v: Option<f64>| v.map(|n| n.to_string()).unwrap_or_default();
    let time = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    [
        r.organization_id.clone(),
        r.request_id.hyphenated().to_string(),
        time(r.occurred_at),
        r.provider.clone(),
        r.model_name.clone(),
        opt(&r.model_version),
        opt(&r.project_id),
        opt(&r.user_id),
        r.prompt_tokens.to_string(),
        r.completion_tokens.to_string(),
        r.total_tokens.to_string(),
        num(r.cached_tokens),
        num(r.cache_write_tokens),
        num(r.reasoning_tokens),
        num(r.context_window),
        real(r.latency_ms),
        real(r.time_to_first_token_ms),
        num(r.cost_nano_usd),
        num(r.price_id),
        r.pricing.clone(),
        r.tags.to_string(),
        r.metadata.as_ref().map(Value::to_string).unwrap_or_default(),
        r.source.clone(),
        time(r.received_at),
    ]
}

fn encode(format: Format, rows: &[StoredRecord], header: bool) -> Result<Bytes, std::io::Error> {
    match format {
        Format::Ndjson => {
            let mut out = Vec::with_capacity(rows.len() * 512);
            for r in rows {
                serde_json::to_writer(&mut out, r)?;
                out.push(b'\n');
            }
            Ok(out.into())
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
            let io = |e: csv::Error| std::io::Error::other(e.to_string());
            if header {
                w.write_record(CSV_COLUMNS).map_err(io)?;
            }
            for r in rows {
                w.write_record(csv_cells(r).map(guard_cell)).map_err(io)?;
            }
            w.into_inner().map(Bytes::from).map_err(|e| std::io::Error::other(e.to_string()))
        }
    }
}

/// `GET /v1/usage/export`: every record of the filter, in the order of
/// `/records`, streamed: pages of [`EXPORT_PAGE`] rows read by keyset,
/// at most [`EXPORT_AHEAD`] of them waiting for the client (memory stays
/// bounded whatever the export's size). A read failing half-way ends the
/// response with an error (a cut-off transfer, never a short file that
/// looks complete).
pub(crate) async fn export(
    state_reader: Option<&Arc<dyn UsageReader>>,
    req: Request<impl Sized>,
    principal: Option<&Principal>,
) -> Result<Resp, ApiError> {
    let params = params(&req, &with_filters(&["format"]))?;
    let filter = filter(principal, &params)?;
    let format = match one(&params, "format") {
        None | Some("ndjson") => Format::Ndjson,
        Some("csv") => Format::Csv,
        Some(other) => return Err(invalid(format!("format {other:?} is not csv or ndjson"))),
    };
    let reader = reader(state_reader, EXPORT)?;
    let permit = EXPORTS.clone().try_acquire_owned().map_err(|_| ApiError::Overloaded)?;
    // The first page is read before answering, so a storage failure is a
    // 503, not a cut-off 200.
    let first = reader.records(filter.clone(), None, EXPORT_PAGE).await.map_err(storage)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(EXPORT_AHEAD);
    tokio::spawn(async move {
        let _permit = permit; // held until the export ends
        let mut page = first;
        let mut header = true;
        loop {
            let done = page.len() < EXPORT_PAGE as usize;
            let after = page.last().map(StoredRecord::position);
            let chunk = encode(format, &page, header).map(http_body::Frame::data);
            header = false;
            if tx.send(chunk).await.is_err() || done {
                return; // the client went away, or that was the last page
            }
            page = match reader.records(filter.clone(), after, EXPORT_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "an export failed half-way; ending the response with an error");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
        }
    });
    let stream = tokio_stream_from(rx);
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut response = Response::new(body);
    let (content_type, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "usage.csv"),
        Format::Ndjson => ("application/x-ndjson", "usage.ndjson"),
    };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// A receiver as a stream of body frames.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_of_range_are_refused_not_panics() {
        let params = |v: &str| BTreeMap::from([("from".to_owned(), vec![v.to_owned()])]);
        for bad in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:30:00+01:00", "99999999999999", "-99999999999", "x"] {
            assert!(time_param(&params(bad), "from").is_err(), "{bad}");
        }
        let t = time_param(&params("2026-01-01T00:00:00.0000005Z"), "from").unwrap().unwrap();
        assert_eq!(t.nanosecond(), 1_000, "rounded up to the microsecond");
        assert_eq!(time_param(&params("1767225600"), "from").unwrap().unwrap().unix_timestamp(), 1_767_225_600);
    }

    #[test]
    fn huge_sums_saturate_instead_of_panicking() {
        let row = SummaryRow {
            totals: Totals { requests: 3, prompt_tokens: i128::from(i64::MAX) * 3, ..Totals::default() },
            ..SummaryRow::default()
        };
        let v = result_json(&row, GroupBy::default());
        assert_eq!(v["prompt_tokens"], json!(u64::MAX));
        assert_eq!(v["requests"], json!(3));
    }

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let p = RecordPosition {
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(1_765_000_000_123_456_789).unwrap(),
            request_id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(p)).unwrap(), p);
        for bad in ["", "x", "djE6MTox", &URL_SAFE_NO_PAD.encode("v2:1:00000000000000000000000000000000")] {
            assert!(decode_cursor(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usd_has_nine_decimals() {
        assert_eq!(usd(0), "0.000000000");
        assert_eq!(usd(12_345_678_901), "12.345678901");
        assert_eq!(usd(1), "0.000000001");
        assert_eq!(usd(-1_500_000_000), "-1.500000000");
        assert_eq!(usd(i128::from(i64::MAX) * 3), "27670116110.564327421");
    }

    #[test]
    fn formula_cells_are_guarded() {
        for (cell, out) in [
            ("=1+1", "'=1+1"),
            ("+x", "'+x"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("a=b", "a=b"),
        ] {
            assert_eq!(guard_cell(cell.to_owned()), out);
        }
    }
}
