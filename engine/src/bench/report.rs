//! What a bench run reports: one JSON object (`--json`) or a table on stdout. Every
//! figure comes with the ledger check that makes it trustworthy; a run that fails the
//! check is reported as FAILED.

use serde::Serialize;

use super::probe;

/// How many times something was timed and its quantiles, estimated from the buckets
/// of one histogram (merged over every process).
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Observations the histogram counted.
    pub batches: u64,
    /// Median, milliseconds (a bucket estimate).
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds (a bucket estimate).
    pub p99_ms: Option<f64>,
}

impl Latency {
    /// From cumulative buckets in seconds.
    pub fn of(buckets: &[(f64, f64)]) -> Self {
        Latency {
            batches: buckets.last().map_or(0, |l| l.1 as u64),
            p50_ms: probe::quantile(buckets, 0.5).map(|s| s * 1000.0),
            p99_ms: probe::quantile(buckets, 0.99).map(|s| s * 1000.0),
        }
    }

    /// `p50 / p99` for the table.
    fn quantiles(&self) -> String {
        format!("{} / {}", opt(self.p50_ms, " ms"), opt(self.p99_ms, " ms"))
    }
}

/// Batch latency of one pipeline stage (`mailing_batch_duration_seconds`): jobs counted.
#[derive(Debug, Clone, Serialize)]
pub struct StageLatency {
    /// `plan` or `send`.
    pub stage: &'static str,
    /// Its jobs and their quantiles.
    #[serde(flatten)]
    pub latency: Latency,
}

/// One step of the send jobs (`mailing_batch_step_duration_seconds`): where a batch's
/// time went, its waits for the database included.
#[derive(Debug, Clone, Serialize)]
pub struct StepLatency {
    /// `claim`, `personalize`, `deliver`, `record` or `window`.
    pub step: &'static str,
    /// Times the step ended (a batch that claimed nothing ends after `claim`) and
    /// their quantiles.
    #[serde(flatten)]
    pub latency: Latency,
    /// Its time summed over every batch of every process, seconds.
    pub total_seconds: f64,
    /// That total over the total of every step: the step's share of the send jobs' time.
    pub share: f64,
}

/// One child process's resources.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUsage {
    /// `serve`, `api` or `worker`.
    pub role: &'static str,
    /// Its pid.
    pub pid: u32,
    /// Its resident-memory high-water mark, bytes (`null`: not measured; read on Linux
    /// only, from a process still running at the end).
    pub peak_rss_bytes: Option<u64>,
    /// The same mark when half of the recipients had been accepted (by the sink; with
    /// the `file` provider, by the ledger's count, read every 2 s).
    pub peak_rss_at_half_bytes: Option<u64>,
    /// CPU time it spent during the send, milliseconds (`null`: the system gave none).
    pub cpu_ms: Option<u64>,
}

/// The two ledgers compared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ledger {
    /// The campaign's recipients.
    pub total: i64,
    /// Recipients the campaign's ledger marks `sent`.
    pub sent: i64,
    /// Recipients it marks `failed`.
    pub failed: i64,
    /// Messages the sink (or the outbox) accepted.
    pub sink_accepted: u64,
    /// Distinct recipients among them.
    pub sink_distinct: u64,
    /// Requests the HTTP sink answered without counting them again: retries carrying an
    /// `Idempotency-Key` it had already accepted (a provider like Resend does not send
    /// those twice).
    pub sink_replayed: u64,
    /// The campaign's final status.
    pub campaign_status: String,
}

