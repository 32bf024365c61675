//! Configuration from environment variables (and an optional `.env`), with the names in
//! the API contract and the seed. Every setting has a documented default that gives the
//! embedded mode: SQLite store and queue under `./data`, delivery to `./data/outbox`.
//! Parsing collects every problem and reports them together; production refuses weak or
//! missing secrets, naming the variable to set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mailing_jobs::provider::smtp::SmtpTls;

/// Errors of configuration: every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// `ENVIRONMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local use: generated secrets allowed, pretty logs.
    Development,
    /// Strong secrets required, JSON logs.
    Production,
}

/// `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// One documented setting, for `mailing config check` and the README table.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Variable name.
    pub name: &'static str,
    /// Default, as text (empty: unset).
    pub default: &'static str,
    /// Masked when printed.
    pub secret: bool,
    /// What it does.
    pub doc: &'static str,
}

/// Every setting Mailing reads.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    Setting { name: "ENVIRONMENT", default: "development", secret: false, doc: "`development` or `production` (strong secrets required, JSON logs)" },
    Setting { name: "HTTP_HOST", default: "0.0.0.0", secret: false, doc: "address the HTTP server binds" },
    Setting { name: "HTTP_PORT", default: "8080", secret: false, doc: "HTTP port" },
    Setting { name: "PUBLIC_URL", default: "http://localhost:8080", secret: false, doc: "base URL of links in messages (unsubscribe)" },
    Setting { name: "DATA_DIR", default: "./data", secret: false, doc: "directory for the SQLite files, the outbox and generated secrets" },
    Setting { name: "DATABASE_URL", default: "sqlite://./data/mailing.sqlite3", secret: true, doc: "`sqlite://PATH` or `postgres://USER@HOST/DB`" },
    Setting { name: "REDIS_URL", default: "", secret: true, doc: "when set, the job queue is Redis (a worker fleet); else SQLite in DATA_DIR" },
    Setting { name: "REDIS_HOST", default: "", secret: false, doc: "alternative to REDIS_URL, with REDIS_PORT" },
    Setting { name: "REDIS_PORT", default: "6379", secret: false, doc: "with REDIS_HOST" },
    Setting { name: "AUTH_SECRET_KEY", default: "", secret: true, doc: "HS256 key for access tokens, 32+ bytes; generated into DATA_DIR in development" },
    Setting { name: "ADMIN_USERNAME", default: "admin", secret: false, doc: "the first admin's name, created when no user exists" },
    Setting { name: "ADMIN_PASSWORD", default: "", secret: true, doc: "the first admin's password; generated and printed once in development" },
    Setting { name: "ACCESS_TOKEN_TTL", default: "900", secret: false, doc: "access token lifetime, seconds" },
    Setting { name: "REFRESH_TOKEN_TTL", default: "1209600", secret: false, doc: "refresh token lifetime, seconds" },
    Setting { name: "OUTBOX_DIR", default: "./data/outbox", secret: false, doc: "where the `file` provider writes `.eml` files" },
    Setting { name: "SMTP_HOST", default: "", secret: false, doc: "when set, the `smtp` provider is available" },
    Setting { name: "SMTP_PORT", default: "587", secret: false, doc: "SMTP port" },
    Setting { name: "SMTP_USERNAME", default: "", secret: false, doc: "SMTP login" },
    Setting { name: "SMTP_PASSWORD", default: "", secret: true, doc: "SMTP password" },
    Setting { name: "SMTP_TLS", default: "starttls", secret: false, doc: "`none`, `starttls` or `tls`" },
    Setting { name: "SMTP_POOL_SIZE", default: "8", secret: false, doc: "pooled SMTP connections" },
    Setting { name: "RESEND_API_KEY", default: "", secret: true, doc: "when set, the `resend` provider is available" },
    Setting { name: "RESEND_API_URL", default: "https://api.resend.com", secret: false, doc: "Resend-compatible API base URL" },
    Setting { name: "RESEND_WEBHOOK_SECRET", default: "", secret: true, doc: "Svix signing secret (`whsec_…`) of the Resend webhook; enables POST /webhooks/resend" },
    Setting { name: "BOUNCE_WEBHOOK_SECRET", default: "", secret: true, doc: "shared secret of the generic POST /webhooks/bounce (X-Mailing-Webhook-Secret)" },
    Setting { name: "FILE_RATE_LIMIT", default: "", secret: false, doc: "messages/s of the `file` provider (unset: unlimited)" },
    Setting { name: "SMTP_RATE_LIMIT", default: "", secret: false, doc: "messages/s of the `smtp` provider, fleet-wide with Redis (unset: unlimited)" },
    Setting { name: "RESEND_RATE_LIMIT", default: "", secret: false, doc: "messages/s of the `resend` provider, fleet-wide with Redis (unset: unlimited)" },
    Setting { name: "RESEND_REQUEST_RATE", default: "2", secret: false, doc: "API requests/s of the `resend` provider (Resend's default limit is 2/s)" },
    Setting { name: "DKIM_DOMAIN", default: "", secret: false, doc: "when set with DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE, messages are DKIM-signed (d=)" },
    Setting { name: "DKIM_SELECTOR", default: "", secret: false, doc: "DKIM selector (s=), the DNS name of the public key" },
    Setting { name: "DKIM_PRIVATE_KEY_FILE", default: "", secret: false, doc: "RSA: a PKCS#1 PEM file; Ed25519: a file with the base64 32-byte key" },
    Setting { name: "DKIM_ALGORITHM", default: "rsa", secret: false, doc: "`rsa` or `ed25519`" },
    Setting { name: "BATCH_SIZE", default: "500", secret: false, doc: "recipients per batch job" },
    Setting { name: "BATCH_WINDOW", default: "8", secret: false, doc: "batches of one campaign in the queue at once (backpressure)" },
    Setting { name: "SEND_CONCURRENCY", default: "16", secret: false, doc: "messages of one batch in flight at once, rounded up to whole provider requests (`resend`: one request of up to 100 per 100 messages)" },
    Setting { name: "TX_CONCURRENCY", default: "4", secret: false, doc: "transactional messages one process sends at once (their own workers, ahead of bulk)" },
    Setting { name: "PLAN_CONCURRENCY", default: "2", secret: false, doc: "plan jobs one process runs at once" },
    Setting { name: "DATABASE_POOL_SIZE", default: "", secret: false, doc: "connections each process keeps to the database; unset: 4 on SQLite (one writer), 16 on PostgreSQL" },
    Setting { name: "WORKER_CONCURRENCY", default: "4", secret: false, doc: "batch jobs one process runs at once" },
    Setting { name: "QUEUE_POLL_MS", default: "200", secret: false, doc: "how often an idle worker polls, milliseconds" },
    Setting { name: "QUEUE_HEARTBEAT_SECS", default: "2", secret: false, doc: "worker heartbeat, seconds" },
    Setting { name: "QUEUE_MISSED_HEARTBEATS", default: "3", secret: false, doc: "missed heartbeats before a dead worker's jobs run elsewhere" },
    Setting { name: "QUEUE_NAMESPACE", default: "mailing", secret: false, doc: "prefix of the queue names; processes of one deployment share it" },
    Setting { name: "CLAIM_LEASE_SECS", default: "120", secret: false, doc: "age after which a claimed, unanswered recipient is recovered" },
    Setting { name: "RETRY_BACKOFF_SECS", default: "30", secret: false, doc: "first retry delay of a temporarily failed recipient; doubles per attempt, with jitter" },
    Setting { name: "RETRY_BACKOFF_MAX_SECS", default: "600", secret: false, doc: "longest retry delay" },
    Setting { name: "MAX_ATTEMPTS", default: "5", secret: false, doc: "attempts per recipient before it is failed with its last error" },
    Setting { name: "FAILURE_PAUSE_RATIO", default: "0.5", secret: false, doc: "pause a campaign when this share of its finished recipients failed (0: never)" },
    Setting { name: "FAILURE_PAUSE_MIN", default: "100", secret: false, doc: "finished recipients before FAILURE_PAUSE_RATIO applies" },
    Setting { name: "STALL_RECOVERY_SECS", default: "900", secret: false, doc: "re-enqueue a batch whose pending recipients nobody touched for this long (a lost queue)" },
    Setting { name: "UNSUBSCRIBE_MAILTO", default: "", secret: false, doc: "optional mailto address in List-Unsubscribe" },
    Setting { name: "API_CACHE_TTL_MS", default: "1000", secret: false, doc: "how long an API process remembers an access token's standing and a page of GET /api/v1/campaigns, milliseconds (0: off); what requests to the same process change is seen at once, other changes within this time" },
    Setting { name: "API_RATE_LIMIT_PER_IP", default: "100", secret: false, doc: "API requests/s per client address (burst: one second's worth; 0: off); in Redis when configured" },
    Setting { name: "API_RATE_LIMIT_PER_USER", default: "50", secret: false, doc: "API requests/s per user or API key on /api/v1 and /admin (0: off); in Redis when configured" },
    Setting { name: "PLUGIN_FUEL", default: "50000000", secret: false, doc: "fuel (about one per WebAssembly instruction) a plugin may use on one batch" },
    Setting { name: "PLUGIN_DEADLINE_MS", default: "250", secret: false, doc: "wall-clock deadline of one plugin call on one batch, milliseconds" },
    Setting { name: "PLUGIN_MEMORY_MB", default: "64", secret: false, doc: "linear memory one plugin instance may use, MiB" },
    Setting { name: "PLUGIN_MAX_INSTANCES", default: "16", secret: false, doc: "plugin instances alive at once in one process (the pooling allocator's size)" },
    Setting { name: "PLUGIN_MAX_SIZE_KB", default: "10240", secret: false, doc: "largest plugin component accepted at upload, KiB" },
    Setting { name: "PLUGIN_BREAKER_THRESHOLD", default: "5", secret: false, doc: "failed batches in a row after which a plugin is switched off for its campaign (0: never)" },
    Setting { name: "TEMPLATE_CACHE_ENABLED", default: "true", secret: false, doc: "cache compiled templates" },
    Setting { name: "TEMPLATE_CACHE_TTL", default: "3600", secret: false, doc: "seconds a compiled template stays cached" },
    Setting { name: "TEMPLATE_CACHE_SIZE", default: "1000", secret: false, doc: "most compiled templates cached" },
    Setting { name: "SHUTDOWN_TIMEOUT_SECS", default: "30", secret: false, doc: "how long SIGTERM waits for in-flight batches" },
    Setting { name: "LOG_FORMAT", default: "pretty", secret: false, doc: "`pretty` or `json` (default `json` in production)" },
    Setting { name: "LOG_LEVEL", default: "info", secret: false, doc: "tracing filter, e.g. `info,mailing_jobs=debug`" },
    Setting { name: "FAULT_INJECTION", default: "false", secret: false, doc: "enable POST /admin/debug/crash/{component} (refused in production)" },
    Setting { name: "HTTPS_ENABLED", default: "false", secret: false, doc: "serve HTTPS in process (rustls) on HTTPS_PORT with SSL_CERT_FILE and SSL_KEY_FILE, beside plain HTTP" },
    Setting { name: "HTTPS_PORT", default: "8443", secret: false, doc: "HTTPS port (with HTTPS_ENABLED)" },
    Setting { name: "FORCE_HTTPS", default: "false", secret: false, doc: "redirect plain-HTTP requests (308) to HTTPS and send HSTS; /health and /metrics stay on HTTP. Without HTTPS_ENABLED, TLS is a proxy's: requests with X-Forwarded-Proto: http are redirected to PUBLIC_URL" },
    Setting { name: "SSL_CERT_FILE", default: "certs/cert.pem", secret: false, doc: "TLS certificate chain, PEM (with HTTPS_ENABLED)" },
    Setting { name: "SSL_KEY_FILE", default: "certs/key.pem", secret: false, doc: "TLS private key, PEM (with HTTPS_ENABLED)" },
    Setting { name: "CORS_ALLOWED_ORIGINS", default: "", secret: false, doc: "comma-separated origins (https://app.example.com) browsers may call the API from; empty: CORS closed" },
    Setting { name: "METRICS_ENABLED", default: "true", secret: false, doc: "serve /metrics" },
    Setting { name: "PROMETHEUS_PORT", default: "", secret: false, doc: "serve GET /metrics on this port (on HTTP_HOST) in every process, workers too, instead of on HTTP_PORT" },
    Setting { name: "BACKUP_ENABLED", default: "true", secret: false, doc: "take scheduled backups (in `serve` and `api` processes)" },
    Setting { name: "BACKUP_SCHEDULE_HOURS", default: "2,14", secret: false, doc: "UTC hours at which a scheduled backup is taken, comma-separated" },
    Setting { name: "BACKUP_RETENTION_DAYS", default: "30", secret: false, doc: "backups older than this are pruned (never the newest verified one)" },
    Setting { name: "BACKUP_DIR", default: "./backups", secret: false, doc: "where backups are written" },
    Setting { name: "BACKUP_COPY_DIR", default: "", secret: false, doc: "a second directory each verified backup is copied to" },
];

