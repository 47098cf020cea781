//! Benchmark tools for `cargo xtask bench http` (see docs/benchmarks.md).

use std::time::{Duration, Instant};

use serde_json::json;

/// One record without `request_id`, so the server generates a fresh id for
/// every copy and each request stores new rows.
pub fn record(i: usize) -> serde_json::Value {
    json!({
        "timestamp": "2026-11-26T10:00:00Z",
        "provider": "openai",
        "model": { "name": "gpt-4o", "version": "2024-08-06" },
        "organization_id": format!("org-{}", i % 16),
        "project_id": "proj-1",
        "usage": { "prompt_tokens": 1200, "completion_tokens": 350, "total_tokens": 1550, "cached_tokens": 200 },
        "performance": { "latency_ms": 812.5, "time_to_first_token_ms": 120.0 },
        "tags": ["prod", "chat"],
    })
}

/// The body of a request carrying `records` records.
pub fn payload(records: usize) -> (String, Vec<u8>) {
    if records == 1 {
        ("/v1/usage".to_owned(), serde_json::to_vec(&record(0)).unwrap_or_default())
    } else {
        let records: Vec<_> = (0..records).map(record).collect();
        ("/v1/usage/batch".to_owned(), serde_json::to_vec(&json!({ "records": records })).unwrap_or_default())
    }
}

/// What a load run measured.
#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub records: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Report {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// Drives `addr` with `connections` keep-alive connections for `duration`,
/// each sending `records`-record requests back to back.
pub async fn run(
    addr: std::net::SocketAddr,
    connections: usize,
    records: usize,
    duration: Duration,
) -> anyhow::Result<Report> {
    let (path, body) = payload(records);
    let body = bytes::Bytes::from(body);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for conn in 0..connections {
        let (path, body) = (path.clone(), body.clone());
        // Each connection speaks for one of 16 organizations, as gateways would.
        let org = format!("org-{}", conn % 16);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut client = testkit::http::Client::connect(addr).await?;
            while Instant::now() < deadline {
                let t = Instant::now();
                let headers = [("content-type", "application/json"), ("x-organization-id", org.as_str())];
                let reply = client.send("POST", &path, &headers, body.clone()).await;
                match reply {
                    Ok(r) if r.status.is_success() => latencies.push(t.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        client = testkit::http::Client::connect(addr).await?;
                    }
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Report {
        requests: latencies.len() as u64,
        records: (latencies.len() * records) as u64,
        errors,
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    })
}