/// A pipeline run.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineReport {
    /// `ok` or `FAILED`.
    pub status: &'static str,
    /// Why it failed.
    pub failures: Vec<String>,
    /// `sqlite` or `redis`.
    pub backend: String,
    /// `sink`, `smtp-sink` or `file`.
    pub provider: String,
    /// `none`, `trivial` or `greeting`.
    pub plugin: String,
    /// Worker processes.
    pub workers: usize,
    /// Recipients.
    pub recipients: usize,
    /// Seeding the audience (not part of `seconds`).
    pub seed_seconds: f64,
    /// From `POST /send` to the campaign's `done`.
    pub seconds: f64,
    /// recipients / seconds.
    pub emails_per_sec: f64,
    /// The engine processes' CPU time during the send, per 1,000 messages (`null` when
    /// the system did not give a process's CPU time).
    pub cpu_ms_per_1k: Option<f64>,
    /// The highest peak RSS of the engine processes, bytes (`null` unless every process's
    /// was measured; see `probe::peak_rss_bytes`).
    pub peak_rss_bytes: Option<u64>,
    /// The highest of their peaks when half of the recipients had been accepted:
    /// memory flat in campaign size keeps it near `peak_rss_bytes`.
    pub peak_rss_at_half_bytes: Option<u64>,
    /// Each engine process.
    pub processes: Vec<ProcessUsage>,
    /// Per-stage batch latency (bucket estimates over every process's `/metrics`,
    /// workers included; `null` when no process ran a batch of that stage).
    pub stages: Vec<StageLatency>,
    /// The send jobs' steps, in the order a batch runs them (a step no batch ran, such
    /// as `personalize` without a plugin, is left out).
    pub send_steps: Vec<StepLatency>,
    /// Liquid alone on one core, messages/s, before the engine starts.
    pub render_only_per_sec: f64,
    /// Liquid alone on one core again once the campaign is done and the engine
    /// stopped (`null` for a stalled run). Far from `render_only_per_sec`, the
    /// machine's speed drifted during the run, and emails/s with it: compare such runs
    /// by `cpu_per_message_in_renders`.
    pub render_only_after_per_sec: Option<f64>,
    /// The plugin alone on one core in batches of 500, recipients/s (`null`: no plugin).
    pub plugin_only_per_sec: Option<f64>,
    /// Empty jobs pushed and consumed per second on the same queue backend.
    pub queue_noop_jobs_per_sec: f64,
    /// The same, in messages/s: jobs/s × BATCH_SIZE.
    pub queue_noop_emails_per_sec: f64,
    /// Messages/s the sink accepted from the real provider client, alone.
    pub sink_accept_per_sec: f64,
    /// The slowest of the limits above (messages/s), by name.
    pub slowest_limit: String,
    /// emails_per_sec / the slowest limit.
    pub engine_fraction_of_slowest_limit: f64,
    /// The engine processes' CPU time per message in units of one render on one core
    /// (`cpu_ms_per_1k` × `render_only_per_sec` / 10⁶). A machine whose speed drifts
    /// mostly slows both halves together, so this compares runs and builds less
    /// sensitively to the machine than emails/s or CPU ms alone.
    pub cpu_per_message_in_renders: Option<f64>,
    /// The ledger check.
    pub ledger: Ledger,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What the table shows for a figure the system did not give.
pub(crate) const NOT_MEASURED: &str = "not measured";

/// A memory figure for the table: MiB and bytes, or why there is none.
pub(crate) fn memory(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || format!("{NOT_MEASURED} (read on Linux only, from a running process)"),
        |b| format!("{:.1} MiB ({b} bytes)", mib(b)),
    )
}

/// A CPU figure for the table, or why there is none.
fn cpu(value: Option<String>) -> String {
    value.unwrap_or_else(|| format!("{NOT_MEASURED} (the system gave no CPU time)"))
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}{unit}"))
}