/// The longest `API_CACHE_TTL_MS`: how long another API process may go on accepting a
/// token that was logged out.
const MAX_API_CACHE_TTL_MS: u64 = 10_000;

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ENVIRONMENT`.
    pub environment: Environment,
    /// `HTTP_HOST:HTTP_PORT`.
    pub http_addr: String,
    /// `PUBLIC_URL`.
    pub public_url: String,
    /// `DATA_DIR`.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `REDIS_URL` (or built from `REDIS_HOST`/`REDIS_PORT`).
    pub redis_url: Option<String>,
    /// `AUTH_SECRET_KEY` (None: generate/persist in development).
    pub auth_secret: Option<String>,
    /// `ADMIN_USERNAME`.
    pub admin_username: String,
    /// `ADMIN_PASSWORD`.
    pub admin_password: Option<String>,
    /// `ACCESS_TOKEN_TTL`.
    pub access_ttl: Duration,
    /// `REFRESH_TOKEN_TTL`.
    pub refresh_ttl: Duration,
    /// `OUTBOX_DIR`.
    pub outbox_dir: PathBuf,
    /// SMTP, when `SMTP_HOST` is set.
    pub smtp: Option<mailing_jobs::provider::smtp::SmtpConfig>,
    /// Resend, when `RESEND_API_KEY` is set.
    pub resend: Option<mailing_jobs::provider::resend::ResendConfig>,
    /// `RESEND_WEBHOOK_SECRET`, decoded.
    pub resend_webhook_secret: Option<Vec<u8>>,
    /// `BOUNCE_WEBHOOK_SECRET`.
    pub bounce_webhook_secret: Option<String>,
    /// `{FILE,SMTP,RESEND}_RATE_LIMIT` and `RESEND_REQUEST_RATE`.
    pub rates: ProviderRates,
    /// DKIM signing, when configured.
    pub dkim: Option<mailing_jobs::message::DkimSettings>,
    /// `BATCH_SIZE`.
    pub batch_size: u32,
    /// `SEND_CONCURRENCY`.
    pub send_concurrency: usize,
    /// `WORKER_CONCURRENCY`.
    pub worker_concurrency: usize,
    /// `PLAN_CONCURRENCY`.
    pub plan_concurrency: usize,
    /// `TX_CONCURRENCY`.
    pub tx_concurrency: usize,
    /// `DATABASE_POOL_SIZE`.
    pub database_pool_size: u32,
    /// Queue timing.
    pub queue: mailing_jobs::queue::QueueConfig,
    /// `CLAIM_LEASE_SECS`.
    pub claim_lease: Duration,
    /// `RETRY_BACKOFF_SECS`.
    pub retry_backoff: Duration,
    /// `RETRY_BACKOFF_MAX_SECS`.
    pub retry_backoff_max: Duration,
    /// `MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// `BATCH_WINDOW`.
    pub batch_window: u32,
    /// `FAILURE_PAUSE_RATIO`.
    pub failure_pause_ratio: f64,
    /// `FAILURE_PAUSE_MIN`.
    pub failure_pause_min: i64,
    /// `STALL_RECOVERY_SECS`.
    pub stall_recovery: Duration,
    /// `UNSUBSCRIBE_MAILTO`.
    pub unsubscribe_mailto: Option<String>,
    /// `API_CACHE_TTL_MS` (zero: off).
    pub api_cache_ttl: Duration,
    /// `API_RATE_LIMIT_PER_IP`, requests/s (None: off).
    pub api_rate_per_ip: Option<f64>,
    /// `API_RATE_LIMIT_PER_USER`, requests/s (None: off).
    pub api_rate_per_user: Option<f64>,
    /// `PLUGIN_*` limits.
    pub plugin_limits: mailing_plugins::PluginLimits,
    /// `PLUGIN_BREAKER_THRESHOLD`.
    pub plugin_breaker_threshold: u32,
    /// `TEMPLATE_CACHE_*`.
    pub template_cache: mailing_jobs::render::CacheConfig,
    /// `SHUTDOWN_TIMEOUT_SECS`.
    pub shutdown_timeout: Duration,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `LOG_LEVEL`.
    pub log_level: String,
    /// `FAULT_INJECTION`.
    pub fault_injection: bool,
    /// `HTTPS_ENABLED`: the HTTPS listener.
    pub tls: Option<TlsListener>,
    /// HSTS, the plain-HTTP redirect (`FORCE_HTTPS`) and CORS (`CORS_ALLOWED_ORIGINS`).
    pub transport: mailing_api::transport::TransportPolicy,
    /// `METRICS_ENABLED`.
    pub metrics_enabled: bool,
    /// `HTTP_HOST:PROMETHEUS_PORT`, when set: `/metrics` is served there, not on
    /// `HTTP_PORT`.
    pub metrics_addr: Option<String>,
    /// Backup destinations and retention.
    pub backup: mailing_jobs::backup::BackupConfig,
    /// `BACKUP_ENABLED`.
    pub backup_enabled: bool,
    /// `BACKUP_SCHEDULE_HOURS`.
    pub backup_hours: Vec<u32>,
    /// Raw values, for `config check`.
    pub raw: BTreeMap<&'static str, Option<String>>,
}

