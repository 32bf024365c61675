//! Logs, metrics and traces. Logs: tracing, JSON lines in production and readable lines
//! in development (`LOG_FORMAT`), filtered by `LOG_LEVEL` (or `RUST_LOG`), to stdout.
//! Metrics: the OpenTelemetry SDK behind the global meter; one reader feeds `/metrics`
//! (a Prometheus registry), and when an OTLP endpoint is configured (the standard
//! `OTEL_EXPORTER_OTLP_*` variables, HTTP/protobuf) a periodic reader exports them too.
//! Traces: with an OTLP endpoint, tracing spans are exported through
//! tracing-opentelemetry. Exporters run on their own threads, so a slow or dead
//! collector never slows sending.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat};

/// The installed telemetry; shut it down at exit to flush exporters.
pub struct Telemetry {
    /// What `/metrics` encodes.
    pub registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracer: Option<SdkTracerProvider>,
}

fn otlp_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn resource() -> Resource {
    Resource::builder().with_service_name("mailing").build()
}

/// Installs logging, the global meter provider and, when configured, OTLP export.
/// Call before the async runtime starts (the OTLP exporters use blocking clients).
pub fn init(config: &Config, logs_to_stderr: bool) -> Telemetry {
    let registry = prometheus::Registry::new();
    let mut meters = SdkMeterProvider::builder().with_resource(resource());
    let mut problems = Vec::new();
    match opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_units()
        .without_counter_suffixes()
        .without_target_info()
        .scope_info_enabled(false)
        .build()
    {
        Ok(exporter) => meters = meters.with_reader(exporter),
        Err(e) => problems.push(format!("the Prometheus exporter failed to start: {e}")),
    }
    let otlp = otlp_configured();
    if otlp {
        if std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|p| p.starts_with("grpc")) {
            problems.push("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported yet; exporting over HTTP/protobuf".into());
        }
        match opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                meters = meters.with_reader(
                    opentelemetry_sdk::metrics::PeriodicReader::builder(CountingMetrics(exporter))
                        .build(),
                );
            }
            Err(e) => problems.push(format!("OTLP metrics export disabled: {e}")),
        }
    }
    let meters = meters.build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_meter_provider(meters.clone());
    mailing_jobs::telemetry::register();

    let tracer = if otlp {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_resource(resource())
                    .with_batch_exporter(CountingSpans(exporter))
                    .build(),
            ),
            Err(e) => {
                problems.push(format!("OTLP trace export disabled: {e}"));
                None
            }
        }
    } else {
        None
    };

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let otel_layer = tracer
        .as_ref()
        .map(|t| tracing_opentelemetry::layer().with_tracer(t.tracer("mailing")));
    // Commands whose stdout is their output (`bench --json`) log to stderr.
    let writer = if logs_to_stderr {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    let registry_layers = tracing_subscriber::registry().with(filter).with(otel_layer);
    let _ = match config.log_format {
        LogFormat::Json => registry_layers
            .with(fmt.json().flatten_event(true).with_current_span(true))
            .try_init(),
        LogFormat::Pretty => registry_layers.with(fmt.compact()).try_init(),
    };
    for p in problems {
        tracing::warn!(problem = %p, "Telemetry");
    }
    if otlp {
        tracing::info!("Exporting metrics and traces over OTLP (HTTP/protobuf)");
    }
    Telemetry {
        registry,
        meters,
        tracer,
    }
}

impl Telemetry {
    /// Flushes and stops the exporters.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            let _ = t.shutdown();
        }
        let _ = self.meters.shutdown();
    }
}

/// Counts spans an exporter failed to deliver.
#[derive(Debug)]
struct CountingSpans<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for CountingSpans<E>
{
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let count = batch.len() as u64;
        let result = self.0.export(batch).await;
        if result.is_err() {
            mailing_jobs::telemetry::TelemetryDropped {
                signal: "traces",
                count,
            }
            .emit();
        }
        result
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Counts metric exports that failed.
#[derive(Debug)]
struct CountingMetrics<E>(E);

impl<E: opentelemetry_sdk::metrics::exporter::PushMetricExporter>
    opentelemetry_sdk::metrics::exporter::PushMetricExporter for CountingMetrics<E>
{
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let result = self.0.export(metrics).await;
        if result.is_err() {
            mailing_jobs::telemetry::TelemetryDropped {
                signal: "metrics",
                count: 1,
            }
            .emit();
        }
        result
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.0.temporality()
    }
}
