//! Telemetry: typed events and the metrics they feed. Each event is one struct whose
//! `emit` writes the log line and updates the counter or histogram, so the two never
//! drift apart. Instruments come from the global OpenTelemetry meter (`mailing`), which
//! the binary wires to `/metrics` (Prometheus text) and, when configured, OTLP.
//!
//! Names follow `mailing_<noun>_<unit>[_total]`; labels come from a small fixed set
//! (`stage`, `provider`, `outcome`, `event`, `route`, `status`, `actor`, `state`) and
//! never carry an address or an id. State that is cheaper to sample than to count (queue
//! depth, pool use, process and disk figures, business rates) is kept in a [`Gauges`]
//! snapshot that the scheduler refreshes and observable instruments read.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

/// A W3C trace context (`traceparent`, `tracestate`) carried in job payloads.
pub type TraceContext = std::collections::HashMap<String, String>;

/// The current span's trace context, for a job about to be enqueued.
pub fn inject_current() -> TraceContext {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let mut carrier = TraceContext::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier
}

/// Makes `span` a child of the trace a job was enqueued in.
pub fn continue_trace(span: &tracing::Span, carrier: &TraceContext) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if carrier.is_empty() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    let _ = span.set_parent(parent);
}

fn meter() -> Meter {
    opentelemetry::global::meter("mailing")
}

/// Buckets for durations in seconds, from 1 ms to 2 min.
const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The instruments events write to.
pub struct Instruments {
    deliveries: Counter<u64>,
    jobs: Counter<u64>,
    enqueued: Counter<u64>,
    throttles: Counter<u64>,
    ratelimit_wait: Counter<f64>,
    provider_events: Counter<u64>,
    unsubscribes: Counter<u64>,
    http_requests: Counter<u64>,
    campaigns_finished: Counter<u64>,
    backups: Counter<u64>,
    telemetry_dropped: Counter<u64>,
    plugin_calls: Counter<u64>,
    plugin_fuel: Counter<u64>,
    plugin_breaker_trips: Counter<u64>,
    plugin_duration: Histogram<f64>,
    batch_duration: Histogram<f64>,
    batch_step_duration: Histogram<f64>,
    render_duration: Histogram<f64>,
    provider_duration: Histogram<f64>,
    http_duration: Histogram<f64>,
}