/// The in-process HTTPS listener (`HTTPS_ENABLED`).
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// `HTTP_HOST:HTTPS_PORT`.
    pub addr: String,
    /// `SSL_CERT_FILE`: the certificate chain, PEM.
    pub cert_file: PathBuf,
    /// `SSL_KEY_FILE`: the private key, PEM.
    pub key_file: PathBuf,
}

/// Rate limits per provider; None is unlimited.
#[derive(Debug, Clone, Default)]
pub struct ProviderRates {
    /// `FILE_RATE_LIMIT`, messages/s.
    pub file: Option<f64>,
    /// `SMTP_RATE_LIMIT`, messages/s.
    pub smtp: Option<f64>,
    /// `RESEND_RATE_LIMIT`, messages/s.
    pub resend: Option<f64>,
    /// `RESEND_REQUEST_RATE`, requests/s.
    pub resend_requests: Option<f64>,
}

/// Values that are never acceptable as secrets in production.
const WEAK_SECRETS: &[&str] = &[
    "secret",
    "changeme",
    "change-me",
    "password",
    "admin",
    "admin123",
    "your-secret-key",
    "your-256-bit-secret",
    "development",
    "test",
    "mailing",
];

fn is_weak(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    WEAK_SECRETS
        .iter()
        .any(|w| lower == *w || lower.contains("change") && lower.contains("me"))
        || value
            .chars()
            .collect::<std::collections::HashSet<_>>()
            .len()
            < 6
}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
    raw: BTreeMap<&'static str, Option<String>>,
}

