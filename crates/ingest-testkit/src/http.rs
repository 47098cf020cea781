//! A minimal HTTP/1.1 client over a real socket, for tests and the load generator.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// One keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client { addr, sender })
    }

    /// Sends a request; `headers` are added as given.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper::Error> {
        let mut req = Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("valid request");
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// Sends a request and hands each piece of the response body to
    /// `chunk` as it arrives, keeping none of it; the status, the headers
    /// and the bytes received. An error ending the body half-way is the
    /// `Err`.
    pub async fn stream(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        mut chunk: impl FnMut(&[u8]),
    ) -> Result<(StatusCode, HeaderMap, u64), hyper::Error> {
        let mut req = Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).expect("valid request");
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let (parts, mut body) = res.into_parts();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                n += data.len() as u64;
                chunk(&data);
            }
        }
        Ok((parts.status, parts.headers, n))
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, &[], Bytes::new()).await.expect("GET")
    }

    /// POSTs JSON.
    pub async fn post_json(&mut self, path: &str, body: &serde_json::Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("serialize");
        self.send("POST", path, &[("content-type", "application/json")], bytes).await.expect("POST")
    }
}