impl std::fmt::Debug for Instruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instruments")
    }
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let m = meter();
    let counter =
        |name: &'static str, help: &'static str| m.u64_counter(name).with_description(help).build();
    let seconds = |name: &'static str, help: &'static str| {
        m.f64_histogram(name)
            .with_description(help)
            .with_boundaries(SECONDS.to_vec())
            .build()
    };
    Instruments {
        deliveries: counter(
            "mailing_deliveries_total",
            "Recipients handed to a provider, by provider and outcome",
        ),
        jobs: counter(
            "mailing_jobs_total",
            "Queue jobs by stage and event (started, succeeded, failed, retried, dead)",
        ),
        enqueued: counter(
            "mailing_jobs_enqueued_total",
            "Queue jobs enqueued, by stage",
        ),
        throttles: counter(
            "mailing_provider_throttles_total",
            "Throttled provider answers (429 or Retry-After), by provider",
        ),
        ratelimit_wait: m
            .f64_counter("mailing_ratelimit_wait_seconds_total")
            .with_description("Seconds spent waiting for a provider's rate limit, by provider")
            .build(),
        provider_events: counter(
            "mailing_provider_events_total",
            "Provider webhook events applied, by event",
        ),
        unsubscribes: counter("mailing_unsubscribes_total", "One-click unsubscribes"),
        http_requests: counter(
            "mailing_http_requests_total",
            "HTTP requests by route and status",
        ),
        campaigns_finished: counter(
            "mailing_campaigns_finished_total",
            "Campaigns that finished sending, by status (done)",
        ),
        backups: counter("mailing_backups_total", "Backups taken, by outcome"),
        telemetry_dropped: counter(
            "mailing_telemetry_dropped_total",
            "Spans (signal=traces) or metric exports (signal=metrics) not delivered over OTLP, by reason (export_failed, queue_full)",
        ),
        plugin_calls: counter(
            "mailing_plugin_calls_total",
            "Plugin batch calls, by plugin and outcome (ok, or the failure kind: trap, out_of_fuel, deadline, memory_limit, ...)",
        ),
        plugin_fuel: counter(
            "mailing_plugin_fuel_used_total",
            "Fuel (about one unit per WebAssembly instruction) used by plugin calls, by plugin",
        ),
        plugin_breaker_trips: counter(
            "mailing_plugin_breaker_trips_total",
            "Circuit-breaker trips that switched a plugin off for a campaign, by plugin",
        ),
        plugin_duration: seconds(
            "mailing_plugin_call_duration_seconds",
            "Time of one plugin batch call (instantiation, init and batch), by plugin",
        ),
        batch_duration: seconds(
            "mailing_batch_duration_seconds",
            "Time to run one job, by stage",
        ),
        batch_step_duration: seconds(
            "mailing_batch_step_duration_seconds",
            "Time of one step of a send job (claim, personalize, deliver, record, window), by step",
        ),
        render_duration: seconds(
            "mailing_render_duration_seconds",
            "Time to render and build one message",
        ),
        provider_duration: seconds(
            "mailing_provider_request_duration_seconds",
            "Time of one provider send or request, by provider",
        ),
        http_duration: seconds(
            "mailing_http_request_duration_seconds",
            "HTTP request latency, by route",
        ),
    }
});

fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// A recipient's outcome at a provider.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryRecorded<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// `sent`, `failed`, `retried` or `skipped`.
    pub outcome: &'static str,
    /// How many recipients.
    pub count: u64,
}

impl DeliveryRecorded<'_> {
    /// Records it.
    pub fn emit(self) {
        if self.count > 0 {
            INSTRUMENTS.deliveries.add(
                self.count,
                &[
                    kv("provider", self.provider.to_owned()),
                    kv("outcome", self.outcome),
                ],
            );
        }
    }
}

/// A queue job event.
#[derive(Debug, Clone, Copy)]
pub struct JobEvent {
    /// `plan` or `send`.
    pub stage: &'static str,
    /// `started`, `succeeded`, `failed`, `retried` or `dead`.
    pub event: &'static str,
    /// How long the job ran (for finished jobs).
    pub duration: Option<Duration>,
}

impl JobEvent {
    /// Records it (and the duration, for finished jobs).
    pub fn emit(self) {
        INSTRUMENTS
            .jobs
            .add(1, &[kv("stage", self.stage), kv("event", self.event)]);
        if let Some(d) = self.duration {
            INSTRUMENTS
                .batch_duration
                .record(d.as_secs_f64(), &[kv("stage", self.stage)]);
        }
    }
}

/// A job was enqueued.
#[derive(Debug, Clone, Copy)]
pub struct JobEnqueued {
    /// `plan` or `send`.
    pub stage: &'static str,
}

impl JobEnqueued {
    /// Records it.
    pub fn emit(self) {
        INSTRUMENTS.enqueued.add(1, &[kv("stage", self.stage)]);
    }
}

/// The steps of a send job that [`BatchStepTimed`] names, in the order a batch runs them.
pub const SEND_STEPS: [&str; 5] = ["claim", "personalize", "deliver", "record", "window"];

/// One step of a send job finished: where a batch's time goes (its waits for the
/// database included), so a slow stage can be told apart from a busy store.
#[derive(Debug, Clone, Copy)]
pub struct BatchStepTimed {
    /// One of [`SEND_STEPS`].
    pub step: &'static str,
    /// How long it took.
    pub elapsed: Duration,
}

