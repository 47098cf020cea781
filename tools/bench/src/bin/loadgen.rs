//! `loadgen ADDR CONNECTIONS RECORDS_PER_REQUEST SECONDS [REQUESTS_PER_SEC]`:
//! prints one JSON line. Without a rate, each connection sends back to back
//! (closed loop: throughput); with one, requests fall due at that total rate
//! and latencies run from when each was due (open loop: latency without
//! coordinated omission).

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        (4..=5).contains(&args.len()),
        "usage: loadgen ADDR CONNECTIONS RECORDS_PER_REQUEST SECONDS [REQUESTS_PER_SEC]"
    );
    let addr = args[0].parse()?;
    let (connections, records, secs): (usize, usize, u64) = (args[1].parse()?, args[2].parse()?, args[3].parse()?);
    let mode = match args.get(4) {
        Some(rate) => ingest_bench::Mode::Open { per_sec: rate.parse()? },
        None => ingest_bench::Mode::Closed,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report =
        rt.block_on(ingest_bench::run(addr, connections, records, std::time::Duration::from_secs(secs), mode))?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let line = serde_json::json!({
        "mode": match mode { ingest_bench::Mode::Closed => "closed", ingest_bench::Mode::Open { .. } => "open" },
        "offered_per_sec": match mode { ingest_bench::Mode::Open { per_sec } => Some(per_sec), ingest_bench::Mode::Closed => None },
        "requests": report.requests,
        "requests_per_sec": report.requests_per_sec(),
        "records": report.records,
        "errors": report.errors,
        "late": report.late,
        "records_per_sec": report.records_per_sec(),
        "p50_ms": ms(report.p50),
        "p90_ms": ms(report.p90),
        "p99_ms": ms(report.p99),
        "p999_ms": ms(report.p999),
        "max_ms": ms(report.max),
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    Ok(())
}
