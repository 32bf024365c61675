//! `mailing bench`: the real engine, measured. `--mode pipeline` (the default) seeds a
//! synthetic audience, starts this executable as `mailing serve` (SQLite) or `mailing
//! api` plus `--workers` × `mailing worker` (Redis + PostgreSQL), sends one campaign to
//! an in-process sink, and reports throughput, CPU, memory and batch latency beside the
//! limits measured in the same run (Liquid alone, the plugin alone, the queue's empty
//! round trip, the sink alone), all checked against the campaign's ledger and the
//! sink's count. `--mode api` load-tests the HTTP API with `wrk` instead.

mod api_load;
mod audience;
mod fleet;
mod interrupt;
mod limits;
mod probe;
mod report;
mod sink;
mod stall;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use mailing_jobs::provider::file::FileProvider;
use mailing_jobs::provider::resend::{ResendConfig, ResendProvider};
use mailing_jobs::provider::smtp::{SmtpConfig, SmtpProvider, SmtpTls};
use mailing_jobs::provider::{Provider, Transport};
use mailing_jobs::queue::{Queue, QueueConfig};
use mailing_jobs::store::{Store, StoreConfig};
use serde_json::{Value, json};

use crate::config::Config;
use fleet::{Api, Member};
use interrupt::Interrupt;
use report::{Latency, Ledger, PipelineReport, ProcessUsage, StageLatency, StepLatency};
use stall::StallClock;

/// The most recipients a run accepts.
pub const MAX_RECIPIENTS: usize = 10_000_000;
/// The most engine processes a run starts.
pub const MAX_WORKERS: usize = 64;
/// Subscribers written per store transaction while seeding.
const SEED_CHUNK: usize = 10_000;

/// Scrapes of every process's /metrics at most, 250 ms apart, until the send stage's
/// batch count stops changing (see the end of a run).
const SCRAPES_TO_SETTLE: usize = 8;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// One campaign through the real pipeline.
    Pipeline,
    /// The HTTP API under `wrk`.
    Api,
}

/// Where the store and the queue live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// SQLite store and queue in a temporary DATA_DIR (`mailing serve`).
    Sqlite,
    /// Redis queue (`REDIS_URL`) and a fresh database on the PostgreSQL server of
    /// `DATABASE_URL` (`mailing api` + workers).
    Redis,
}

/// The example plugin in the campaign's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchPlugin {
    /// No plugin.
    None,
    /// Keeps everyone, adds nothing: the host's own cost.
    Trivial,
    /// Adds a greeting in the recipient's language.
    Greeting,
}

/// Where messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchProvider {
    /// An in-process Resend-style HTTP server (the `resend` provider).
    Sink,
    /// An in-process SMTP server (the `smtp` provider, no TLS).
    SmtpSink,
    /// The outbox directory (the `file` provider).
    File,
}

/// `mailing bench` options. The options of one mode are refused in the other (they
/// would be silently ignored), so those without a value are `None` here and take their
/// default in the accessor of the same name.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "pipeline")]
    pub mode: BenchMode,
    /// Recipients of the campaign [default: 100000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_RECIPIENTS as u64))]
    pub recipients: Option<u64>,
    /// Store and queue [default: sqlite].
    #[arg(long, value_enum)]
    pub backend: Option<BenchBackend>,
    /// The example plugin to run on every batch [default: none].
    #[arg(long, value_enum)]
    pub plugin: Option<BenchPlugin>,
    /// Where `trivial.wasm` and `greeting.wasm` are (default: `plugins/examples/dist`
    /// under the current directory or the binary's repository).
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
    /// Where messages go [default: sink].
    #[arg(long, value_enum)]
    pub provider: Option<BenchProvider>,
    /// Engine processes that run jobs [default: 1]: with SQLite, the one `mailing serve`
    /// and N−1 `mailing worker`s beside it; with Redis, N `mailing worker`s beside one
    /// `mailing api`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS as u64))]
    pub workers: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the temporary directory (logs, databases) and the PostgreSQL database.
    #[arg(long)]
    pub keep: bool,
    /// `--mode api`: seconds `wrk` runs per endpoint [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration: Option<u64>,
    /// `--mode api`: `wrk` connections, shared by its two threads [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub connections: Option<u32>,
    /// The engine processes' `LOG_LEVEL`. Spans obey it like log lines do, so `info`
    /// with an `OTEL_EXPORTER_OTLP_ENDPOINT` set measures the engine exporting traces.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Report the run as FAILED once the campaign has stood still this many seconds (no
    /// recipient accepted, none newly recorded in the ledger, or the API unanswered),
    /// with each process's log tail [default: 300]. Between the engine's retries of a
    /// failing provider (`RETRY_BACKOFF_SECS`, 30 s doubling up to 600 s) a run stands
    /// still: raise it to wait those out. The run's time limit (180 s and 1 s per 500
    /// recipients) grows by as much.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stall_seconds: Option<u64>,
}

impl BenchArgs {
    /// `--recipients`.
    pub fn recipients(&self) -> usize {
        self.recipients.map_or(100_000, |n| n as usize)
    }

    /// `--backend`.
    pub fn backend(&self) -> BenchBackend {
        self.backend.unwrap_or(BenchBackend::Sqlite)
    }

    /// `--plugin`.
    pub fn plugin(&self) -> BenchPlugin {
        self.plugin.unwrap_or(BenchPlugin::None)
    }

    /// `--provider`.
    pub fn provider(&self) -> BenchProvider {
        self.provider.unwrap_or(BenchProvider::Sink)
    }

