//! Process assembly: opens the store and the queue, resolves secrets, creates the first
//! admin, builds the providers and the pipeline context, and starts the supervision tree
//! for the chosen mode (`serve`, `api`, `worker`) until SIGINT or SIGTERM.

use mailing_jobs::pipeline::personalize::PluginRuntime;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use anyhow::Context as _;
use mailing_api::AppState;
use mailing_api::auth::{AuthConfig, LoginThrottle, hash_password};
use mailing_jobs::health::HealthRegistry;
use mailing_jobs::pipeline::{PipelineConfig, PipelineContext};
use mailing_jobs::provider::file::FileProvider;
use mailing_jobs::provider::resend::ResendProvider;
use mailing_jobs::provider::smtp::SmtpProvider;
use mailing_jobs::provider::{Limits, Provider, Providers, Transport};
use mailing_jobs::queue::Queue;
use mailing_jobs::queue::workers::Stage;
use mailing_jobs::ratelimit::{Rate, RateLimiter};
use mailing_jobs::render::Renderer;
use mailing_jobs::store::StoreConfig;
use mailing_jobs::unsubscribe::UnsubscribeSigner;
use mailing_jobs::{Role, Store};
use ractor::Actor;
use rand::RngCore;
use tracing::{info, warn};

use crate::config::{Config, Environment};
use crate::supervisor::http::{HttpArgs, HttpServer};
use crate::supervisor::scheduler::{Scheduler, SchedulerArgs};
use crate::supervisor::stage::{StageArgs, StageSupervisor};
use crate::supervisor::{ChildSpec, RestartPolicy, RootArgs, Tree};

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// API and workers (the default).
    Serve,
    /// API and scheduler only.
    Api,
    /// Workers and scheduler only (a fleet member).
    Worker,
}

