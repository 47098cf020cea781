//! `loadgen ADDR CONNECTIONS RECORDS_PER_REQUEST SECONDS`: prints one JSON line.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 4, "usage: loadgen ADDR CONNECTIONS RECORDS_PER_REQUEST SECONDS");
    let addr = args[0].parse()?;
    let (connections, records, secs): (usize, usize, u64) = (args[1].parse()?, args[2].parse()?, args[3].parse()?);
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(ingest_bench::run(addr, connections, records, std::time::Duration::from_secs(secs)))?;
    let line = serde_json::json!({
        "requests": report.requests,
        "records": report.records,
        "errors": report.errors,
        "records_per_sec": report.records_per_sec(),
        "p50_ms": report.p50.as_secs_f64() * 1e3,
        "p99_ms": report.p99.as_secs_f64() * 1e3,
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    Ok(())
}