    /// `--workers`.
    pub fn workers(&self) -> usize {
        self.workers.map_or(1, |n| n as usize)
    }

    /// `--duration`.
    pub fn duration(&self) -> u64 {
        self.duration.unwrap_or(10)
    }

    /// `--connections`.
    pub fn connections(&self) -> u32 {
        self.connections.unwrap_or(64)
    }

    /// `--stall-seconds`.
    pub fn stall_seconds(&self) -> u64 {
        self.stall_seconds.unwrap_or(300)
    }

    /// Refuses the options the chosen mode does not use.
    fn check_mode(&self) -> anyhow::Result<()> {
        let pipeline_only = [
            ("--recipients", self.recipients.is_some()),
            ("--backend", self.backend.is_some()),
            ("--plugin", self.plugin.is_some()),
            ("--plugins-dir", self.plugins_dir.is_some()),
            ("--provider", self.provider.is_some()),
            ("--workers", self.workers.is_some()),
            ("--stall-seconds", self.stall_seconds.is_some()),
        ];
        let api_only = [
            ("--duration", self.duration.is_some()),
            ("--connections", self.connections.is_some()),
        ];
        let (mode, other, refused) = match self.mode {
            BenchMode::Pipeline => ("pipeline", "api", &api_only[..]),
            BenchMode::Api => ("api", "pipeline", &pipeline_only[..]),
        };
        let others: Vec<&str> = refused
            .iter()
            .filter_map(|&(name, given)| given.then_some(name))
            .collect();
        if !others.is_empty() {
            bail!(
                "{} {} not apply to --mode {mode}, only to --mode {other}",
                others.join(", "),
                if others.len() == 1 { "does" } else { "do" }
            );
        }
        Ok(())
    }
}

/// Runs `mailing bench`.
pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    args.check_mode().map_err(|e| without_report(&args, e))?;
    match args.mode {
        BenchMode::Pipeline => {
            let report = pipeline(config, &args)
                .await
                .map_err(|e| without_report(&args, e))?;
            show(
                &args,
                "the bench run",
                &report,
                report.table(),
                report.status,
                &report.failures,
            )
        }
        BenchMode::Api => {
            let report = api_load::run(config, &args)
                .await
                .map_err(|e| without_report(&args, e))?;
            show(
                &args,
                "the API bench",
                &report,
                report.table(),
                report.status,
                &report.failures,
            )
        }
    }
}

/// Prints a run's report (JSON with `--json`, else its table); an error when it FAILED.
fn show(
    args: &BenchArgs,
    what: &str,
    report: &impl serde::Serialize,
    table: String,
    status: &str,
    failures: &[String],
) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{table}");
    }
    if status != "ok" {
        bail!("{what} FAILED: {}", failures.join("; "));
    }
    Ok(())
}

/// A run that ended before it had a report: with `--json`, it still prints one object
/// (`status` FAILED, the error in `failures`), so a script reading stdout gets one.
fn without_report(args: &BenchArgs, error: anyhow::Error) -> anyhow::Error {
    if args.json {
        println!(
            "{}",
            json!({"status": "FAILED", "failures": [format!("{error:#}")]})
        );
    }
    error
}

/// A fresh temporary directory for one run.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "mailing-bench-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(dir.join("data"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Finds `{name}.wasm`: in `--plugins-dir`, else `plugins/examples/dist` under the
/// current directory or any ancestor of the executable.
fn plugin_file(dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let file = format!("{name}.wasm");
    let mut candidates = Vec::new();
    if let Some(d) = dir {
        candidates.push(d.join(&file));
    } else {
        if let Ok(cwd) = std::env::current_dir() {
            candidates.push(cwd.join("plugins/examples/dist").join(&file));
        }
        if let Ok(exe) = std::env::current_exe() {
            for ancestor in exe.ancestors().skip(1) {
                candidates.push(ancestor.join("plugins/examples/dist").join(&file));
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "the example plugin {file} was not found (looked in {}); build the examples with \
             `plugins/examples/build.sh` (needs the wasm32-wasip2 target: `rustup target add \
             wasm32-wasip2`) or pass --plugins-dir",
                candidates
                    .iter()
                    .take(3)
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh PostgreSQL database on the server of `url`: (its URL, the admin URL, its name).
async fn fresh_postgres(url: &str) -> anyhow::Result<(String, String, String)> {
    use sqlx::Connection as _;
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        bail!(
            "--backend redis needs DATABASE_URL to be a postgres:// URL (it is {})",
            crate::config::mask(url)
        );
    }
    let mut admin = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url))
        .await
        .context("PostgreSQL did not answer within 5 s")?
        .with_context(|| format!("cannot connect to {}", crate::config::mask(url)))?;
    let name = format!(
        "mailing_bench_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let fresh = with_database(url, &name)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .context("cannot create the bench database")?;
    let _ = admin.close().await;
    Ok((fresh, url.to_owned(), name))
}

/// `url` naming the database `name` instead of its own (or none), its user, host,
/// port and parameters kept.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url)
        .with_context(|| format!("DATABASE_URL is not a URL: {}", crate::config::mask(url)))?;
    parsed.set_path(&format!("/{name}"));
    // sqlx lets `?dbname=` override the path: it would name the caller's database.
    if parsed.query_pairs().any(|(k, _)| k == "dbname") {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "dbname")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed.set_query(None);
        if !kept.is_empty() {
            parsed.query_pairs_mut().extend_pairs(kept);
        }
    }
    Ok(parsed.into())
}