impl Reader<'_> {
    fn text(&mut self, name: &'static str) -> Option<String> {
        let v = (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        self.raw.insert(name, v.clone());
        v
    }

    fn default_of(name: &str) -> &'static str {
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.default)
            .unwrap_or_default()
    }

    fn string(&mut self, name: &'static str) -> String {
        self.text(name)
            .unwrap_or_else(|| Self::default_of(name).to_owned())
    }

    fn parse<T: std::str::FromStr + Default>(&mut self, name: &'static str, what: &str) -> T {
        let raw = self.string(name);
        raw.parse().unwrap_or_else(|_| {
            self.errors.push(format!("{name}={raw:?} is not {what}"));
            T::default()
        })
    }

    fn bool(&mut self, name: &'static str) -> bool {
        match self.string(name).to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            other => {
                self.errors
                    .push(format!("{name}={other:?} is not a boolean (true or false)"));
                false
            }
        }
    }

    fn rate(&mut self, name: &'static str) -> Option<f64> {
        let raw = self.string(name);
        if raw.is_empty() || raw == "0" {
            return None;
        }
        match raw.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Some(v),
            _ => {
                self.errors.push(format!(
                    "{name}={raw:?} is not a positive number per second"
                ));
                None
            }
        }
    }

    fn positive<T: std::str::FromStr + Default + PartialOrd + From<u8>>(
        &mut self,
        name: &'static str,
    ) -> T {
        let before = self.errors.len();
        let v: T = self.parse(name, "a positive whole number");
        if self.errors.len() == before && v < T::from(1) {
            self.errors.push(format!("{name} must be at least 1"));
        }
        v
    }
}

