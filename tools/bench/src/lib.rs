//! Benchmark tools for `cargo xtask bench http` (see docs/benchmarks.md).

use std::time::Duration;

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

/// How load is offered.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Each connection sends its next request when the previous one is
    /// answered: the server sets the pace, and a slow answer delays the
    /// requests behind it without their wait being measured (coordinated
    /// omission). Measures throughput.
    Closed,
    /// Requests fall due at a fixed rate, whatever the answers; each latency
    /// runs from when its request was due, so time spent waiting behind a
    /// slow answer (or for a free connection) counts. Measures latency.
    Open { per_sec: f64 },
}

/// What a load run measured. Latencies are of successful requests,
/// recorded in an HdrHistogram (1 µs … 60 s, 3 significant digits).
#[derive(Debug)]
pub struct Report {
    pub mode: Mode,
    pub requests: u64,
    pub records: u64,
    pub errors: u64,
    /// Open loop: requests sent more than 1 ms after they fell due (the
    /// connections were all busy). Their wait is in the latencies.
    pub late: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Report {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Drives `addr` with `connections` keep-alive connections for `duration`,
/// sending `records`-record requests: back to back per connection
/// ([`Mode::Closed`]) or at a fixed total rate ([`Mode::Open`]).
pub async fn run(
    addr: std::net::SocketAddr,
    connections: usize,
    records: usize,
    duration: Duration,
    mode: Mode,
) -> anyhow::Result<Report> {
    let (path, body) = payload(records);
    let body = bytes::Bytes::from(body);
    let start = tokio::time::Instant::now();
    let deadline = start + duration;
    let interval = match mode {
        Mode::Closed => None,
        Mode::Open { per_sec } => {
            anyhow::ensure!(per_sec > 0.0 && per_sec.is_finite(), "the rate must be positive");
            Some(Duration::from_secs_f64(1.0 / per_sec))
        }
    };
    // Open loop: the next request slot to take; slot i falls due at start + i × interval.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for conn in 0..connections {
        let (path, body, next) = (path.clone(), body.clone(), next.clone());
        // Each connection speaks for one of 16 organizations, as gateways would.
        let org = format!("org-{}", conn % 16);
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let (mut errors, mut late) = (0u64, 0u64);
            let mut client = testkit::http::Client::connect(addr).await?;
            loop {
                let due = match interval {
                    None => tokio::time::Instant::now(),
                    Some(interval) => {
                        let slot = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let due = start + interval.mul_f64(slot as f64);
                        if due >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                        late += u64::from(due.elapsed() > Duration::from_millis(1));
                        due
                    }
                };
                if due >= deadline {
                    break;
                }
                let headers = [("content-type", "application/json"), ("x-organization-id", org.as_str())];
                let reply = client.send("POST", &path, &headers, body.clone()).await;
                match reply {
                    Ok(r) if r.status.is_success() => {
                        latencies.saturating_record(due.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        client = testkit::http::Client::connect(addr).await?;
                    }
                }
            }
            anyhow::Ok((latencies, errors, late))
        }));
    }
    let mut latencies = histogram();
    let (mut errors, mut late) = (0, 0);
    for t in tasks {
        let (l, e, n) = t.await??;
        latencies.add(&l)?;
        errors += e;
        late += n;
    }
    let elapsed = start.elapsed();
    let at = |q: f64| Duration::from_micros(latencies.value_at_quantile(q));
    Ok(Report {
        mode,
        requests: latencies.len(),
        records: latencies.len() * records as u64,
        errors,
        late,
        elapsed,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: Duration::from_micros(latencies.max()),
    })
}