/// Drops the run's database (PostgreSQL 13 or later: `WITH (FORCE)` ends the
/// connections a killed engine left), saying so when it cannot.
async fn drop_postgres(admin_url: &str, name: &str) {
    use sqlx::Connection as _;
    let dropped = tokio::time::timeout(Duration::from_secs(30), async {
        let mut admin = sqlx::PgConnection::connect(admin_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await
    })
    .await;
    let why = match dropped {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "PostgreSQL did not answer within 30 s".to_owned(),
    };
    eprintln!("bench: could not drop the PostgreSQL database {name} ({why}); drop it by hand");
}

/// Everything a run set up, to be taken down whatever happens.
struct Scratch {
    dir: PathBuf,
    keep: bool,
    postgres: Option<(String, String)>,
    redis: Option<(String, String)>,
}

impl Scratch {
    async fn clean(&self) {
        if self.keep {
            eprintln!("bench: kept {}", self.dir.display());
            if let Some((_, name)) = &self.postgres {
                eprintln!("bench: kept the PostgreSQL database {name}");
            }
            return;
        }
        if let Some((admin, name)) = &self.postgres {
            drop_postgres(admin, name).await;
        }
        if let Some((url, namespace)) = &self.redis
            && let Err(e) = mailing_jobs::queue::remove_redis_namespace(url, namespace).await
        {
            eprintln!("bench: could not remove the queue namespace {namespace}: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn pipeline(config: &Config, args: &BenchArgs) -> anyhow::Result<PipelineReport> {
    let plugin = match args.plugin() {
        BenchPlugin::None => None,
        BenchPlugin::Trivial => Some("trivial"),
        BenchPlugin::Greeting => Some("greeting"),
    };
    let wasm = match plugin {
        Some(name) => {
            let path = plugin_file(args.plugins_dir.as_deref(), name)?;
            Some(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let redis_url = match args.backend() {
        BenchBackend::Redis => Some(config.redis_url.clone().context(
            "--backend redis needs REDIS_URL (e.g. redis://127.0.0.1:6379) and a postgres:// DATABASE_URL",
        )?),
        BenchBackend::Sqlite => None,
    };
    let mut interrupt = Interrupt::listen().context("cannot listen for SIGINT and SIGTERM")?;
    let dir = scratch_dir()?;
    let namespace = format!(
        "mailing_bench_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut scratch = Scratch {
        dir: dir.clone(),
        keep: args.keep,
        postgres: None,
        redis: redis_url.clone().map(|u| (u, namespace.clone())),
    };
    let database_url = match args.backend() {
        BenchBackend::Sqlite => format!("sqlite://{}/data/mailing.sqlite3", dir.display()),
        BenchBackend::Redis => match fresh_postgres(&config.database_url).await {
            Ok((url, admin, name)) => {
                scratch.postgres = Some((admin, name));
                url
            }
            Err(e) => {
                scratch.clean().await;
                return Err(e);
            }
        },
    };
    // Interrupted, the run's processes are killed with it (`Member`'s `Drop`); the
    // scratch goes as after any run.
    let result = interrupt
        .unless_interrupted(pipeline_in(
            config,
            args,
            &dir,
            &database_url,
            redis_url.as_deref(),
            &namespace,
            wasm,
        ))
        .await;
    scratch.clean().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn pipeline_in(
    config: &Config,
    args: &BenchArgs,
    dir: &Path,
    database_url: &str,
    redis_url: Option<&str>,
    namespace: &str,
    wasm: Option<Vec<u8>>,
) -> anyhow::Result<PipelineReport> {
    let n = args.recipients();
    let newsletter = audience::Newsletter::new();
    let quiet = |msg: &str| eprintln!("bench: {msg}");

    // 1. The audience, straight into the store.
    quiet(&format!("seeding {n} subscribers ..."));
    let seed_started = Instant::now();
    let store = Store::connect(&StoreConfig {
        url: database_url.to_owned(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(30),
    })
    .await
    .context("opening the bench database")?;
    let list = store.create_list("Bench audience", None).await?;
    let mut from = 0;
    while from < n {
        let to = (from + SEED_CHUNK).min(n);
        let report = store
            .add_subscribers(list.id, &audience::subscribers(from, to))
            .await?;
        if !report.rejected.is_empty() {
            bail!("seeding refused rows: {:?}", report.rejected.first());
        }
        from = to;
    }
    store.close().await;
    let seed_seconds = seed_started.elapsed().as_secs_f64();

    // 2. The sink.
    let sink = match args.provider() {
        BenchProvider::Sink => Some(sink::start_http().await?),
        BenchProvider::SmtpSink => Some(sink::start_smtp().await?),
        BenchProvider::File => None,
    };

    // 3. The limits, each alone, before the engine starts.
    quiet("measuring the limits (render, plugin, queue, sink) ...");
    let render_only = render_only_per_sec().await?;
    let plugin_only = match &wasm {
        Some(bytes) => {
            let (limits, bytes) = (config.plugin_limits.clone(), bytes.clone());
            Some(
                tokio::task::spawn_blocking(move || limits::plugin_only_per_sec(limits, &bytes))
                    .await??,
            )
        }
        None => None,
    };
    let queue_config = QueueConfig {
        namespace: namespace.to_owned(),
        ..config.queue.clone()
    };
    let queue = match redis_url {
        Some(url) => Queue::redis(url, queue_config).await?,
        None => Queue::sqlite(&dir.join("data/queue.sqlite3"), queue_config).await?,
    };
    let queue_noop = limits::queue_noop_jobs_per_sec(&queue, config.worker_concurrency).await?;
    drop(queue);
    let probe_provider = match (&sink, args.provider()) {
        (Some(s), BenchProvider::Sink) => Transport::Resend(ResendProvider::new(ResendConfig {
            api_key: sink::SINK_API_KEY.into(),
            base_url: s.address.clone(),
            timeout: Duration::from_secs(30),
        })?),
        (Some(s), _) => Transport::Smtp(SmtpProvider::new(&SmtpConfig {
            host: "127.0.0.1".into(),
            port: s.port,
            username: None,
            password: None,
            tls: SmtpTls::None,
            pool_size: 8,
            timeout: Duration::from_secs(30),
        })?),
        (None, _) => Transport::File(FileProvider::new(dir.join("sink-probe-outbox"))),
    };
    let probe_provider = Provider::unlimited(probe_provider);
    let batch = limits::sample_batch(&newsletter, probe_provider.message_form())?;
    let sink_accept = limits::sink_accept_per_sec(
        probe_provider,
        batch,
        config.worker_concurrency * args.workers(),
        config.send_concurrency,
        args.provider() == BenchProvider::Sink,
    )
    .await?;
    if let Some(s) = &sink {
        s.tally.reset();
    }
    let _ = std::fs::remove_dir_all(dir.join("sink-probe-outbox"));

    // 4. The engine.
    let port = free_port()?;
    let mut env = fleet::child_env(dir, port, database_url, namespace);
    // Every process serves its own /metrics, workers too: the stage latencies are
    // read from all of them.
    let head_metrics = free_port()?;
    env.insert("PROMETHEUS_PORT".into(), head_metrics.to_string());
    let mut metrics_ports = vec![head_metrics];
    env.insert("LOG_LEVEL".into(), args.log_level.clone());
    env.insert("RUST_LOG".into(), args.log_level.clone());
    match redis_url {
        Some(url) => env.insert("REDIS_URL".into(), url.into()),
        None => env.insert("REDIS_URL".into(), String::new()),
    };
    let provider_name = match (&sink, args.provider()) {
        (Some(s), BenchProvider::Sink) => {
            env.insert("RESEND_API_KEY".into(), sink::SINK_API_KEY.into());
            env.insert("RESEND_API_URL".into(), s.address.clone());
            env.insert("RESEND_REQUEST_RATE".into(), "1000000".into());
            env.insert("RESEND_RATE_LIMIT".into(), String::new());
            "resend"
        }
        (Some(s), _) => {
            env.insert("SMTP_HOST".into(), "127.0.0.1".into());
            env.insert("SMTP_PORT".into(), s.port.to_string());
            env.insert("SMTP_TLS".into(), "none".into());
            env.insert("SMTP_USERNAME".into(), String::new());
            env.insert("SMTP_PASSWORD".into(), String::new());
            env.insert("SMTP_RATE_LIMIT".into(), String::new());
            "smtp"
        }
        (None, _) => {
            env.insert("FILE_RATE_LIMIT".into(), String::new());
            "file"
        }
    };
    let mut members: Vec<Member> = Vec::new();
    let head = match args.backend() {
        BenchBackend::Sqlite => "serve",
        BenchBackend::Redis => "api",
    };
    members.push(fleet::spawn(head, dir, &env, 0)?);
    let mut api = Api::new(format!("http://127.0.0.1:{port}"))?;
    api.wait_healthy(&mut members[0]).await?;
    let extra_workers = match args.backend() {
        BenchBackend::Sqlite => args.workers() - 1,
        BenchBackend::Redis => args.workers(),
    };
    for i in 0..extra_workers {
        let mut worker_env = env.clone();
        worker_env.insert("HTTP_PORT".into(), free_port()?.to_string());
        let metrics_port = free_port()?;
        worker_env.insert("PROMETHEUS_PORT".into(), metrics_port.to_string());
        metrics_ports.push(metrics_port);
        members.push(fleet::spawn("worker", dir, &worker_env, i + 1)?);
    }
    api.login().await?;
    let plugins = match (&wasm, args.plugin()) {
        (Some(bytes), choice) => {
            let name = format!("{choice:?}").to_ascii_lowercase();
            let id = api.upload_plugin(&name, bytes.clone()).await?;
            json!([{"plugin_id": id}])
        }
        (None, _) => json!([]),
    };
    let template = api
        .call(
            reqwest::Method::POST,
            "/api/v1/templates",
            Some(json!({
                "name": "Bench newsletter",
                "subject": newsletter.subject,
                "html": newsletter.html,
                "text": newsletter.text,
            })),
            201,
        )
        .await?;
    let campaign = api
        .call(
            reqwest::Method::POST,
            "/api/v1/campaigns",
            Some(json!({
                "name": "Bench",
                "template_id": template["id"],
                "list_ids": [list.id],
                "from": "Shop <news@shop.example>",
                "provider": provider_name,
                "plugins": plugins,
            })),
            201,
        )
        .await?;
    let id = campaign["id"].as_i64().context("the campaign has no id")?;
    for m in &mut members {
        if let Some(status) = m.exited() {
            bail!(
                "`mailing {}` exited ({status}); its log ends:\n{}",
                m.role,
                m.log_tail()
            );
        }
    }

    // 5. Send, and watch. From here on every request is bounded by the stall clock: an
    // engine that stops answering is reported as stalled, not waited for.
    quiet(&format!("sending campaign {id} to {n} recipients ..."));
    let cpu_before: Vec<Option<u64>> = members.iter().map(|m| probe::cpu_ms(m.pid())).collect();
    let started = Instant::now();
    let mut stall = StallClock::new(Duration::from_secs(args.stall_seconds()));
    // A run that keeps moving may take this long; one that stands still is reported by
    // the stall clock first.
    let timeout = Duration::from_secs(180 + (n / 500) as u64 + args.stall_seconds());
    let outbox = dir.join("data/outbox");
    let progress = Progress::new(n);
    let mut last_poll = Instant::now();
    let mut failures = Vec::new();
    // Each process's resident-memory high-water mark once half the campaign was
    // accepted (by the sink, or without one as the ledger counts it): against the mark
    // at the end, whether memory grew with the second half.
    let mut peak_rss_at_half: Option<Vec<Option<u64>>> = None;
    let mut seen = stall::Progress::default();
    let send_path = format!("/api/v1/campaigns/{id}/send");
    let campaign_path = format!("/api/v1/campaigns/{id}");
    let answered = stall
        .bound(api.call(reqwest::Method::POST, &send_path, None, 202))
        .await;
    let mut stalled = match answered {
        Some(Ok(_)) => None,
        Some(Err(e)) => bail!("{e:#}{}", log_tails(&members)),
        None => Some(format!("POST {send_path} went unanswered")),
    };
    // The last poll's error: an engine that answers badly is waited for like one that
    // does not answer (until the stall clock runs out), and the report says why.
    let mut last_error: Option<String> = None;
    let mut final_campaign = Value::Null;
    while stalled.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Without a sink, the progress is the ledger's count, read below.
        seen.accepted = match &sink {
            Some(s) => s.tally.accepted(),
            None => seen.recorded,
        };
        stall.note(seen);
        progress.show(seen.accepted, started.elapsed());
        mark_half_way(&mut peak_rss_at_half, seen.accepted, n, &members);
        for m in &mut members {
            if let Some(status) = m.exited() {
                bail!(
                    "`mailing {}` exited ({status}) during the send; its log ends:\n{}",
                    m.role,
                    m.log_tail()
                );
            }
        }
        if stall.left().is_none() {
            stalled = Some("nothing moved".to_owned());
            break;
        }
        if started.elapsed() > timeout {
            failures.push(format!(
                "the campaign did not finish within {} s: {final_campaign}{}",
                timeout.as_secs(),
                log_tails(&members)
            ));
            break;
        }
        // The campaign answer counts the campaign's ledger (a scan of N rows), which would
        // load the engine we measure: with a sink, ask once it has everything (and every
        // 15 s, to notice a paused or failed campaign); with the outbox, a quarter of the
        // time the ledger's pace says is left, between 0.1 and 2 s, so the end is seen
        // within 0.1 s and a long run is not read every 0.1 s.
        let every = match &sink {
            Some(_) if seen.accepted >= n as u64 => Duration::from_millis(100),
            Some(_) => Duration::from_secs(15),
            None => outbox_poll_interval(seen.recorded, n as u64, started.elapsed()),
        };
        if last_poll.elapsed() < every {
            continue;
        }
        last_poll = Instant::now();
        let poll = stall
            .bound(async {
                if api.keep_logged_in().await? {
                    quiet("logged in again: the access token had lived half its lifetime");
                }
                api.call(reqwest::Method::GET, &campaign_path, None, 200)
                    .await
            })
            .await;
        let Some(body) = poll else {
            stalled = Some(format!("GET {campaign_path} went unanswered"));
            break;
        };
        let body = match body {
            Ok(body) => body,
            // Asking again cannot mend a refusal: reported now, not after the window.
            Err(e)
                if e.downcast_ref::<fleet::UnexpectedStatus>()
                    .is_some_and(fleet::UnexpectedStatus::is_permanent) =>
            {
                bail!("{e:#}{}", log_tails(&members));
            }
            Err(e) => {
                last_error = Some(format!("{e:#}"));
                continue;
            }
        };
        last_error = None;
        seen.recorded = body["stats"]["sent"].as_u64().unwrap_or(seen.recorded);
        // The campaign may end at this poll, before the next turn reads the mark.
        mark_half_way(&mut peak_rss_at_half, seen.recorded, n, &members);
        final_campaign = body;
        match final_campaign["status"].as_str().unwrap_or_default() {
            "done" => break,
            "failed" | "cancelled" | "paused" => {
                failures.push(format!(
                    "the campaign ended {}: {final_campaign}",
                    final_campaign["status"]
                ));
                break;
            }
            _ => {}
        }
    }
    if let Some(what) = &stalled {
        let ledger = if final_campaign.is_null() {
            "the ledger not read yet".to_owned()
        } else {
            format!("{} sent in the ledger at the last look", seen.recorded)
        };
        let answer = match &last_error {
            Some(e) => format!("; the last request failed: {e}"),
            None => String::new(),
        };
        failures.push(format!(
            "the run stalled: {what} for {} s ({} of {n} recipients accepted, {ledger}{answer}); \
             raise --stall-seconds if the engine was only waiting out a retry{}",
            stall.window().as_secs(),
            seen.accepted,
            log_tails(&members)
        ));
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    let cpu_ms: Vec<Option<u64>> = members
        .iter()
        .zip(&cpu_before)
        .map(|(m, before)| {
            // Before the send a process just started may have used less than a clock
            // tick (a fleet's workers); after it, every process has worked for the whole
            // send, so a total of 0 is a failed read (`probe::cpu_ms`), not a figure.
            let after = probe::cpu_ms(m.pid()).filter(|&ms| ms > 0)?;
            Some(after.saturating_sub((*before)?))
        })
        .collect();
    let processes: Vec<ProcessUsage> = members
        .iter()
        .zip(&cpu_ms)
        .enumerate()
        .map(|(i, (m, cpu))| {
            let at_half = peak_rss_at_half
                .as_ref()
                .and_then(|p| p.get(i).copied().flatten());
            ProcessUsage {
                role: m.role,
                pid: m.pid(),
                // The kernel's VmHWM is the larger of a stored mark and the current
                // RSS, whose per-thread counters lag by up to 64 pages each: a later
                // read can come out below an earlier one (CI: 252 KiB). So the peak is
                // at least what was read half-way, given a mark read at the end: a
                // process gone by then gives no peak rather than its earlier one.
                peak_rss_bytes: probe::peak_rss_bytes(m.pid())
                    .map(|end| end.max(at_half.unwrap_or(0))),
                peak_rss_at_half_bytes: at_half,
                cpu_ms: *cpu,
            }
        })
        .collect();
    // The campaign is done inside its last batch's job, and that job's duration is
    // recorded when the job returns, just after: scrape until two scrapes a moment
    // apart count the same batches, so the last one is not left out.
    let mut metrics: Vec<String> = Vec::new();
    let mut counted = None;
    // A stalled process may not answer at all: one scrape, each bounded, is enough.
    let scrapes = if stalled.is_some() {
        1
    } else {
        SCRAPES_TO_SETTLE
    };
    for _ in 0..scrapes {
        metrics.clear();
        for (m, port) in members.iter().zip(&metrics_ports) {
            match fleet::metrics_on(*port).await {
                Ok(text) => metrics.push(text),
                Err(e) => quiet(&format!(
                    "no /metrics from `mailing {}` on port {port} ({e:#}); its batches are left \
                     out of the stage latencies",
                    m.role
                )),
            }
        }
        let batches: f64 = metrics
            .iter()
            .filter_map(|text| {
                probe::histogram_buckets(text, "mailing_batch_duration_seconds", "stage", "send")
                    .last()
                    .map(|l| l.1)
            })
            .sum();
        if counted == Some(batches) {
            break;
        }
        counted = Some(batches);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stages = ["plan", "send"]
        .into_iter()
        .map(|stage| StageLatency {
            stage,
            latency: Latency::of(&probe::merged_buckets(
                &metrics,
                "mailing_batch_duration_seconds",
                "stage",
                stage,
            )),
        })
        .collect();
    let send_steps = send_steps(&metrics);
    for m in &mut members {
        m.stop(Duration::from_secs(15));
    }
    // Liquid alone again with the engine stopped, as before it started: how far the
    // machine's speed drifted during the run.
    let render_only_after = if stalled.is_none() {
        Some(render_only_per_sec().await?)
    } else {
        None
    };

    // 6. The ledger check.
    let stats = &final_campaign["stats"];
    let (sink_accepted, sink_distinct, sink_replayed) = match &sink {
        Some(s) => (s.tally.accepted(), s.tally.distinct(), s.tally.replayed()),
        None => {
            let files = std::fs::read_dir(&outbox)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                        .count()
                })
                .unwrap_or(0) as u64;
            // The outbox names each file by its delivery key: a message written twice
            // is one file, so it can show no duplicate.
            (files, files, 0)
        }
    };
    let ledger = Ledger {
        total: stats["total"].as_i64().unwrap_or(-1),
        sent: stats["sent"].as_i64().unwrap_or(-1),
        failed: stats["failed"].as_i64().unwrap_or(-1),
        sink_accepted,
        sink_distinct,
        sink_replayed,
        campaign_status: final_campaign["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    };
    failures.extend(ledger_failures(
        n as u64,
        &ledger,
        !final_campaign.is_null(),
    ));

    let emails_per_sec = n as f64 / seconds.max(1e-9);
    let queue_noop_emails = queue_noop * f64::from(config.batch_size);
    let mut candidates = vec![
        ("render_only_per_sec", render_only),
        ("queue_noop_emails_per_sec", queue_noop_emails),
        ("sink_accept_per_sec", sink_accept),
    ];
    if let Some(p) = plugin_only {
        candidates.push(("plugin_only_per_sec", p));
    }
    let (slowest_name, slowest) = candidates
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("none", f64::INFINITY));
    // Every process's CPU time, or no figure: a sum missing a process would read low.
    let total_cpu: Option<u64> = cpu_ms.iter().copied().sum();
    let cpu_ms_per_1k = total_cpu.map(|ms| ms as f64 / (n as f64 / 1000.0));
    Ok(PipelineReport {
        status: if failures.is_empty() { "ok" } else { "FAILED" },
        failures,
        backend: format!("{:?}", args.backend()).to_ascii_lowercase(),
        provider: match args.provider() {
            BenchProvider::Sink => "sink".into(),
            BenchProvider::SmtpSink => "smtp-sink".into(),
            BenchProvider::File => "file".into(),
        },
        plugin: format!("{:?}", args.plugin()).to_ascii_lowercase(),
        workers: args.workers(),
        recipients: n,
        seed_seconds,
        seconds,
        emails_per_sec,
        cpu_ms_per_1k,
        // Every process's peak, or none: a maximum over some of them could read low.
        peak_rss_bytes: processes
            .iter()
            .map(|p| p.peak_rss_bytes)
            .collect::<Option<Vec<u64>>>()
            .and_then(|peaks| peaks.into_iter().max()),
        peak_rss_at_half_bytes: processes
            .iter()
            .filter_map(|p| p.peak_rss_at_half_bytes)
            .max(),
        processes,
        stages,
        send_steps,
        render_only_per_sec: render_only,
        render_only_after_per_sec: render_only_after,
        plugin_only_per_sec: plugin_only,
        queue_noop_jobs_per_sec: queue_noop,
        queue_noop_emails_per_sec: queue_noop_emails,
        sink_accept_per_sec: sink_accept,
        slowest_limit: slowest_name.to_owned(),
        engine_fraction_of_slowest_limit: emails_per_sec / slowest,
        cpu_per_message_in_renders: cpu_ms_per_1k.map(|ms| ms * render_only / 1e6),
        ledger,
    })
}

/// What is wrong with a run whose campaign had `n` recipients, by its ledger and its
/// sink: every recipient `sent` in the ledger, and the sink accepted each exactly once
/// (a request the engine retried with the same `Idempotency-Key` is answered, as Resend
/// answers it, without counting its messages again). `ledger_read` is false when the
/// campaign's API never answered.
fn ledger_failures(n: u64, ledger: &Ledger, ledger_read: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let expected = i64::try_from(n).unwrap_or(i64::MAX);
    if !ledger_read {
        failures.push("the campaign's ledger was never read: its API did not answer".into());
    } else if ledger.total != expected || ledger.sent != expected {
        failures.push(format!(
            "the campaign's ledger shows sent {} of total {} (expected {n} of {n})",
            ledger.sent, ledger.total
        ));
    }
    if ledger.sink_distinct != n {
        failures.push(format!(
            "the sink counted {} distinct recipients (expected {n})",
            ledger.sink_distinct
        ));
    }
    if ledger.sink_accepted < n {
        failures.push(format!(
            "the sink accepted {} messages (expected {n})",
            ledger.sink_accepted
        ));
    } else if ledger.sink_accepted > ledger.sink_distinct {
        failures.push(format!(
            "the sink accepted {} messages for {} distinct recipients: {} sent more than once",
            ledger.sink_accepted,
            ledger.sink_distinct,
            ledger.sink_accepted - ledger.sink_distinct
        ));
    }
    failures
}

/// Each process's log tail, one after the other, for a failure's message.
fn log_tails(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("\n`mailing {}`'s log ends:\n{}", m.role, m.log_tail()))
        .collect()
}

/// How long to wait before reading the ledger again when only the ledger shows progress
/// (the `file` provider): a quarter of the time left at the pace so far, between 0.1 s
/// and 2 s (0.5 s before the first recipient is recorded: the first look then comes
/// after the shortest token's half-life, so a run logs in again whatever its speed).
fn outbox_poll_interval(recorded: u64, n: u64, elapsed: Duration) -> Duration {
    let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
    if recorded == 0 {
        return Duration::from_millis(500);
    }
    let per_recipient = elapsed.as_secs_f64() / recorded as f64;
    let left = per_recipient * n.saturating_sub(recorded) as f64;
    Duration::from_secs_f64((left / 4.0).min(max.as_secs_f64())).max(min)
}

/// Liquid alone on one core (`limits::render_only_per_sec`), off the async threads.
async fn render_only_per_sec() -> anyhow::Result<f64> {
    let newsletter = audience::Newsletter::new();
    tokio::task::spawn_blocking(move || limits::render_only_per_sec(&newsletter)).await?
}

/// The send jobs' steps from every process's `/metrics`: quantiles from the merged
/// buckets, shares from the histograms' sums.
fn send_steps(metrics: &[String]) -> Vec<StepLatency> {
    const NAME: &str = "mailing_batch_step_duration_seconds";
    let mut steps: Vec<StepLatency> = mailing_jobs::telemetry::SEND_STEPS
        .into_iter()
        .map(|step| StepLatency {
            step,
            latency: Latency::of(&probe::merged_buckets(metrics, NAME, "step", step)),
            total_seconds: metrics
                .iter()
                .map(|text| probe::histogram_sum(text, NAME, "step", step))
                .sum(),
            share: 0.0,
        })
        .filter(|s| s.latency.batches > 0)
        .collect();
    let all: f64 = steps.iter().map(|s| s.total_seconds).sum();
    for s in &mut steps {
        s.share = if all > 0.0 {
            s.total_seconds / all
        } else {
            0.0
        };
    }
    steps
}

/// Reads each process's resident-memory high-water mark into `mark` the first time
/// `accepted` reaches half of the `n` recipients.
fn mark_half_way(mark: &mut Option<Vec<Option<u64>>>, accepted: u64, n: usize, members: &[Member]) {
    if mark.is_none() && accepted.saturating_mul(2) >= n as u64 {
        *mark = Some(
            members
                .iter()
                .map(|m| probe::peak_rss_bytes(m.pid()))
                .collect(),
        );
    }
}

/// The progress bar on stderr: redrawn in place on a terminal, a line every five
/// seconds otherwise.
struct Progress {
    total: usize,
    tty: bool,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total: usize) -> Self {
        Progress {
            total,
            tty: std::io::stderr().is_terminal(),
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn show(&self, done: u64, elapsed: Duration) {
        let fraction = (done as f64 / self.total.max(1) as f64).min(1.0);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
        if self.tty {
            let filled = (fraction * 40.0) as usize;
            eprint!(
                "\r[{}{}] {:5.1}% {done}/{} {rate:.0}/s {:.1}s ",
                "#".repeat(filled),
                " ".repeat(40 - filled),
                fraction * 100.0,
                self.total,
                elapsed.as_secs_f64()
            );
        } else if self.last_line.get().elapsed() >= Duration::from_secs(5) {
            self.last_line.set(Instant::now());
            eprintln!(
                "bench: {:.1}% {done}/{} {rate:.0}/s {:.1}s",
                fraction * 100.0,
                self.total,
                elapsed.as_secs_f64()
            );
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(line: &[&str]) -> Result<BenchArgs, String> {
        Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied()))
            .map(|cli| cli.args)
            .map_err(|e| e.to_string())
    }

    fn ledger(sent: i64, accepted: u64, distinct: u64) -> Ledger {
        Ledger {
            total: 100,
            sent,
            failed: 0,
            sink_accepted: accepted,
            sink_distinct: distinct,
            sink_replayed: 0,
            campaign_status: "done".into(),
        }
    }

    #[test]
    fn a_run_counts_only_if_every_recipient_was_sent_and_accepted_exactly_once() {
        assert!(ledger_failures(100, &ledger(100, 100, 100), true).is_empty());

        let twice = ledger_failures(100, &ledger(100, 103, 100), true);
        assert_eq!(twice.len(), 1, "{twice:?}");
        assert!(twice[0].contains("3 sent more than once"), "{twice:?}");

        let short = ledger_failures(100, &ledger(99, 99, 99), true);
        assert_eq!(short.len(), 3, "{short:?}");
        assert!(short[0].contains("sent 99 of total 100"), "{short:?}");

        let unread = ledger_failures(100, &ledger(-1, 100, 100), false);
        assert_eq!(unread.len(), 1, "{unread:?}");
        assert!(unread[0].contains("never read"), "{unread:?}");
    }

    #[test]
    fn only_client_errors_that_asking_again_cannot_mend_end_a_run_at_once() {
        let answered = |status| fleet::UnexpectedStatus {
            call: "GET /api/v1/campaigns/1".into(),
            status,
            expect: 200,
            body: String::new(),
        };
        for status in [400, 401, 403, 404, 422] {
            assert!(answered(status).is_permanent(), "{status}");
        }
        for status in [408, 429, 500, 502, 503] {
            assert!(!answered(status).is_permanent(), "{status}");
        }
        let e = anyhow::Error::from(answered(404));
        assert!(
            e.downcast_ref::<fleet::UnexpectedStatus>()
                .is_some_and(fleet::UnexpectedStatus::is_permanent)
        );
        assert_eq!(
            e.to_string(),
            "GET /api/v1/campaigns/1 answered 404 (expected 200): "
        );
    }

    #[test]
    fn the_bench_database_replaces_only_the_url_s_database() {
        for (url, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/mailing_bench_x",
            ),
            (
                "postgres://u:p%40ss@db.example:6543",
                "postgres://u:p%40ss@db.example:6543/mailing_bench_x",
            ),
            (
                "postgresql://u@h/app?sslmode=require&application_name=a/b",
                "postgresql://u@h/mailing_bench_x?sslmode=require&application_name=a/b",
            ),
            (
                "postgres://u@h/?dbname=app",
                "postgres://u@h/mailing_bench_x",
            ),
            (
                "postgres://u@h?sslmode=disable&dbname=app",
                "postgres://u@h/mailing_bench_x?sslmode=disable",
            ),
        ] {
            assert_eq!(with_database(url, "mailing_bench_x").unwrap(), expected);
        }
    }

    #[test]
    fn the_outbox_is_read_more_often_as_the_run_nears_its_end() {
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            ms(outbox_poll_interval(0, 1000, Duration::from_secs(1))),
            500
        );
        // 10 s for 100 of 1,000: 90 s left, read every 2 s.
        assert_eq!(
            ms(outbox_poll_interval(100, 1000, Duration::from_secs(10))),
            2000
        );
        // 10 s for 900 of 1,000: ~1.1 s left, read every ~0.28 s.
        let near = ms(outbox_poll_interval(900, 1000, Duration::from_secs(10)));
        assert!((270..=290).contains(&near), "{near}");
        assert_eq!(
            ms(outbox_poll_interval(1000, 1000, Duration::from_secs(10))),
            100
        );
    }

    #[test]
    fn options_of_the_other_mode_are_refused_and_values_are_bounded() {
        let api = parse(&["--mode", "api", "--duration", "2"]).unwrap();
        assert!(api.check_mode().is_ok());
        assert_eq!((api.duration(), api.connections()), (2, 64));
        let defaults = parse(&[]).unwrap();
        assert!(defaults.check_mode().is_ok());
        assert_eq!(
            (
                defaults.recipients(),
                defaults.workers(),
                defaults.stall_seconds()
            ),
            (100_000, 1, 300)
        );

        let mixed = parse(&["--mode", "api", "--backend", "redis", "--workers", "2"]).unwrap();
        let refused = mixed.check_mode().unwrap_err().to_string();
        assert!(
            refused.starts_with("--backend, --workers do not apply to --mode api"),
            "{refused}"
        );
        let pipeline = parse(&["--connections", "8"]).unwrap();
        let refused = pipeline.check_mode().unwrap_err().to_string();
        assert!(
            refused.starts_with("--connections does not apply to --mode pipeline"),
            "{refused}"
        );

        for line in [
            &["--recipients", "0"][..],
            &["--recipients", "10000001"],
            &["--workers", "0"],
            &["--workers", "65"],
            &["--mode", "api", "--duration", "0"],
            &["--mode", "api", "--connections", "1"],
            &["--stall-seconds", "0"],
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains("invalid value"), "{line:?}: {e}");
        }
    }
}