impl BatchStepTimed {
    /// Records it.
    pub fn emit(self) {
        INSTRUMENTS
            .batch_step_duration
            .record(self.elapsed.as_secs_f64(), &[kv("step", self.step)]);
    }
}

/// Rendering of a batch: records the time per message.
#[derive(Debug, Clone, Copy)]
pub struct BatchRendered {
    /// Messages rendered.
    pub messages: usize,
    /// Total time.
    pub elapsed: Duration,
}

impl BatchRendered {
    /// Records it.
    pub fn emit(self) {
        if self.messages > 0 {
            INSTRUMENTS
                .render_duration
                .record(self.elapsed.as_secs_f64() / self.messages as f64, &[]);
        }
    }
}

/// One provider call finished.
#[derive(Debug, Clone, Copy)]
pub struct ProviderCall<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// How long it took.
    pub elapsed: Duration,
}

impl ProviderCall<'_> {
    /// Records it.
    pub fn emit(self) {
        INSTRUMENTS.provider_duration.record(
            self.elapsed.as_secs_f64(),
            &[kv("provider", self.provider.to_owned())],
        );
    }
}

/// A provider throttled us.
#[derive(Debug, Clone, Copy)]
pub struct ProviderThrottled<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// What it asked us to wait.
    pub wait: Duration,
}

impl ProviderThrottled<'_> {
    /// Records it and logs a warning.
    pub fn emit(self) {
        tracing::warn!(
            provider = self.provider,
            wait_ms = self.wait.as_millis() as u64,
            "Provider throttled us; pausing it"
        );
        INSTRUMENTS
            .throttles
            .add(1, &[kv("provider", self.provider.to_owned())]);
    }
}

/// Time spent waiting for a rate limit.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitWaited<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// How long.
    pub waited: Duration,
}

impl RateLimitWaited<'_> {
    /// Records it.
    pub fn emit(self) {
        if !self.waited.is_zero() {
            INSTRUMENTS.ratelimit_wait.add(
                self.waited.as_secs_f64(),
                &[kv("provider", self.provider.to_owned())],
            );
        }
    }
}

/// A provider webhook event was applied.
#[derive(Debug, Clone, Copy)]
pub struct ProviderEventApplied {
    /// `delivered`, `bounced`, `complained`, `delayed`.
    pub event: &'static str,
}

impl ProviderEventApplied {
    /// Records it.
    pub fn emit(self) {
        tracing::info!(event = self.event, "Provider event applied");
        INSTRUMENTS
            .provider_events
            .add(1, &[kv("event", self.event)]);
    }
}

/// A recipient unsubscribed.
#[derive(Debug, Clone, Copy)]
pub struct Unsubscribed;

impl Unsubscribed {
    /// Records it.
    pub fn emit(self) {
        tracing::info!("Recipient unsubscribed");
        INSTRUMENTS.unsubscribes.add(1, &[]);
    }
}

/// An HTTP request finished.
#[derive(Debug, Clone)]
pub struct HttpRequestServed {
    /// The route pattern (ids replaced by `{id}`).
    pub route: String,
    /// The status code.
    pub status: u16,
    /// Latency.
    pub elapsed: Duration,
}

impl HttpRequestServed {
    /// Records it.
    pub fn emit(self) {
        INSTRUMENTS.http_requests.add(
            1,
            &[
                kv("route", self.route.clone()),
                kv("status", i64::from(self.status)),
            ],
        );
        INSTRUMENTS
            .http_duration
            .record(self.elapsed.as_secs_f64(), &[kv("route", self.route)]);
    }
}

/// A campaign reached a final status.
#[derive(Debug, Clone, Copy)]
pub struct CampaignFinished {
    /// The campaign.
    pub campaign_id: i64,
    /// `done`, `failed`, `cancelled`.
    pub status: &'static str,
}

