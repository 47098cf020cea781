//! The listener, the connection loop, the tower stack and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use model::RecordSink;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, service_fn};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::key_layer::AuthLayer;
use crate::limit_layer::RateLimitLayer;
use crate::{ApiError, AppState, routes};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish for up to `shutdown_grace_secs`, and returns.
pub async fn serve<S: RecordSink>(
    listener: TcpListener,
    state: Arc<AppState<S>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = state.config.clone();
    let cors = (!config.cors_origins.is_empty()).then(|| {
        let origins: Vec<_> = config.cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([http::Method::GET, http::Method::POST, http::Method::PUT, http::Method::DELETE])
            .allow_headers([
                http::header::CONTENT_TYPE,
                http::header::CONTENT_ENCODING,
                http::header::AUTHORIZATION,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-organization-id"),
                HeaderName::from_static("webhook-id"),
                HeaderName::from_static("webhook-timestamp"),
                HeaderName::from_static("webhook-signature"),
            ])
    });
    let handler = {
        let state = state.clone();
        service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(routes::handle(state, req).await) }
        })
    };
    let continue_trace = state.continue_trace;
    let service = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(move |req: &Request<Incoming>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            let span =
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id);
            if let Some(continue_trace) = continue_trace {
                continue_trace(req.headers(), &span);
            }
            span
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .option_layer(cors)
        // API keys (SPEC §3): the caller's `Principal` and rate-limit
        // `Organization` go into the request's extensions.
        .option_layer(state.keys.clone().map(AuthLayer::new))
        .option_layer(state.limiter.clone().map(|l| RateLimitLayer::new(l).counting(state.decisions.clone())))
        .map_result(shed_to_503)
        .load_shed()
        .concurrency_limit(config.max_concurrent_requests.max(1))
        .service(handler);

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_read_timeout_secs.max(1)))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; finishing in-flight requests");
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            grace_secs = config.shutdown_grace_secs,
            "in-flight requests did not finish within the grace period"
        );
    }
    Ok(())
}

/// Load shedding refuses with an error; clients get a 503 with `Retry-After`.
fn shed_to_503(
    result: Result<Response<crate::body::Body>, tower::BoxError>,
) -> Result<Response<crate::body::Body>, tower::BoxError> {
    Ok(match result {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("ingestd_http_shed_total").increment(1);
            ApiError::Overloaded.into_response()
        }
    })
}
