//! The ceiling for `cargo xtask bench http`: hyper + serde_json and nothing
//! else. It parses the same JSON bodies (into `serde_json::Value`) and answers
//! a small JSON object; no validation, no storage. `bare-server ADDR`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => {
            let n = v.get("records").and_then(|r| r.as_array()).map_or(1, Vec::len);
            let out =
                serde_json::to_vec(&serde_json::json!({ "status": "success", "accepted": n })).unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(out)));
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            Ok(r)
        }
        Err(_) => Ok(status(StatusCode::BAD_REQUEST)),
    }
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}

fn main() -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".into()).parse()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    })
}