impl CampaignFinished {
    /// Records it.
    pub fn emit(self) {
        tracing::info!(
            campaign_id = self.campaign_id,
            status = self.status,
            "Campaign finished"
        );
        INSTRUMENTS
            .campaigns_finished
            .add(1, &[kv("status", self.status)]);
    }
}

/// A backup attempt ended.
#[derive(Debug, Clone, Copy)]
pub struct BackupTaken {
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

impl BackupTaken {
    /// Records it.
    pub fn emit(self) {
        INSTRUMENTS.backups.add(1, &[kv("outcome", self.outcome)]);
    }
}

/// Telemetry that could not be exported (collector down or black-holed).
#[derive(Debug, Clone, Copy)]
pub struct TelemetryDropped {
    /// `traces` or `metrics`.
    pub signal: &'static str,
    /// `export_failed` (the collector refused, timed out or was unreachable) or
    /// `queue_full` (spans ended faster than they could be exported; dropped before
    /// they could grow memory).
    pub reason: &'static str,
    /// Spans, or metric exports.
    pub count: u64,
}

impl TelemetryDropped {
    /// Records it (and logs at debug: a dead collector must not flood the logs).
    pub fn emit(self) {
        tracing::debug!(
            signal = self.signal,
            reason = self.reason,
            count = self.count,
            "Telemetry dropped"
        );
        INSTRUMENTS.telemetry_dropped.add(
            self.count,
            &[kv("signal", self.signal), kv("reason", self.reason)],
        );
    }
}

/// Sampled state, refreshed by the scheduler and read by observable instruments.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Waiting jobs per stage.
    pub queue_depth: BTreeMap<&'static str, u64>,
    /// Round trip to the queue backend (Redis or the SQLite queue file), seconds.
    pub queue_roundtrip: Option<f64>,
    /// Age of the oldest due, untaken job per stage, seconds.
    pub queue_oldest_age: BTreeMap<&'static str, f64>,
    /// Recipients of running campaigns: (to send, finished).
    pub running_progress: Option<(i64, i64)>,
    /// Compiled templates held, and the cache's hits, misses and evictions.
    pub template_cache: (u64, u64, u64, u64),
    /// Supervised components: (up, restarts).
    pub actors: BTreeMap<String, (bool, u64)>,
    /// Database connections (in use, idle).
    pub db_pool: (u64, u64),
    /// Process CPU seconds, resident bytes, open files.
    pub process: (f64, u64, u64),
    /// Free bytes on the data directory's filesystem.
    pub disk_free_bytes: u64,
    /// Last successful backup (epoch seconds, bytes).
    pub last_backup: Option<(i64, u64)>,
    /// Ledger ratios: delivery, bounce, complaint, unsubscribe.
    pub rates: Option<(f64, f64, f64, f64)>,
    /// Campaigns by status.
    pub campaigns: BTreeMap<String, i64>,
}

static GAUGES: LazyLock<Mutex<Gauges>> = LazyLock::new(|| Mutex::new(Gauges::default()));

/// Replaces the sampled state.
pub fn set_gauges(update: impl FnOnce(&mut Gauges)) {
    let mut g = GAUGES.lock().unwrap_or_else(|p| p.into_inner());
    update(&mut g);
}