/// Opens the store (and migrates it).
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::connect(&StoreConfig {
        url: config.database_url.clone(),
        max_connections: config.database_pool_size,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .with_context(|| {
        format!(
            "cannot open the database {}",
            crate::config::mask(&config.database_url)
        )
    })
}

/// Opens the job queue: Redis when configured, else SQLite in `DATA_DIR`.
pub async fn open_queue(config: &Config) -> anyhow::Result<Queue> {
    match &config.redis_url {
        Some(url) => Queue::redis(url, config.queue.clone())
            .await
            .with_context(|| format!("cannot connect to Redis at {}", crate::config::mask(url))),
        None => {
            let path = config.data_dir.join("queue.sqlite3");
            Queue::sqlite(&path, config.queue.clone())
                .await
                .with_context(|| format!("cannot open the queue database {}", path.display()))
        }
    }
}

fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `AUTH_SECRET_KEY`, or in development a random key kept in `DATA_DIR/auth_secret`
/// (mode 0600) so sessions survive restarts.
pub fn auth_secret(config: &Config) -> anyhow::Result<String> {
    if let Some(secret) = &config.auth_secret {
        return Ok(secret.clone());
    }
    if config.environment == Environment::Production {
        anyhow::bail!("AUTH_SECRET_KEY is required in production");
    }
    let path = config.data_dir.join("auth_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if existing.len() >= 32 {
            return Ok(existing);
        }
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let secret = random_secret(32);
    write_private(&path, &secret)?;
    warn!(path = %path.display(), "AUTH_SECRET_KEY is not set; generated a development key");
    Ok(secret)
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

/// Creates the first admin when no user exists. In development without
/// `ADMIN_PASSWORD`, the password is generated and printed once.
pub async fn bootstrap_admin(store: &Store, config: &Config) -> anyhow::Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match &config.admin_password {
        Some(p) => (p.clone(), false),
        None => (random_secret(12), true),
    };
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    match store
        .create_user(&config.admin_username, &hash, Role::Admin)
        .await
    {
        Ok(_) => {}
        Err(mailing_jobs::StoreError::Conflict(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if generated {
        eprintln!(
            "\n  Created the first admin user.\n    username: {}\n    password: {}\n  \
             It is shown only this once; set ADMIN_PASSWORD to choose it yourself.\n",
            config.admin_username, password
        );
    }
    info!(username = %config.admin_username, "Created the first admin user");
    Ok(())
}

/// The API's request limits: shared by every API replica through Redis when the queue is
/// on Redis, in process otherwise.
pub fn api_limits(config: &Config, queue: &Queue) -> mailing_api::limits::ApiLimits {
    use mailing_jobs::ratelimit::KeyedLimiter;
    let limiter = |kind: &str, rate: Option<f64>| {
        let rate = rate.map(|per_second| Rate { per_second });
        match queue.redis_connection() {
            Some(conn) => KeyedLimiter::redis(
                rate,
                conn,
                format!("{}:apilimit:{kind}", config.queue.namespace),
            ),
            None => KeyedLimiter::local(rate),
        }
    };
    mailing_api::limits::ApiLimits {
        per_address: limiter("address", config.api_rate_per_ip),
        per_caller: limiter("caller", config.api_rate_per_user),
    }
}

/// The providers this configuration enables, each with its rate limits: shared by the
/// fleet through Redis when the queue is on Redis, in process otherwise.
pub fn providers(config: &Config, queue: &Queue) -> anyhow::Result<Providers> {
    let redis = queue.redis_connection();
    let limiter = |name: &str, what: &str, rate: Option<f64>| {
        let rate = rate.map(|per_second| Rate { per_second });
        match &redis {
            Some(conn) => RateLimiter::redis(
                rate,
                conn.clone(),
                format!("{}:ratelimit:{name}:{what}", config.queue.namespace),
            ),
            None => RateLimiter::local(rate),
        }
    };
    let limits = |name: &str, messages: Option<f64>, requests: Option<f64>| Limits {
        messages: limiter(name, "messages", messages),
        requests: limiter(name, "requests", requests),
        throttle_retries: 5,
    };
    let smtp = match &config.smtp {
        Some(smtp) => Some(Provider {
            transport: Transport::Smtp(SmtpProvider::new(smtp)?),
            limits: limits("smtp", config.rates.smtp, None),
        }),
        None => None,
    };
    let resend = match &config.resend {
        Some(resend) => Some(Provider {
            transport: Transport::Resend(ResendProvider::new(resend.clone())?),
            limits: limits("resend", config.rates.resend, config.rates.resend_requests),
        }),
        None => None,
    };
    Ok(Providers {
        file: Some(Provider {
            transport: Transport::File(FileProvider::new(&config.outbox_dir)),
            limits: limits("file", config.rates.file, None),
        }),
        smtp,
        resend,
    })
}

fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{}", std::process::id(), &random_secret(3))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// What ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGINT or SIGTERM.
    Signal,
    /// The API asked for a restart (a restore is pending).
    Restart,
}

/// Runs the process until a shutdown signal or a restart request.
/// The process's plugin host, with precompiled components cached in `DATA_DIR`.
pub fn plugin_runtime(config: &Config) -> anyhow::Result<PluginRuntime> {
    let host = mailing_plugins::PluginHost::new(
        config.plugin_limits.clone(),
        Some(config.data_dir.join("plugin-cache")),
    )
    .context("starting the plugin host")?;
    Ok(PluginRuntime {
        host,
        breaker: Arc::new(mailing_plugins::CircuitBreaker::new(
            config.plugin_breaker_threshold,
        )),
    })
}

/// Serves `GET /metrics` on `addr` (`PROMETHEUS_PORT`) for the life of the process.
async fn serve_metrics(addr: &str, registry: prometheus::Registry) -> anyhow::Result<()> {
    use salvo::conn::{Acceptor, Listener, TcpListener};
    let acceptor = TcpListener::new(addr.to_owned())
        .try_bind()
        .await
        .with_context(|| format!("cannot listen on {addr} (PROMETHEUS_PORT)"))?;
    if let Some(bound) = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
    {
        info!(addr = %bound, "Serving /metrics");
    }
    tokio::spawn(salvo::Server::new(acceptor).serve(mailing_api::metrics_service(registry)));
    Ok(())
}

pub async fn run(
    config: Config,
    mode: Mode,
    metrics: prometheus::Registry,
) -> anyhow::Result<Exit> {
    if let Some(name) = mailing_jobs::backup::take_restore_request(&config.backup) {
        info!(backup = %name, "Restoring a backup before starting");
        match mailing_jobs::backup::restore(&config.backup, &name).await {
            Ok(_) => info!(backup = %name, "Backup restored"),
            Err(e) => {
                tracing::error!(backup = %name, error = %e, "Restore failed; starting on the previous database")
            }
        }
    }
    let store = open_store(&config).await?;
    let queue = open_queue(&config).await?;
    let secret = auth_secret(&config)?;
    bootstrap_admin(&store, &config).await?;
    let renderer = Renderer::new(config.template_cache.clone());
    let providers = providers(&config, &queue)?;
    let signer = UnsubscribeSigner::new(&secret, &config.public_url);
    let health = HealthRegistry::default();
    let dkim = config
        .dkim
        .as_ref()
        .map(mailing_jobs::message::DkimSigner::new)
        .transpose()
        .context("DKIM is configured but unusable")?;
    let plugins = plugin_runtime(&config)?;
    let ctx = PipelineContext {
        plugins: plugins.clone(),
        store: store.clone(),
        queue: queue.clone(),
        renderer: renderer.clone(),
        providers: providers.clone(),
        signer: signer.clone(),
        dkim,
        config: PipelineConfig {
            batch_size: config.batch_size,
            send_concurrency: config.send_concurrency,
            unsubscribe_mailto: config.unsubscribe_mailto.clone(),
            claim_lease: config.claim_lease,
            retry_backoff: config.retry_backoff,
            batch_window: config.batch_window,
            max_attempts: config.max_attempts,
            retry_backoff_max: config.retry_backoff_max,
            failure_pause_ratio: config.failure_pause_ratio,
            failure_pause_min: config.failure_pause_min,
        },
    };
    let instance = instance_id();
    let mut children = Vec::new();
    if let Some(addr) = config
        .metrics_addr
        .as_ref()
        .filter(|_| config.metrics_enabled)
    {
        serve_metrics(addr, metrics.clone()).await?;
    }

    let restart = Arc::new(tokio::sync::Notify::new());
    let fault_slot: Arc<std::sync::OnceLock<mailing_api::FaultInjector>> =
        Arc::new(std::sync::OnceLock::new());
    if mode != Mode::Worker {
        let slot = fault_slot.clone();
        let injector: Option<mailing_api::FaultInjector> = config.fault_injection.then(|| {
            Arc::new(move |name: &str| slot.get().is_some_and(|f| f(name)))
                as mailing_api::FaultInjector
        });
        let state = Arc::new(AppState {
            store: store.clone(),
            queue: queue.clone(),
            renderer: renderer.clone(),
            providers: providers.clone(),
            auth: AuthConfig {
                secret: secret.clone(),
                access_ttl: config.access_ttl,
                refresh_ttl: config.refresh_ttl,
                max_failures_per_account: 10,
                max_failures_per_account_anywhere: 200,
                max_failures_per_ip: 50,
                throttle_window: Duration::from_secs(15 * 60),
            },
            cache: Arc::new(mailing_api::cache::ApiCache::new(config.api_cache_ttl)),
            throttle: Arc::new(match queue.redis_connection() {
                Some(conn) => LoginThrottle::redis(
                    Duration::from_secs(15 * 60),
                    conn,
                    format!("{}:login", config.queue.namespace),
                ),
                None => LoginThrottle::new(Duration::from_secs(15 * 60)),
            }),
            health: health.clone(),
            signer: signer.clone(),
            fault_injector: injector,
            transport: config.transport.clone(),
            metrics: (config.metrics_enabled && config.metrics_addr.is_none())
                .then(|| metrics.clone()),
            backup: config.backup.clone(),
            restart: restart.clone(),
            plugins: plugins.host.clone(),
            limits: api_limits(&config, &queue),
            webhooks: mailing_api::routes::webhooks::WebhookSecrets {
                resend: config.resend_webhook_secret.clone(),
                bounce: config.bounce_webhook_secret.clone(),
            },
        });
        let args = HttpArgs {
            addr: config.http_addr.clone(),
            state,
            tls: config.tls.clone(),
            slot: Arc::default(),
            shutdown_timeout: config.shutdown_timeout,
        };
        children.push(ChildSpec {
            name: crate::supervisor::http::NAME,
            spawn: Arc::new(move |sup| {
                let args = args.clone();
                Box::pin(async move {
                    HttpServer::spawn_linked(
                        Some(crate::supervisor::http::NAME.into()),
                        HttpServer,
                        args,
                        sup,
                    )
                    .await
                    .map(|(a, _)| a)
                })
            }),
        });
    }
    let scheduler = SchedulerArgs {
        ctx: ctx.clone(),
        tick: Duration::from_secs(1),
        stall_after: config.stall_recovery,
        health: health.clone(),
        data_dir: config.data_dir.clone(),
        backup_dir: config.backup.dir.clone(),
        backups: (config.backup_enabled && mode != Mode::Worker).then(|| {
            crate::supervisor::scheduler::BackupSchedule {
                config: config.backup.clone(),
                hours: config.backup_hours.clone(),
                running: Arc::default(),
                last_attempt: Arc::default(),
            }
        }),
    };
    children.push(ChildSpec {
        name: crate::supervisor::scheduler::NAME,
        spawn: Arc::new(move |sup| {
            let args = scheduler.clone();
            Box::pin(async move {
                Scheduler::spawn_linked(
                    Some(crate::supervisor::scheduler::NAME.into()),
                    Scheduler,
                    args,
                    sup,
                )
                .await
                .map(|(a, _)| a)
            })
        }),
    });
    if mode != Mode::Api {
        for (stage, concurrency) in [
            (Stage::Plan, config.plan_concurrency),
            (Stage::Send, config.worker_concurrency),
            (Stage::Tx, config.tx_concurrency),
        ] {
            let args = StageArgs {
                stage,
                queue: queue.clone(),
                ctx: ctx.clone(),
                concurrency,
                instance: instance.clone(),
                incarnation: Arc::new(AtomicU32::new(0)),
                slot: Arc::default(),
                shutdown_timeout: config.shutdown_timeout,
            };
            children.push(ChildSpec {
                name: stage.as_str(),
                spawn: Arc::new(move |sup| {
                    let args = args.clone();
                    Box::pin(async move {
                        StageSupervisor::spawn_linked(
                            Some(stage.as_str().into()),
                            StageSupervisor,
                            args,
                            sup,
                        )
                        .await
                        .map(|(a, _)| a)
                    })
                }),
            });
        }
    }

    let tree = Tree::start(RootArgs {
        children,
        policy: RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            shutdown_timeout: config.shutdown_timeout,
        },
        health,
    })
    .await
    .context("cannot start the supervision tree")?;
    let _ = fault_slot.set(tree.crasher());
    info!(mode = ?mode, queue = queue.backend(), instance = %instance, "Mailing started");
    let exit = tokio::select! {
        _ = shutdown_signal() => Exit::Signal,
        _ = restart.notified() => Exit::Restart,
    };
    info!(reason = ?exit, "Shutdown requested; finishing in-flight work");
    tree.shutdown().await;
    store.close().await;
    info!("Stopped");
    Ok(exit)
}
