use http::{HeaderValue, Response, StatusCode, header};
use model::SinkError;
use model::decode::{BatchError, DocumentError};
use serde_json::json;

/// A request-level failure: the one place where errors become status codes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    MalformedJson { line: usize, column: usize, message: String },
    #[error("invalid {what}: {message}")]
    InvalidEnvelope { what: &'static str, message: String },
    #[error("request body is larger than {limit} bytes{after}")]
    BodyTooLarge { limit: usize, after: &'static str },
    #[error("batch has more than {max} records; the maximum is {max}")]
    BatchTooLarge { max: usize },
    #[error("batch has no records; send 1 to {max}")]
    EmptyBatch { max: usize },
    #[error("content-type must be {expected}, found {found}")]
    UnsupportedMediaType { found: String, expected: &'static str },
    #[error("content-encoding {found} is not supported; use gzip, br, zstd or identity")]
    UnsupportedEncoding { found: String },
    #[error("request body is not valid {encoding} data")]
    BadEncoding { encoding: &'static str },
    /// `POST /v1/traces`: the body is not an OTLP export request.
    #[error("{0}")]
    MalformedOtlp(String),
    /// `POST /v1/traces`: more spans or attributes than one request may carry.
    #[error("{0}")]
    OtlpTooLarge(String),
    #[error("could not read the request body")]
    BodyRead,
    #[error("no route for {path}")]
    NotFound { path: String },
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("the service is overloaded; retry shortly")]
    Overloaded,
    #[error("storage is unavailable; retry shortly")]
    StorageUnavailable,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the request took longer than {secs} s")]
    Timeout { secs: u64 },
    #[error("header x-organization-id {rule}")]
    InvalidOrganizationHeader { rule: String },
    #[error("the rate limiter is unavailable; retry shortly")]
    RateLimiterUnavailable,
    #[error("this endpoint needs an API key: send the header Authorization: Bearer <key>")]
    MissingApiKey,
    #[error("the Authorization header must be \"Bearer <key>\"")]
    MalformedAuthorization,
    #[error("malformed API key: {reason}")]
    MalformedApiKey { reason: String },
    #[error("unknown or revoked API key")]
    UnknownApiKey,
    #[error("invalid signature: {reason}")]
    InvalidSignature { reason: String },
    #[error("this endpoint needs an admin key")]
    AdminScopeRequired,
    #[error("this API key may not {action}; it needs the {needed:?} permission")]
    PermissionDenied { needed: &'static str, action: &'static str },
    #[error("this API key reads only organization {own:?}, not {asked:?}")]
    OrganizationForbidden { own: String, asked: String },
    #[error("header idempotency-key {rule}")]
    InvalidIdempotencyKey { rule: &'static str },
    #[error("invalid request: {message}")]
    InvalidRequest { message: String },
    #[error("invalid rate-limit policy: {message}")]
    InvalidPolicy { message: String },
    #[error("{what} not found")]
    ResourceNotFound { what: String },
    /// A defect of ingestd (a handler panicked); never caused by input alone.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MalformedJson { .. }
            | InvalidEnvelope { .. }
            | EmptyBatch { .. }
            | BadEncoding { .. }
            | MalformedOtlp(_)
            | BodyRead
            | InvalidOrganizationHeader { .. }
            | InvalidIdempotencyKey { .. }
            | InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            MissingApiKey
            | MalformedAuthorization
            | MalformedApiKey { .. }
            | UnknownApiKey
            | InvalidSignature { .. } => StatusCode::UNAUTHORIZED,
            AdminScopeRequired | PermissionDenied { .. } | OrganizationForbidden { .. } => StatusCode::FORBIDDEN,
            InvalidPolicy { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ResourceNotFound { .. } => StatusCode::NOT_FOUND,
            BodyTooLarge { .. } | BatchTooLarge { .. } | OtlpTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType { .. } | UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotFound { .. } => StatusCode::NOT_FOUND,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Overloaded | StorageUnavailable | ShuttingDown | Timeout { .. } | RateLimiterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Stable machine-readable name, documented in docs/api.md.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            MalformedJson { .. } => "malformed_json",
            InvalidEnvelope { .. } => "invalid_envelope",
            BodyTooLarge { .. } => "body_too_large",
            BatchTooLarge { .. } => "batch_too_large",
            EmptyBatch { .. } => "empty_batch",
            UnsupportedMediaType { .. } => "unsupported_media_type",
            UnsupportedEncoding { .. } => "unsupported_encoding",
            BadEncoding { .. } => "bad_encoding",
            MalformedOtlp(_) => "malformed_otlp",
            OtlpTooLarge(_) => "otlp_too_large",
            BodyRead => "body_read_failed",
            NotFound { .. } => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            Overloaded => "overloaded",
            StorageUnavailable => "storage_unavailable",
            ShuttingDown => "shutting_down",
            Timeout { .. } => "timeout",
            InvalidOrganizationHeader { .. } => "invalid_organization_header",
            RateLimiterUnavailable => "rate_limiter_unavailable",
            MissingApiKey => "missing_api_key",
            MalformedAuthorization => "malformed_authorization",
            MalformedApiKey { .. } => "malformed_api_key",
            UnknownApiKey => "unknown_api_key",
            InvalidSignature { .. } => "invalid_signature",
            AdminScopeRequired => "admin_scope_required",
            PermissionDenied { .. } => "permission_denied",
            OrganizationForbidden { .. } => "organization_forbidden",
            InvalidIdempotencyKey { .. } => "invalid_idempotency_key",
            InvalidRequest { .. } => "invalid_request",
            InvalidPolicy { .. } => "invalid_policy",
            ResourceNotFound { .. } => "not_found",
            Internal => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded | ApiError::Timeout { .. } | ApiError::RateLimiterUnavailable => Some(1),
            ApiError::StorageUnavailable | ApiError::ShuttingDown => Some(5),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<crate::body::Body> {
        let mut body = json!({ "error": self.to_string(), "code": self.code() });
        if let ApiError::MalformedJson { line, column, .. } = &self {
            body["line"] = json!(line);
            body["column"] = json!(column);
        }
        let mut response = json_response(self.status(), &body);
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ingestd\""));
        }
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<DocumentError> for ApiError {
    fn from(e: DocumentError) -> Self {
        match e {
            DocumentError::Syntax { line, column, message } => ApiError::MalformedJson { line, column, message },
            DocumentError::Shape { what, message } => ApiError::InvalidEnvelope { what, message },
        }
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Document(e) => e.into(),
            BatchError::TooMany { max } => ApiError::BatchTooLarge { max },
        }
    }
}

impl From<SinkError> for ApiError {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::Overloaded => ApiError::Overloaded,
            SinkError::TimedOut { secs } => ApiError::Timeout { secs },
            SinkError::Unavailable(_) => ApiError::StorageUnavailable,
            SinkError::Closed => ApiError::ShuttingDown,
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<crate::body::Body> {
    // Serializing our own response types cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(crate::body::full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
