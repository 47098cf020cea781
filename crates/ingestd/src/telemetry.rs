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
    // `https://` endpoints: reqwest's rustls takes the process's default
    // provider (ring, as the database and broker clients use); roots are the
    // system's, and SSL_CERT_FILE / SSL_CERT_DIR name others.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let protocol_set = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !protocol_set {
        use opentelemetry_otlp::WithExportConfig as _;
        builder = builder.with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    }
    let exporter = builder.build()?;
    // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES;
    // "ingestd" only where neither names the service.
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !service_named_by_environment() {
        resource = resource.with_service_name("ingestd");
    }
    let resource = resource.build();
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build()))
}

fn service_named_by_environment() -> bool {
    std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|s| s.split(',').any(|kv| kv.split('=').next().is_some_and(|k| k.trim() == "service.name")))
}

/// Reads a W3C `traceparent` (and `tracestate`) from a request's headers
/// and makes the caller's span the parent of the request span, so the
/// caller's trace continues through ingestd. Without the header, or with a
/// malformed one, the request span starts a trace of its own.
pub fn continue_trace(headers: &http::HeaderMap, span: &tracing::Span) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(headers));
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to continue.
        let _ = span.set_parent(parent);
    }
}

/// Renders `/metrics`: the process metrics are read first (RSS, CPU, open
/// file descriptors, from `/proc` on Linux).
pub fn render(handle: &PrometheusHandle) -> String {
    process_collector().collect();
    handle.render()
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Registers, at 0, the counters of rare events of the parts that run (the
/// HTTP server, rate limiter and writer always; the named stream sources), so that their
/// series exist before the first event: an alert on `increase()` then sees
/// the first panic or dead letter, and a dashboard shows 0, not "no data".
/// Gauges are left alone: a 0 there would mean something.
pub fn register_event_counters(sources: &[&'static str]) {
    metrics::counter!("ingestd_http_shed_total").increment(0);
    metrics::counter!("ingestd_writer_refused_records_total").increment(0);
    metrics::counter!("ingestd_panics_total", "where" => "http").increment(0);
    for policy in ["default", "organization"] {
        metrics::counter!("ingestd_rate_limit_refusals_total", "policy" => policy).increment(0);
    }
    for &source in sources {
        metrics::counter!("ingestd_panics_total", "where" => source).increment(0);
        metrics::counter!("ingestd_dead_letters_total", "source" => source).increment(0);
        metrics::counter!("ingestd_source_restarts_total", "source" => source).increment(0);
        metrics::counter!("ingestd_redeliveries_total", "source" => source, "kind" => "pending").increment(0);
        match source {
            "nats" => metrics::counter!("ingestd_nats_ack_errors_total").increment(0),
            "redis" => {
                metrics::counter!("ingestd_redeliveries_total", "source" => "redis", "kind" => "claimed").increment(0);
                metrics::counter!("ingestd_redis_trimmed_total").increment(0);
                metrics::counter!("ingestd_redis_storage_failures_total").increment(0);
                metrics::counter!("ingestd_redis_errors_total").increment(0);
            }
            _ => {}
        }
    }
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

/// One metric ingestd emits: its name, type, label names and `# HELP` text.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Every metric ingestd emits. Tests hold this list to the metric names in
/// the code, to the table in docs/operations.md (type and labels), and to
/// what `/metrics` shows.
pub const METRICS: &[Metric] = {
    use MetricKind::{Counter as C, Gauge as G, Histogram as H};
    const fn m(name: &'static str, kind: MetricKind, labels: &'static [&'static str], help: &'static str) -> Metric {
        Metric { name, kind, labels, help }
    }
    &[
        m(
            "ingestd_build_info",
            G,
            &["version", "commit"],
            "Always 1; the labels name the running build (version, commit).",
        ),
        m("ingestd_http_requests_total", C, &["route", "status"], "HTTP requests answered, by route and status code."),
        m(
            "ingestd_http_request_duration_seconds",
            H,
            &["route"],
            "Time from a request's arrival to its answer, in seconds, by route.",
        ),
        m("ingestd_http_shed_total", C, &[], "Requests refused with 503 because the concurrency limit was reached."),
        m(
            "ingestd_auth_failures_total",
            C,
            &["code"],
            "Requests refused for their API key or signature, by error code.",
        ),
        m(
            "ingestd_records_total",
            C,
            &["source", "outcome"],
            "Records by source and outcome (accepted, duplicate, rejected, dead_lettered).",
        ),
        m(
            "ingestd_otlp_spans_total",
            C,
            &["outcome"],
            "Spans of POST /v1/traces by outcome (accepted, duplicate, rejected, without_usage).",
        ),
        m("ingestd_writer_queue_depth", G, &[], "Records queued for the writer, not yet in a transaction."),
        m("ingestd_writer_queue_capacity", G, &[], "The writer queue's capacity (writer.queue_capacity)."),
        m("ingestd_writer_transaction_rows", G, &[], "Records in the transaction under way (0 when idle)."),
        m("ingestd_storage_down", G, &[], "1 while the writer refuses writes because the database does not answer."),
        m("ingestd_writer_batch_rows", H, &[], "Records per group commit."),
        m("ingestd_writer_commit_duration_seconds", H, &[], "Time to commit one group of records, in seconds."),
        m("ingestd_writer_commits_total", C, &["result"], "Group commits by result (ok, error, isolated)."),
        m(
            "ingestd_writer_refused_records_total",
            C,
            &[],
            "Records the database refused although they passed validation.",
        ),
        m(
            "ingestd_cost_nano_usd_total",
            C,
            &["provider"],
            "Cost of the records stored, in nano-USD, by catalog provider.",
        ),
        m("ingestd_records_unpriced_total", C, &["provider"], "Records stored without a price, by catalog provider."),
        m("ingestd_panics_total", C, &["where"], "Defects of ingestd caught and answered, by where they happened."),
        m("ingestd_source_restarts_total", C, &["source"], "Stream source tasks that stopped and were started again."),
        m("ingestd_source_connected", G, &["source"], "1 while the stream source is connected, by source."),
        m(
            "ingestd_redeliveries_total",
            C,
            &["source", "kind"],
            "Messages delivered again, by source and kind (pending: redelivered to the same consumer; claimed: taken over from another).",
        ),
        m(
            "ingestd_dead_letters_total",
            C,
            &["source"],
            "Messages or records stored in the dead-letter table, by source.",
        ),
        m(
            "ingestd_rate_limit_decisions_total",
            C,
            &["result", "backend"],
            "Rate-limit decisions by result (allowed, limited, error) and backend.",
        ),
        m(
            "ingestd_rate_limit_refusals_total",
            C,
            &["policy"],
            "Requests refused (429) by the rate limiter, by the kind of policy that refused them (default, organization).",
        ),
        m(
            "ingestd_rate_limit_fallback_active",
            G,
            &["backend"],
            "1 while the Redis limiter is unhealthy and fail_mode answers.",
        ),
        m(
            "ingestd_rate_limit_fallbacks_total",
            C,
            &["backend"],
            "Rate-limit checks answered by fail_mode instead of Redis.",
        ),
        m("ingestd_rate_limit_memory_keys", G, &[], "Organizations tracked by the in-memory limiter."),
        m(
            "ingestd_nats_messages_total",
            C,
            &["outcome"],
            "JetStream messages by outcome (stored, dead_lettered, nak).",
        ),
        m("ingestd_nats_fetch_batch_size", H, &[], "JetStream messages per fetch."),
        m("ingestd_nats_consumer_pending", G, &[], "JetStream messages not yet delivered to the consumer (lag)."),
        m(
            "ingestd_nats_ack_errors_total",
            C,
            &[],
            "JetStream acks that could not be sent (the messages will be redelivered).",
        ),
        m(
            "ingestd_redis_entries_total",
            C,
            &["outcome"],
            "Redis stream entries by outcome (stored, dead_lettered, trimmed).",
        ),
        m("ingestd_redis_trimmed_total", C, &[], "Redis stream entries trimmed or deleted while pending."),
        m(
            "ingestd_redis_storage_failures_total",
            C,
            &[],
            "Commits of Redis stream entries that failed (each retried).",
        ),
        m("ingestd_redis_errors_total", C, &[], "Redis commands of the stream source that failed."),
        m("ingestd_redis_pending", G, &[], "Entries pending in the Redis consumer group."),
        m("ingestd_redis_group_lag", G, &[], "Redis stream entries not yet delivered to the group."),
    ]
};

/// Gives every metric its `# HELP` text (SPEC §8), and sets
/// `ingestd_build_info`.
fn describe() {
    process_collector().describe();
    for &Metric { name, kind, help, .. } in METRICS {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(name, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, help),
            MetricKind::Histogram => metrics::describe_histogram!(name, help),
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
    use std::collections::{BTreeMap, BTreeSet};

    use super::{METRICS, MetricKind};

    /// The arguments of a macro call starting at `text[0]` (just past its
    /// opening parenthesis), up to the matching closing one.
    fn call_arguments(text: &str) -> &str {
        let mut depth = 0usize;
        for (i, c) in text.char_indices() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => return &text[..i],
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            }
        }
        text
    }

    /// The literal label keys of a call: every `"key" =>`.
    fn label_keys(arguments: &str) -> impl Iterator<Item = &str> {
        arguments.match_indices("\" =>").filter_map(|(at, _)| arguments[..at].rsplit('"').next())
    }

    /// Every `ingestd_…` metric in a `counter!`, `gauge!` or `histogram!` of
    /// the workspace's crates, with the label keys its calls use.
    fn metrics_in_the_code(root: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
        let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
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
                            let arguments = call_arguments(&text[at + macro_name.len()..]);
                            let rest = arguments.trim_start();
                            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                                && name.starts_with("ingestd_")
                            {
                                let keys = used.entry(name.to_owned()).or_default();
                                keys.extend(label_keys(arguments).map(str::to_owned));
                            }
                        }
                    }
                }
            }
        }
        used
    }

    /// [`METRICS`] names every metric the code emits, with the label keys
    /// the code uses; docs/operations.md lists each with the same type and
    /// labels; every histogram has buckets.
    #[test]
    fn the_metric_list_matches_the_code_and_the_docs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let used = metrics_in_the_code(&root);
        assert!(used.len() > 30, "found only {used:?}");
        let listed: BTreeMap<String, BTreeSet<String>> =
            METRICS.iter().map(|m| (m.name.to_owned(), m.labels.iter().map(|l| (*l).to_owned()).collect())).collect();
        assert_eq!(used, listed, "metrics and their labels in the code vs telemetry::METRICS");
        for m in METRICS {
            if m.kind == MetricKind::Histogram {
                assert!(
                    m.name.ends_with("_seconds") || super::COUNT_BUCKETS.iter().any(|(n, _)| *n == m.name),
                    "{} has no buckets: it would be rendered as a summary",
                    m.name
                );
            }
        }
        // The table of docs/operations.md: | `name` | type | `label`, … | meaning |
        let docs = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
        let mut documented = BTreeMap::new();
        for line in docs.lines().filter(|l| l.starts_with("| `ingestd_")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let labels: Vec<&str> =
                cells[3].split(',').map(|l| l.trim().trim_matches('`')).filter(|l| *l != "—").collect();
            documented.insert(name, (cells[2].to_owned(), labels));
        }
        let expected: BTreeMap<String, (String, Vec<&str>)> = METRICS
            .iter()
            .map(|m| {
                let kind = match m.kind {
                    MetricKind::Counter => "counter",
                    MetricKind::Gauge => "gauge",
                    MetricKind::Histogram => "histogram",
                };
                (m.name.to_owned(), (kind.to_owned(), m.labels.to_vec()))
            })
            .collect();
        assert_eq!(documented, expected, "docs/operations.md's metric table vs telemetry::METRICS");
    }
}
