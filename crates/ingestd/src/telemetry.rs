//! Logs and metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps trace export alive; [`Telemetry::shutdown`] flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

/// Installs logging (`RUST_LOG` filters, default `info`; text or JSON on
/// stderr) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP/HTTP trace
/// export. Spans are exported from a background thread through a bounded
/// queue: a slow or absent collector drops spans, it never delays requests.
pub fn init_logging(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let (provider, otel_error) = match otlp_provider() {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ingestd")));
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OTLP trace export is off: the exporter could not be built");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

fn otlp_provider() -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    let endpoint_set = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !endpoint_set {
        return Ok(None);
    }
    // The endpoint, headers, timeout and protocol come from the standard
    // OTEL_* variables. Without a protocol set, protobuf, the OTLP default:
    // the crate's own default follows its cargo features, and becomes JSON
    // in any build where another crate enables `http-json` (the tests do).
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let protocol_set = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !protocol_set {
        use opentelemetry_otlp::WithExportConfig as _;
        builder = builder.with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    }
    let exporter = builder.build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("ingestd").build();
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build()))
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let mut builder = PrometheusBuilder::new()
                .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &seconds);
            for (name, buckets) in COUNT_BUCKETS {
                builder = builder.and_then(|b| {
                    b.set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full((*name).into()), buckets)
                });
            }
            let recorder =
                builder.map(|b| b.build_recorder()).unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may be installed (an embedding program); then ours stays empty.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Buckets of the histograms that count things (the `_seconds` ones share
/// one set): every histogram is rendered as one, never as a summary.
const COUNT_BUCKETS: &[(&str, &[f64])] = &[
    ("ingestd_writer_batch_rows", &[1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0]),
    ("ingestd_nats_fetch_batch_size", &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
];

/// Every metric ingestd emits, with its `# HELP` text. A test holds this
/// list to the metric names in the code and to the docs' metric tables.
pub const METRICS: &[(&str, MetricKind, &str)] = {
    use MetricKind::{Counter as C, Gauge as G, Histogram as H};
    &[
        ("ingestd_build_info", G, "Always 1; the labels name the running build (version, commit)."),
        ("ingestd_http_requests_total", C, "HTTP requests answered, by route and status code."),
        (
            "ingestd_http_request_duration_seconds",
            H,
            "Time from a request's arrival to its answer, in seconds, by route.",
        ),
        ("ingestd_http_shed_total", C, "Requests refused with 503 because the concurrency limit was reached."),
        ("ingestd_auth_failures_total", C, "Requests refused for their API key or signature, by error code."),
        ("ingestd_records_total", C, "Records by source and outcome (accepted, duplicate, rejected)."),
        (
            "ingestd_otlp_spans_total",
            C,
            "Spans of POST /v1/traces by outcome (accepted, duplicate, rejected, without_usage).",
        ),
        ("ingestd_writer_queue_depth", G, "Records queued for the writer, not yet in a transaction."),
        ("ingestd_writer_transaction_rows", G, "Records in the transaction under way (0 when idle)."),
        ("ingestd_storage_down", G, "1 while the writer refuses writes because the database does not answer."),
        ("ingestd_writer_batch_rows", H, "Records per group commit."),
        ("ingestd_writer_commit_seconds", H, "Time to commit one group of records, in seconds."),
        ("ingestd_writer_commits_total", C, "Group commits by result (ok, error, isolated)."),
        ("ingestd_writer_refused_records_total", C, "Records the database refused although they passed validation."),
        ("ingestd_cost_nano_usd_total", C, "Cost of the records stored, in nano-USD, by catalog provider."),
        ("ingestd_records_unpriced_total", C, "Records stored without a price, by catalog provider."),
        ("ingestd_panics_total", C, "Defects of ingestd caught and answered, by where they happened."),
        ("ingestd_source_restarts_total", C, "Stream source tasks that stopped and were started again."),
        ("ingestd_source_connected", G, "1 while the stream source is connected, by source."),
        ("ingestd_dead_letters_total", C, "Messages or records stored in the dead-letter table, by source."),
        (
            "ingestd_rate_limit_decisions_total",
            C,
            "Rate-limit decisions by result (allowed, limited, error) and backend.",
        ),
        ("ingestd_rate_limit_fallback_active", G, "1 while the Redis limiter is unhealthy and fail_mode answers."),
        ("ingestd_rate_limit_fallbacks_total", C, "Rate-limit checks answered by fail_mode instead of Redis."),
        ("ingestd_rate_limit_memory_keys", G, "Organizations tracked by the in-memory limiter."),
        ("ingestd_nats_messages_total", C, "JetStream messages by outcome (stored, dead_lettered, nak)."),
        ("ingestd_nats_redeliveries_total", C, "JetStream messages fetched with a delivery count above 1."),
        ("ingestd_nats_fetch_batch_size", H, "JetStream messages per fetch."),
        ("ingestd_nats_consumer_pending", G, "JetStream messages not yet delivered to the consumer (lag)."),
        (
            "ingestd_nats_ack_errors_total",
            C,
            "JetStream acks that could not be sent (the messages will be redelivered).",
        ),
        ("ingestd_redis_entries_total", C, "Redis stream entries by outcome (stored, dead_lettered, trimmed)."),
        ("ingestd_redis_reclaimed_total", C, "Redis stream entries taken over from other consumers with XAUTOCLAIM."),
        ("ingestd_redis_redelivered_total", C, "Redis stream entries re-read from the consumer's own pending list."),
        ("ingestd_redis_trimmed_total", C, "Redis stream entries trimmed or deleted while pending."),
        ("ingestd_redis_storage_failures_total", C, "Commits of Redis stream entries that failed (each retried)."),
        ("ingestd_redis_errors_total", C, "Redis commands of the stream source that failed."),
        ("ingestd_redis_pending", G, "Entries pending in the Redis consumer group."),
        ("ingestd_redis_group_lag", G, "Redis stream entries not yet delivered to the group."),
    ]
};

/// Gives every metric its `# HELP` text (SPEC §8), and sets
/// `ingestd_build_info`.
fn describe() {
    for (name, kind, help) in METRICS {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(*name, *help),
            MetricKind::Gauge => metrics::describe_gauge!(*name, *help),
            MetricKind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    metrics::gauge!(
        "ingestd_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("BUILD_GIT_COMMIT")
    )
    .set(1.0);
}

#[cfg(test)]
mod metric_list_tests {
    use super::METRICS;

    /// Every `ingestd_…` name in a `counter!`, `gauge!` or `histogram!` of
    /// the workspace's crates is in [`METRICS`], and every name there is used
    /// and listed in the docs' metric tables.
    #[test]
    fn the_metric_list_matches_the_code_and_the_docs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut used = std::collections::BTreeSet::new();
        let mut stack = vec![root.join("crates")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                        for (at, _) in text.match_indices(macro_name) {
                            let rest = text[at + macro_name.len()..].trim_start();
                            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                                && name.starts_with("ingestd_")
                            {
                                used.insert(name.to_owned());
                            }
                        }
                    }
                }
            }
        }
        let listed: std::collections::BTreeSet<String> = METRICS.iter().map(|(n, _, _)| (*n).to_owned()).collect();
        // Histograms, not summaries: each has buckets.
        for (name, kind, _) in METRICS {
            if *kind == super::MetricKind::Histogram {
                assert!(
                    name.ends_with("_seconds") || super::COUNT_BUCKETS.iter().any(|(n, _)| n == name),
                    "{name} has no buckets: it would be rendered as a summary"
                );
            }
        }
        assert!(used.len() > 30, "found only {used:?}");
        assert_eq!(used, listed, "metrics in the code vs telemetry::METRICS");
        let docs: String = ["docs/api.md", "docs/nats.md", "docs/redis.md"]
            .iter()
            .map(|p| std::fs::read_to_string(root.join(p)).unwrap())
            .collect();
        for name in &listed {
            assert!(docs.contains(&format!("`{name}")), "{name} is not in the docs' metric tables");
        }
    }
}
