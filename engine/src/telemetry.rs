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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanProcessor,
};
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
    /// The runtime the gRPC (tonic) exporters' connections live on, when gRPC is used.
    grpc_runtime: Option<tokio::runtime::Runtime>,
}

/// The OTLP transport for one signal: `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL`,
/// else `OTEL_EXPORTER_OTLP_PROTOCOL`; `grpc` or `http/protobuf` (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Grpc,
    HttpProtobuf,
}

fn transport(signal: &str, problems: &mut Vec<String>) -> Transport {
    let specific = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
    let (name, value) = match std::env::var(&specific) {
        Ok(v) if !v.trim().is_empty() => (specific, v),
        _ => (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
            std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default(),
        ),
    };
    match value.trim() {
        "grpc" => Transport::Grpc,
        "" | "http/protobuf" => Transport::HttpProtobuf,
        other => {
            problems.push(format!(
                "{name}={other:?} is not supported (grpc or http/protobuf); exporting over HTTP/protobuf"
            ));
            Transport::HttpProtobuf
        }
    }
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
    let (metrics_transport, traces_transport) = if otlp {
        (
            transport("METRICS", &mut problems),
            transport("TRACES", &mut problems),
        )
    } else {
        (Transport::HttpProtobuf, Transport::HttpProtobuf)
    };
    // tonic's channels need a tokio runtime; this one is the exporters' own (one thread),
    // so export never competes with the engine's runtime, which starts later.
    let grpc_runtime =
        if otlp && (metrics_transport == Transport::Grpc || traces_transport == Transport::Grpc) {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-grpc")
                .enable_all()
                .build()
            {
                Ok(rt) => Some(rt),
                Err(e) => {
                    problems.push(format!("OTLP over gRPC disabled: no runtime for it: {e}"));
                    None
                }
            }
        } else {
            None
        };
    let _grpc_context = grpc_runtime.as_ref().map(|rt| rt.enter());
    if otlp {
        let exporter = match (metrics_transport, &grpc_runtime) {
            (Transport::Grpc, Some(_)) => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build(),
            _ => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build(),
        };
        match exporter {
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
        let exporter = match (traces_transport, &grpc_runtime) {
            (Transport::Grpc, Some(_)) => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
            _ => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build(),
        };
        match exporter {
            Ok(exporter) => {
                let capacity = span_queue_capacity();
                let queued = Arc::new(AtomicUsize::new(0));
                let batch = BatchSpanProcessor::builder(CountingSpans {
                    inner: exporter,
                    queued: queued.clone(),
                })
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(capacity)
                        .build(),
                )
                .build();
                Some(
                    SdkTracerProvider::builder()
                        .with_resource(resource())
                        .with_span_processor(SpanQueueGate {
                            inner: batch,
                            queued,
                            capacity,
                        })
                        .build(),
                )
            }
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
        let name = |t: Transport| match t {
            Transport::Grpc if grpc_runtime.is_some() => "gRPC",
            _ => "HTTP/protobuf",
        };
        tracing::info!(
            metrics = name(metrics_transport),
            traces = name(traces_transport),
            "Exporting metrics and traces over OTLP"
        );
    }
    drop(_grpc_context);
    Telemetry {
        registry,
        meters,
        tracer,
        grpc_runtime,
    }
}

impl Telemetry {
    /// Flushes and stops the exporters.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            let _ = t.shutdown();
        }
        let _ = self.meters.shutdown();
        if let Some(rt) = self.grpc_runtime {
            rt.shutdown_background();
        }
    }
}

/// `OTEL_BSP_MAX_QUEUE_SIZE` (the SDK's default, 2048, when unset or not a number).
fn span_queue_capacity() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2048)
}

/// Stands in front of the batch span processor and keeps its queue from overflowing:
/// it counts the spans handed over and not yet through an export (the exporter counts
/// them back out), and drops a span itself, counted as
/// `mailing_telemetry_dropped_total{signal="traces",reason="queue_full"}`, when that
/// many are waiting. The SDK's own queue drops silently; this way every span lost to a
/// slow or dead collector is counted, and memory stays bounded by the queue size.
#[derive(Debug)]
struct SpanQueueGate {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for SpanQueueGate {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            mailing_jobs::telemetry::TelemetryDropped {
                signal: "traces",
                reason: "queue_full",
                count: 1,
            }
            .emit();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts spans an exporter failed to deliver, and every exported batch back out of
/// the [`SpanQueueGate`]'s count.
#[derive(Debug)]
struct CountingSpans<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for CountingSpans<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let count = batch.len();
        let result = self.inner.export(batch).await;
        // Saturating: a span the gate let through before a restart of the count never
        // makes it wrap.
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(count))
            });
        if result.is_err() {
            mailing_jobs::telemetry::TelemetryDropped {
                signal: "traces",
                reason: "export_failed",
                count: count as u64,
            }
            .emit();
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
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
                reason: "export_failed",
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