impl Config {
    /// Reads the process environment (after an optional `.env`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads settings through `get` (tests pass a map).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            get,
            errors: Vec::new(),
            raw: BTreeMap::new(),
        };
        let environment = match r.string("ENVIRONMENT").to_ascii_lowercase().as_str() {
            "development" | "dev" => Environment::Development,
            "production" | "prod" => Environment::Production,
            other => {
                r.errors.push(format!(
                    "ENVIRONMENT={other:?} must be development or production"
                ));
                Environment::Development
            }
        };
        let host = r.string("HTTP_HOST");
        let port: u16 = r.positive("HTTP_PORT");
        let public_url = r
            .text("PUBLIC_URL")
            .unwrap_or_else(|| format!("http://localhost:{port}"));
        if url::Url::parse(&public_url)
            .map(|u| !matches!(u.scheme(), "http" | "https"))
            .unwrap_or(true)
        {
            r.errors
                .push(format!("PUBLIC_URL={public_url:?} must be an http(s) URL"));
        }
        let data_dir = PathBuf::from(r.string("DATA_DIR"));
        let database_url = r
            .text("DATABASE_URL")
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("mailing.sqlite3").display()));
        if !["sqlite:", "postgres:", "postgresql:"]
            .iter()
            .any(|p| database_url.starts_with(p))
        {
            r.errors
                .push("DATABASE_URL must start with sqlite:// or postgres://".into());
        }
        let redis_host = r.text("REDIS_HOST");
        let redis_port: u16 = r.positive("REDIS_PORT");
        let redis_url = r
            .text("REDIS_URL")
            .or_else(|| redis_host.map(|h| format!("redis://{h}:{redis_port}")));
        let auth_secret = r.text("AUTH_SECRET_KEY");
        let admin_username = r.string("ADMIN_USERNAME");
        let admin_password = r.text("ADMIN_PASSWORD");
        let access_ttl = Duration::from_secs(r.positive::<u64>("ACCESS_TOKEN_TTL"));
        let refresh_ttl = Duration::from_secs(r.positive::<u64>("REFRESH_TOKEN_TTL"));
        let outbox_dir = r
            .text("OUTBOX_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("outbox"));
        let smtp_tls = match r.string("SMTP_TLS").to_ascii_lowercase().as_str() {
            "none" => SmtpTls::None,
            "starttls" => SmtpTls::Starttls,
            "tls" => SmtpTls::Tls,
            other => {
                r.errors
                    .push(format!("SMTP_TLS={other:?} must be none, starttls or tls"));
                SmtpTls::Starttls
            }
        };
        let smtp_port: u16 = r.positive("SMTP_PORT");
        let smtp_pool: u32 = r.positive("SMTP_POOL_SIZE");
        let smtp_user = r.text("SMTP_USERNAME");
        let smtp_pass = r.text("SMTP_PASSWORD");
        let smtp = r
            .text("SMTP_HOST")
            .map(|host| mailing_jobs::provider::smtp::SmtpConfig {
                host,
                port: smtp_port,
                username: smtp_user,
                password: smtp_pass,
                tls: smtp_tls,
                pool_size: smtp_pool,
                timeout: Duration::from_secs(30),
            });
        let resend_key = r.text("RESEND_API_KEY");
        let resend_url = r.string("RESEND_API_URL").trim_end_matches('/').to_owned();
        if url::Url::parse(&resend_url)
            .map(|u| !matches!(u.scheme(), "http" | "https"))
            .unwrap_or(true)
        {
            r.errors.push(format!(
                "RESEND_API_URL={resend_url:?} must be an http(s) URL"
            ));
        }
        let resend = resend_key.map(|api_key| mailing_jobs::provider::resend::ResendConfig {
            api_key,
            base_url: resend_url,
            timeout: Duration::from_secs(30),
        });
        let dkim_domain = r.text("DKIM_DOMAIN");
        let dkim_selector = r.text("DKIM_SELECTOR");
        let dkim_key_file = r.text("DKIM_PRIVATE_KEY_FILE");
        let dkim_ed25519 = match r.string("DKIM_ALGORITHM").to_ascii_lowercase().as_str() {
            "rsa" => false,
            "ed25519" => true,
            other => {
                r.errors
                    .push(format!("DKIM_ALGORITHM={other:?} must be rsa or ed25519"));
                false
            }
        };
        let dkim = match (dkim_domain, dkim_selector, dkim_key_file) {
            (None, None, None) => None,
            (Some(domain), Some(selector), Some(file)) => match std::fs::read_to_string(&file) {
                Ok(private_key) => Some(mailing_jobs::message::DkimSettings {
                    domain,
                    selector,
                    private_key,
                    ed25519: dkim_ed25519,
                }),
                Err(e) => {
                    r.errors.push(format!(
                        "DKIM_PRIVATE_KEY_FILE={file:?} cannot be read: {e}"
                    ));
                    None
                }
            },
            _ => {
                r.errors.push(
                    "DKIM needs all of DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY_FILE".into(),
                );
                None
            }
        };
        let resend_webhook_secret = match r.text("RESEND_WEBHOOK_SECRET") {
            None => None,
            Some(s) => match mailing_api::routes::webhooks::decode_svix_secret(&s) {
                Ok(k) => Some(k),
                Err(e) => {
                    r.errors.push(format!("RESEND_WEBHOOK_SECRET is {e}"));
                    None
                }
            },
        };
        let bounce_webhook_secret = r.text("BOUNCE_WEBHOOK_SECRET");
        if bounce_webhook_secret.as_ref().is_some_and(|s| s.len() < 16) {
            r.errors
                .push("BOUNCE_WEBHOOK_SECRET must be at least 16 characters".into());
        }
        let rates = ProviderRates {
            file: r.rate("FILE_RATE_LIMIT"),
            smtp: r.rate("SMTP_RATE_LIMIT"),
            resend: r.rate("RESEND_RATE_LIMIT"),
            resend_requests: r.rate("RESEND_REQUEST_RATE"),
        };
        let batch_size: u32 = r.positive("BATCH_SIZE");
        if batch_size > 10_000 {
            r.errors.push("BATCH_SIZE must be at most 10000".into());
        }
        let send_concurrency: usize = r.positive("SEND_CONCURRENCY");
        let worker_concurrency: usize = r.positive("WORKER_CONCURRENCY");
        let plan_concurrency: usize = r.positive("PLAN_CONCURRENCY");
        let tx_concurrency: usize = r.positive("TX_CONCURRENCY");
        let database_pool_size: u32 = match r.text("DATABASE_POOL_SIZE") {
            Some(_) => r.positive("DATABASE_POOL_SIZE"),
            None => default_pool_size(&database_url),
        };
        let queue = mailing_jobs::queue::QueueConfig {
            poll_interval: Duration::from_millis(r.positive::<u64>("QUEUE_POLL_MS")),
            heartbeat: Duration::from_secs(r.positive::<u64>("QUEUE_HEARTBEAT_SECS")),
            missed_heartbeats: r.positive("QUEUE_MISSED_HEARTBEATS"),
            // Fetch no more than the worker runs: a prefetched job waits for its
            // worker, and a killed worker's prefetched jobs wait for orphan recovery.
            fetch_batch: worker_concurrency,
            namespace: r.string("QUEUE_NAMESPACE"),
        };
        let claim_lease = Duration::from_secs(r.positive::<u64>("CLAIM_LEASE_SECS"));
        let retry_backoff = Duration::from_secs(r.positive::<u64>("RETRY_BACKOFF_SECS"));
        let retry_backoff_max = Duration::from_secs(r.positive::<u64>("RETRY_BACKOFF_MAX_SECS"));
        let max_attempts: u32 = r.positive("MAX_ATTEMPTS");
        let batch_window: u32 = r.positive("BATCH_WINDOW");
        let failure_pause_ratio: f64 = r.parse("FAILURE_PAUSE_RATIO", "a number between 0 and 1");
        if !(0.0..=1.0).contains(&failure_pause_ratio) {
            r.errors
                .push("FAILURE_PAUSE_RATIO must be between 0 and 1".into());
        }
        let failure_pause_min: i64 = r.positive("FAILURE_PAUSE_MIN");
        let stall_recovery = Duration::from_secs(r.positive::<u64>("STALL_RECOVERY_SECS"));
        let unsubscribe_mailto = r.text("UNSUBSCRIBE_MAILTO");
        let api_cache_ttl_ms: u64 = r.parse("API_CACHE_TTL_MS", "a whole number of milliseconds");
        if api_cache_ttl_ms > MAX_API_CACHE_TTL_MS {
            r.errors.push(format!(
                "API_CACHE_TTL_MS must be at most {MAX_API_CACHE_TTL_MS} (a logout elsewhere in a fleet takes this long to be seen)"
            ));
        }
        let api_cache_ttl = Duration::from_millis(api_cache_ttl_ms);
        let api_rate_per_ip = r.rate("API_RATE_LIMIT_PER_IP");
        let api_rate_per_user = r.rate("API_RATE_LIMIT_PER_USER");
        let plugin_limits = mailing_plugins::PluginLimits {
            fuel_per_batch: r.positive("PLUGIN_FUEL"),
            deadline: Duration::from_millis(r.positive::<u64>("PLUGIN_DEADLINE_MS")),
            memory_bytes: r
                .positive::<usize>("PLUGIN_MEMORY_MB")
                .saturating_mul(1 << 20),
            max_instances: r.positive("PLUGIN_MAX_INSTANCES"),
            max_component_bytes: r
                .positive::<usize>("PLUGIN_MAX_SIZE_KB")
                .saturating_mul(1 << 10),
            ..mailing_plugins::PluginLimits::default()
        };
        if plugin_limits.memory_bytes > 4 << 30 {
            r.errors
                .push("PLUGIN_MEMORY_MB must be at most 4096".into());
        }
        if plugin_limits.max_instances > 1000 {
            r.errors
                .push("PLUGIN_MAX_INSTANCES must be at most 1000".into());
        }
        let plugin_breaker_threshold: u32 = r.parse("PLUGIN_BREAKER_THRESHOLD", "a whole number");
        let template_cache = mailing_jobs::render::CacheConfig {
            enabled: r.bool("TEMPLATE_CACHE_ENABLED"),
            ttl: Duration::from_secs(r.positive::<u64>("TEMPLATE_CACHE_TTL")),
            capacity: r.positive("TEMPLATE_CACHE_SIZE"),
        };
        let shutdown_timeout = Duration::from_secs(r.positive::<u64>("SHUTDOWN_TIMEOUT_SECS"));
        let log_format = match r.text("LOG_FORMAT").map(|s| s.to_ascii_lowercase()) {
            None if environment == Environment::Production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(f) if f == "json" => LogFormat::Json,
            Some(f) if f == "pretty" || f == "text" => LogFormat::Pretty,
            Some(f) => {
                r.errors
                    .push(format!("LOG_FORMAT={f:?} must be pretty or json"));
                LogFormat::Pretty
            }
        };
        let log_level = r.string("LOG_LEVEL");
        let fault_injection = r.bool("FAULT_INJECTION");
        let https_enabled = r.bool("HTTPS_ENABLED");
        let force_https = r.bool("FORCE_HTTPS");
        let https_port: u16 = r.positive("HTTPS_PORT");
        let cert_file = PathBuf::from(r.string("SSL_CERT_FILE"));
        let key_file = PathBuf::from(r.string("SSL_KEY_FILE"));
        let tls = if https_enabled {
            for (name, path) in [("SSL_CERT_FILE", &cert_file), ("SSL_KEY_FILE", &key_file)] {
                if let Err(e) = std::fs::metadata(path) {
                    r.errors.push(format!(
                        "HTTPS_ENABLED=true but {name}={:?} cannot be read: {e}",
                        path.display()
                    ));
                }
            }
            Some(TlsListener {
                addr: format!("{host}:{https_port}"),
                cert_file,
                key_file,
            })
        } else {
            None
        };
        let public_origin = url::Url::parse(&public_url).ok();
        let redirect_to = if !force_https {
            None
        } else if let Some(u) = public_origin.as_ref().filter(|u| u.scheme() == "https") {
            Some(u.origin().ascii_serialization())
        } else if https_enabled {
            let public_host = public_origin
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "localhost".into());
            Some(format!("https://{public_host}:{https_port}"))
        } else {
            r.errors.push(format!(
                "FORCE_HTTPS=true needs somewhere to send plain requests: set PUBLIC_URL to the \
                 https:// address of the proxy in front (now {public_url:?}) or HTTPS_ENABLED=true"
            ));
            None
        };
        let mut cors_origins = Vec::new();
        let cors_raw = r.string("CORS_ALLOWED_ORIGINS");
        for origin in cors_raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match url::Url::parse(origin) {
                Ok(u) if matches!(u.scheme(), "http" | "https")
                    && u.origin().ascii_serialization() == origin.trim_end_matches('/') =>
                {
                    cors_origins.push(u.origin().ascii_serialization());
                }
                _ => r.errors.push(format!(
                    "CORS_ALLOWED_ORIGINS: {origin:?} is not an origin such as https://app.example.com \
                     (scheme and host, optional port, no path; `*` is not allowed)"
                )),
            }
        }
        let transport = mailing_api::transport::TransportPolicy {
            hsts: https_enabled || force_https,
            redirect_to,
            behind_proxy: !https_enabled,
            cors_origins,
        };
        let metrics_enabled = r.bool("METRICS_ENABLED");
        let prometheus_port = match r.text("PROMETHEUS_PORT") {
            None => None,
            Some(raw) => match raw.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    r.errors.push(format!(
                        "PROMETHEUS_PORT={raw:?} is not a port (1 to 65535); leave it empty to \
                         serve /metrics on HTTP_PORT"
                    ));
                    None
                }
            },
        };
        let metrics_addr = prometheus_port.map(|p| format!("{host}:{p}"));
        let backup_enabled = r.bool("BACKUP_ENABLED");
        let hours_raw = r.string("BACKUP_SCHEDULE_HOURS");
        let mut backup_hours = Vec::new();
        for part in hours_raw
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.parse::<u32>() {
                Ok(h) if h < 24 => backup_hours.push(h),
                _ => r.errors.push(format!(
                    "BACKUP_SCHEDULE_HOURS={hours_raw:?}: {part:?} is not an hour from 0 to 23"
                )),
            }
        }
        let retention_days: u32 = r.positive("BACKUP_RETENTION_DAYS");
        let backup = mailing_jobs::backup::BackupConfig {
            dir: PathBuf::from(r.string("BACKUP_DIR")),
            copy_dir: r.text("BACKUP_COPY_DIR").map(PathBuf::from),
            retention_days,
            database_url: database_url.clone(),
        };

        if environment == Environment::Production {
            match &auth_secret {
                None => r.errors.push(
                    "AUTH_SECRET_KEY is required in production: set it to 32 or more random bytes, \
                     e.g. `openssl rand -base64 48`"
                        .into(),
                ),
                Some(s) if s.len() < 32 || is_weak(s) => r.errors.push(
                    "AUTH_SECRET_KEY is too weak for production: use 32 or more random bytes, \
                     e.g. `openssl rand -base64 48`"
                        .into(),
                ),
                _ => {}
            }
            match &admin_password {
                None => r.errors.push(
                    "ADMIN_PASSWORD is required in production: set a password of 12 or more characters".into(),
                ),
                Some(p) if p.chars().count() < 12 || is_weak(p) => r.errors.push(
                    "ADMIN_PASSWORD is too weak for production: use 12 or more characters, not a common word".into(),
                ),
                _ => {}
            }
            if !public_url.starts_with("https://") {
                r.errors.push(format!(
                    "PUBLIC_URL={public_url:?} must be an https:// URL in production: \
                     one-click unsubscribe links (RFC 8058) require HTTPS"
                ));
            }
            if fault_injection {
                r.errors
                    .push("FAULT_INJECTION must not be enabled in production".into());
            }
        }
        if !r.errors.is_empty() {
            return Err(ConfigError(r.errors));
        }
        Ok(Config {
            environment,
            http_addr: format!("{host}:{port}"),
            public_url,
            data_dir,
            database_url,
            redis_url,
            auth_secret,
            admin_username,
            admin_password,
            access_ttl,
            refresh_ttl,
            outbox_dir,
            smtp,
            resend,
            resend_webhook_secret,
            bounce_webhook_secret,
            rates,
            dkim,
            batch_size,
            send_concurrency,
            worker_concurrency,
            plan_concurrency,
            tx_concurrency,
            database_pool_size,
            queue,
            claim_lease,
            retry_backoff,
            retry_backoff_max,
            max_attempts,
            batch_window,
            failure_pause_ratio,
            failure_pause_min,
            stall_recovery,
            unsubscribe_mailto,
            api_cache_ttl,
            api_rate_per_ip,
            api_rate_per_user,
            plugin_limits,
            plugin_breaker_threshold,
            template_cache,
            shutdown_timeout,
            log_format,
            log_level,
            fault_injection,
            tls,
            transport,
            metrics_enabled,
            metrics_addr,
            backup,
            backup_enabled,
            backup_hours,
            raw: r.raw,
        })
    }

    /// The effective configuration as `NAME=value` lines, secrets masked.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in SETTINGS {
            let derived = match s.name {
                "DATABASE_URL" => Some(self.database_url.clone()),
                "PUBLIC_URL" => Some(self.public_url.clone()),
                "OUTBOX_DIR" => Some(self.outbox_dir.display().to_string()),
                "REDIS_URL" => self.redis_url.clone(),
                "DATABASE_POOL_SIZE" => Some(self.database_pool_size.to_string()),
                _ => None,
            };
            let (value, source) = match (self.raw.get(s.name).cloned().flatten(), derived) {
                (Some(v), _) => (v, "env"),
                (None, Some(v)) if v != s.default => (v, "derived"),
                (None, _) => (s.default.to_owned(), "default"),
            };
            let shown = if s.secret && !value.is_empty() {
                mask_setting(s.name, &value)
            } else {
                value
            };
            out.push_str(&format!("{:<26} {:<40} ({source})\n", s.name, shown));
        }
        out.push_str(&format!(
            "\neffective: store={} queue={} providers=file{}{} http={}\n",
            if self.database_url.starts_with("sqlite") {
                "sqlite"
            } else {
                "postgres"
            },
            if self.redis_url.is_some() {
                "redis"
            } else {
                "sqlite"
            },
            if self.smtp.is_some() { ",smtp" } else { "" },
            if self.resend.is_some() { ",resend" } else { "" },
            self.http_addr,
        ));
        out
    }
}

