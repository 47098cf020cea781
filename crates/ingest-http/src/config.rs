use serde::{Deserialize, Serialize};

/// The `[server]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on (`BIND_ADDR`).
    pub bind: String,
    /// Largest request body, after decompression.
    pub max_body_bytes: usize,
    /// Most records in one `POST /v1/usage/batch`.
    pub max_batch_size: usize,
    /// A request that takes longer is answered 503.
    pub request_timeout_secs: u64,
    /// On SIGTERM/SIGINT: how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
    /// A connection whose request headers take longer is closed.
    pub header_read_timeout_secs: u64,
    /// Requests handled at once; more are refused at once with 503.
    pub max_concurrent_requests: usize,
    /// Origins allowed by CORS; empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: "0.0.0.0:8080".to_owned(),
            max_body_bytes: 10 * 1024 * 1024,
            max_batch_size: 1000,
            request_timeout_secs: 30,
            shutdown_grace_secs: 30,
            header_read_timeout_secs: 10,
            max_concurrent_requests: 1024,
            cors_origins: Vec::new(),
        }
    }
}