impl PipelineReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<34} {v}\n"));
        row("status", self.status.to_owned());
        for f in &self.failures {
            // A failure's later lines (a process's log tail) go under its first.
            row("  failure", f.replace('\n', &format!("\n{:35}", "")));
        }
        row(
            "run",
            format!(
                "backend={} provider={} plugin={} workers={}",
                self.backend, self.provider, self.plugin, self.workers
            ),
        );
        row("recipients", self.recipients.to_string());
        row("seed seconds", format!("{:.1}", self.seed_seconds));
        row("send seconds", format!("{:.2}", self.seconds));
        row("emails/s", format!("{:.0}", self.emails_per_sec));
        row(
            "CPU ms per 1k messages",
            cpu(self.cpu_ms_per_1k.map(|v| format!("{v:.1}"))),
        );
        row("peak RSS", memory(self.peak_rss_bytes));
        if self.peak_rss_at_half_bytes.is_some() {
            row(
                "peak RSS at half the recipients",
                memory(self.peak_rss_at_half_bytes),
            );
        }
        for p in &self.processes {
            row(
                &format!("  {} pid {}", p.role, p.pid),
                format!(
                    "peak RSS {}, CPU {}",
                    memory(p.peak_rss_bytes),
                    cpu(p.cpu_ms.map(|ms| format!("{ms} ms")))
                ),
            );
        }
        for s in &self.stages {
            row(
                &format!("{} batch p50 / p99 (est.)", s.stage),
                format!("{} over {} jobs", s.latency.quantiles(), s.latency.batches),
            );
        }
        for s in &self.send_steps {
            row(
                &format!("  send step {} p50 / p99", s.step),
                format!(
                    "{}, {:.0}% of the send jobs' time",
                    s.latency.quantiles(),
                    s.share * 100.0
                ),
            );
        }
        row(
            "limit: render only (1 core)",
            format!("{:.0} /s", self.render_only_per_sec),
        );
        row(
            "  the same after the send",
            self.render_only_after_per_sec
                .map_or_else(|| "-".into(), |v| format!("{v:.0} /s")),
        );
        row(
            "limit: plugin only (1 core)",
            opt(self.plugin_only_per_sec, " /s"),
        );
        row(
            "limit: queue no-op jobs",
            format!(
                "{:.0} jobs/s = {:.0} emails/s",
                self.queue_noop_jobs_per_sec, self.queue_noop_emails_per_sec
            ),
        );
        row(
            "limit: sink accept",
            format!("{:.0} /s", self.sink_accept_per_sec),
        );
        row(
            "engine / slowest limit",
            format!(
                "{:.1}% of {}",
                self.engine_fraction_of_slowest_limit * 100.0,
                self.slowest_limit
            ),
        );
        row(
            "CPU per message, in renders",
            cpu(self.cpu_per_message_in_renders.map(|v| format!("{v:.2}"))),
        );
        row(
            "ledger",
            format!(
                "campaign {}: sent {} of {} (failed {}); sink accepted {} ({} distinct, {} \
                 retried requests answered again)",
                self.ledger.campaign_status,
                self.ledger.sent,
                self.ledger.total,
                self.ledger.failed,
                self.ledger.sink_accepted,
                self.ledger.sink_distinct,
                self.ledger.sink_replayed
            ),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cpu_ms: Option<u64>, peak: Option<u64>) -> PipelineReport {
        let cpu_ms_per_1k = cpu_ms.map(|ms| ms as f64);
        PipelineReport {
            status: "ok",
            failures: Vec::new(),
            backend: "sqlite".into(),
            provider: "sink".into(),
            plugin: "trivial".into(),
            workers: 1,
            recipients: 1000,
            seed_seconds: 0.5,
            seconds: 1.0,
            emails_per_sec: 1000.0,
            cpu_ms_per_1k,
            peak_rss_bytes: peak,
            peak_rss_at_half_bytes: peak,
            processes: vec![ProcessUsage {
                role: "serve",
                pid: 42,
                peak_rss_bytes: peak,
                peak_rss_at_half_bytes: peak,
                cpu_ms,
            }],
            stages: Vec::new(),
            send_steps: Vec::new(),
            render_only_per_sec: 20_000.0,
            render_only_after_per_sec: None,
            plugin_only_per_sec: None,
            queue_noop_jobs_per_sec: 100.0,
            queue_noop_emails_per_sec: 50_000.0,
            sink_accept_per_sec: 100_000.0,
            slowest_limit: "render_only".into(),
            engine_fraction_of_slowest_limit: 0.05,
            cpu_per_message_in_renders: cpu_ms_per_1k.map(|ms| ms * 20_000.0 / 1e6),
            ledger: Ledger::default(),
        }
    }

    #[test]
    fn figures_the_system_did_not_give_read_as_not_measured_never_as_zero() {
        let missing = report(None, None);
        let table = missing.table();
        for row in [
            "CPU ms per 1k messages",
            "peak RSS",
            "CPU per message, in renders",
        ] {
            let line = table
                .lines()
                .find(|l| l.starts_with(row))
                .unwrap_or_else(|| panic!("no row {row}:\n{table}"));
            assert!(line.contains(NOT_MEASURED), "{line}");
        }
        let serve = table
            .lines()
            .find(|l| l.trim_start().starts_with("serve pid 42"))
            .expect("the process row");
        assert_eq!(serve.matches(NOT_MEASURED).count(), 2, "{serve}");
        let json = serde_json::to_value(&missing).expect("serializes");
        for key in [
            "cpu_ms_per_1k",
            "peak_rss_bytes",
            "cpu_per_message_in_renders",
        ] {
            assert!(json[key].is_null(), "{key}: {}", json[key]);
        }
        assert!(json["processes"][0]["cpu_ms"].is_null());

        let measured = report(Some(80), Some(70 << 20)).table();
        assert!(!measured.contains(NOT_MEASURED), "{measured}");
        assert!(measured.contains("70.0 MiB (73400320 bytes)"), "{measured}");
        assert!(measured.contains("CPU 80 ms"), "{measured}");
    }
}