/// `DATABASE_POOL_SIZE` when unset. SQLite has one writer, and each pooled connection
/// holds its own page cache, statement cache and thread: 16 connections peaked 8–10 MiB
/// higher than 4 in a 1,000,000-recipient campaign at the same throughput (BENCHMARKS.md,
/// sixteenth stop). PostgreSQL serves concurrent writers, and a fleet's workers wait on
/// their round trips, so it keeps more.
fn default_pool_size(database_url: &str) -> u32 {
    if database_url.starts_with("sqlite") {
        4
    } else {
        16
    }
}

/// Every setting as a Markdown table (the README's configuration table).
pub fn docs_table() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n| --- | --- | --- |\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "(unset)".to_owned()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!("| `{}` | {} | {} |\n", s.name, default, s.doc));
    }
    out
}

/// Masks a secret for display. Connection URLs (`*_URL`) keep everything but their
/// password; any other secret shows as `***`.
pub fn mask_setting(name: &str, value: &str) -> String {
    if name.ends_with("_URL")
        && let Ok(mut u) = url::Url::parse(value)
    {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        return u.to_string();
    }
    "***".into()
}

/// Masks a connection URL's password (for error messages).
pub fn mask(url: &str) -> String {
    mask_setting("URL", url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let c = config(&[]).unwrap();
        assert_eq!(c.database_url, "sqlite://./data/mailing.sqlite3");
        assert!(c.redis_url.is_none());
        assert_eq!(c.outbox_dir, PathBuf::from("./data/outbox"));
        assert_eq!(c.http_addr, "0.0.0.0:8080");
        assert_eq!(c.batch_size, 500);
    }

    #[test]
    fn the_pool_size_defaults_to_the_database_and_a_setting_wins() {
        let sqlite = config(&[]).unwrap();
        assert_eq!(sqlite.database_pool_size, 4);
        assert!(
            sqlite
                .describe()
                .lines()
                .any(|l| l.starts_with("DATABASE_POOL_SIZE") && l.contains(" 4 ")),
            "{}",
            sqlite.describe()
        );
        let postgres = config(&[("DATABASE_URL", "postgres://u@db/mailing")]).unwrap();
        assert_eq!(postgres.database_pool_size, 16);
        for url in ["sqlite://x.db", "postgres://u@db/mailing"] {
            let set = config(&[("DATABASE_URL", url), ("DATABASE_POOL_SIZE", "7")]).unwrap();
            assert_eq!(set.database_pool_size, 7, "{url}");
        }
        let err = config(&[("DATABASE_POOL_SIZE", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DATABASE_POOL_SIZE must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn production_refuses_missing_secrets_and_names_them() {
        let err = config(&[("ENVIRONMENT", "production")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AUTH_SECRET_KEY is required in production"),
            "{err}"
        );
        assert!(
            err.contains("ADMIN_PASSWORD is required in production"),
            "{err}"
        );
    }

    #[test]
    fn production_refuses_weak_secrets() {
        let err = config(&[
            ("ENVIRONMENT", "production"),
            ("AUTH_SECRET_KEY", "changeme"),
            ("ADMIN_PASSWORD", "admin"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("AUTH_SECRET_KEY is too weak"), "{err}");
        assert!(err.contains("ADMIN_PASSWORD is too weak"), "{err}");
    }

    #[test]
    fn production_accepts_strong_secrets() {
        let c = config(&[
            ("ENVIRONMENT", "production"),
            (
                "AUTH_SECRET_KEY",
                "q8Zx1vR4mT7pL0sW3eY6uI9oA2dF5gH8jK1lZ4xC7vB0nM3",
            ),
            ("ADMIN_PASSWORD", "a-long-Unusual-passphrase-42"),
            ("PUBLIC_URL", "https://mail.example.com"),
        ])
        .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = config(&[
            ("HTTP_PORT", "eighty"),
            ("SMTP_TLS", "maybe"),
            ("BATCH_SIZE", "0"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn the_api_cache_is_bounded_and_can_be_turned_off() {
        assert_eq!(
            config(&[]).unwrap().api_cache_ttl,
            Duration::from_millis(1000)
        );
        assert!(
            config(&[("API_CACHE_TTL_MS", "0")])
                .unwrap()
                .api_cache_ttl
                .is_zero()
        );
        let err = config(&[("API_CACHE_TTL_MS", "60000")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("API_CACHE_TTL_MS must be at most 10000"),
            "{err}"
        );
        let err = config(&[("API_CACHE_TTL_MS", "1s")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("API_CACHE_TTL_MS=\"1s\""), "{err}");
    }

    #[test]
    fn description_shows_values_derived_from_other_settings() {
        let c = config(&[("HTTP_PORT", "9000"), ("DATA_DIR", "/srv/mailing")]).unwrap();
        let text = c.describe();
        assert!(text.contains("http://localhost:9000"), "{text}");
        assert!(text.contains("/srv/mailing/outbox"), "{text}");
        assert!(
            text.contains("sqlite:///srv/mailing/mailing.sqlite3"),
            "{text}"
        );
    }

    #[test]
    fn production_requires_an_https_public_url() {
        let err = config(&[
            ("ENVIRONMENT", "production"),
            (
                "AUTH_SECRET_KEY",
                "q8Zx1vR4mT7pL0sW3eY6uI9oA2dF5gH8jK1lZ4xC7vB0nM3",
            ),
            ("ADMIN_PASSWORD", "a-long-Unusual-passphrase-42"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("PUBLIC_URL") && err.contains("https"), "{err}");
    }

    #[test]
    fn redis_host_and_port_build_the_url() {
        let c = config(&[("REDIS_HOST", "redis"), ("REDIS_PORT", "6380")]).unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://redis:6380"));
    }

    #[test]
    fn secrets_are_masked_in_the_description() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:hunter2@db/mailing"),
            ("AUTH_SECRET_KEY", "very-secret-value-0123456789abcdef"),
        ])
        .unwrap();
        let text = c.describe();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(text.contains("postgres://app:***@db/mailing"), "{text}");
    }
}