fn gauges() -> Gauges {
    GAUGES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Registers the observable instruments over [`Gauges`] (call once, after the global
/// meter provider is installed) and creates the event instruments.
pub fn register() {
    LazyLock::force(&INSTRUMENTS);
    let m = meter();
    m.u64_observable_gauge("mailing_queue_depth_jobs")
        .with_description("Jobs waiting (due or scheduled), by stage")
        .with_callback(|o| {
            for (stage, n) in gauges().queue_depth {
                o.observe(n, &[kv("stage", stage)]);
            }
        })
        .build();
    m.f64_observable_gauge("mailing_queue_oldest_job_age_seconds")
        .with_description("Age of the oldest due job no worker has taken yet, by stage")
        .with_callback(|o| {
            for (stage, age) in gauges().queue_oldest_age {
                o.observe(age, &[kv("stage", stage)]);
            }
        })
        .build();
    m.i64_observable_gauge("mailing_running_campaign_recipients")
        .with_description(
            "Recipients of running campaigns, by state (pending, finished): campaign progress",
        )
        .with_callback(|o| {
            if let Some((pending, finished)) = gauges().running_progress {
                o.observe(pending, &[kv("state", "pending")]);
                o.observe(finished, &[kv("state", "finished")]);
            }
        })
        .build();
    m.f64_observable_gauge("mailing_queue_roundtrip_seconds")
        .with_description("Round trip of a ping to the queue backend (Redis or the SQLite queue)")
        .with_callback(|o| {
            if let Some(rtt) = gauges().queue_roundtrip {
                o.observe(rtt, &[]);
            }
        })
        .build();
    m.u64_observable_gauge("mailing_template_cache_entries")
        .with_description("Compiled templates held")
        .with_callback(|o| o.observe(gauges().template_cache.0, &[]))
        .build();
    m.u64_observable_counter("mailing_template_cache_hits_total")
        .with_description("Template lookups answered from the cache")
        .with_callback(|o| o.observe(gauges().template_cache.1, &[]))
        .build();
    m.u64_observable_counter("mailing_template_cache_misses_total")
        .with_description("Template lookups that compiled the template")
        .with_callback(|o| o.observe(gauges().template_cache.2, &[]))
        .build();
    m.u64_observable_counter("mailing_template_cache_evictions_total")
        .with_description("Compiled templates dropped for size or age")
        .with_callback(|o| o.observe(gauges().template_cache.3, &[]))
        .build();
    m.u64_observable_gauge("mailing_actor_up")
        .with_description("1 while a supervised component runs")
        .with_callback(|o| {
            for (actor, (up, _)) in gauges().actors {
                o.observe(u64::from(up), &[kv("actor", actor)]);
            }
        })
        .build();
    m.u64_observable_counter("mailing_actor_restarts_total")
        .with_description("Restarts of each supervised component")
        .with_callback(|o| {
            for (actor, (_, restarts)) in gauges().actors {
                o.observe(restarts, &[kv("actor", actor)]);
            }
        })
        .build();
    m.u64_observable_gauge("mailing_db_pool_connections")
        .with_description("Database pool connections, by state (in_use, idle)")
        .with_callback(|o| {
            let (in_use, idle) = gauges().db_pool;
            o.observe(in_use, &[kv("state", "in_use")]);
            o.observe(idle, &[kv("state", "idle")]);
        })
        .build();
    m.f64_observable_counter("mailing_process_cpu_seconds_total")
        .with_description("CPU time used by the process")
        .with_callback(|o| o.observe(gauges().process.0, &[]))
        .build();
    m.u64_observable_gauge("mailing_process_resident_memory_bytes")
        .with_description("Resident memory of the process")
        .with_callback(|o| o.observe(gauges().process.1, &[]))
        .build();
    m.u64_observable_gauge("mailing_process_open_fds")
        .with_description("Open file descriptors of the process")
        .with_callback(|o| o.observe(gauges().process.2, &[]))
        .build();
    m.u64_observable_gauge("mailing_data_dir_free_bytes")
        .with_description("Free space on the data directory's filesystem")
        .with_callback(|o| o.observe(gauges().disk_free_bytes, &[]))
        .build();
    m.i64_observable_gauge("mailing_backup_last_success_timestamp_seconds")
        .with_description("When the newest verified backup was taken")
        .with_callback(|o| {
            if let Some((at, _)) = gauges().last_backup {
                o.observe(at, &[]);
            }
        })
        .build();
    m.u64_observable_gauge("mailing_backup_last_size_bytes")
        .with_description("Size of the newest verified backup")
        .with_callback(|o| {
            if let Some((_, size)) = gauges().last_backup {
                o.observe(size, &[]);
            }
        })
        .build();
    for (name, help, pick) in [
        (
            "mailing_delivery_rate_ratio",
            "(sent + complained) / (sent + complained + bounced + failed), whole ledger",
            0_usize,
        ),
        (
            "mailing_bounce_rate_ratio",
            "Bounced / handed to providers, whole ledger",
            1,
        ),
        (
            "mailing_complaint_rate_ratio",
            "Complained / handed to providers, whole ledger",
            2,
        ),
        (
            "mailing_unsubscribe_rate_ratio",
            "Recipients who unsubscribed / handed to providers",
            3,
        ),
    ] {
        m.f64_observable_gauge(name)
            .with_description(help)
            .with_callback(move |o| {
                if let Some(r) = gauges().rates {
                    o.observe([r.0, r.1, r.2, r.3][pick], &[]);
                }
            })
            .build();
    }
    m.i64_observable_gauge("mailing_campaigns")
        .with_description("Campaigns by status")
        .with_callback(|o| {
            for (status, n) in gauges().campaigns {
                o.observe(n, &[kv("status", status)]);
            }
        })
        .build();
}

/// Samples process CPU, RSS, open files and the free space under `data_dir`.
pub fn sample_process(
    system: &mut sysinfo::System,
    disks: &mut sysinfo::Disks,
    data_dir: &std::path::Path,
) {
    let pid = sysinfo::Pid::from_u32(std::process::id());
    system.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    let (cpu, rss) = system
        .process(pid)
        .map(|p| (p.accumulated_cpu_time() as f64 / 1000.0, p.memory()))
        .unwrap_or((0.0, 0));
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    disks.refresh(true);
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let free = disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
        .unwrap_or(0);
    set_gauges(|g| {
        g.process = (cpu, rss, fds);
        g.disk_free_bytes = free;
    });
}

/// One plugin call on one batch.
#[derive(Debug, Clone, Copy)]
pub struct PluginCalled<'a> {
    /// `name@version`.
    pub plugin: &'a str,
    /// `ok`, or the failure kind.
    pub outcome: &'a str,
    /// Recipients in the call.
    pub recipients: usize,
    /// Fuel used.
    pub fuel: u64,
    /// Wall time.
    pub elapsed: Duration,
}
impl PluginCalled<'_> {
    /// Records it; failures are logged as warnings.
    pub fn emit(self) {
        if self.outcome != "ok" {
            tracing::warn!(
                plugin = self.plugin,
                outcome = self.outcome,
                recipients = self.recipients,
                fuel = self.fuel,
                elapsed_ms = self.elapsed.as_millis() as u64,
                "Plugin call failed"
            );
        }
        let plugin = kv("plugin", self.plugin.to_owned());
        INSTRUMENTS
            .plugin_calls
            .add(1, &[plugin.clone(), kv("outcome", self.outcome.to_owned())]);
        INSTRUMENTS
            .plugin_fuel
            .add(self.fuel, std::slice::from_ref(&plugin));
        INSTRUMENTS
            .plugin_duration
            .record(self.elapsed.as_secs_f64(), &[plugin]);
    }
}

/// A plugin's circuit breaker opened for a campaign.
#[derive(Debug, Clone, Copy)]
pub struct PluginSwitchedOff<'a> {
    /// `name@version`.
    pub plugin: &'a str,
    /// The campaign.
    pub campaign_id: i64,
    /// The failure that tripped it.
    pub last_error: &'a str,
}
impl PluginSwitchedOff<'_> {
    /// Records it and logs an error.
    pub fn emit(self) {
        tracing::error!(
            plugin = self.plugin,
            campaign_id = self.campaign_id,
            error = self.last_error,
            "Plugin switched off for this campaign by its circuit breaker"
        );
        INSTRUMENTS
            .plugin_breaker_trips
            .add(1, &[kv("plugin", self.plugin.to_owned())]);
    }
}
