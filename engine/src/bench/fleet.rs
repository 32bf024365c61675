//! The engine under test: child processes of this very executable (`mailing serve`, or
//! `mailing api` plus `mailing worker`s), each with its own log file in the bench's
//! directory, and a small client for the HTTP API calls the bench makes (login, plugin
//! upload, template, campaign, send, progress, metrics).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The admin password the children are started with.
pub const ADMIN_PASSWORD: &str = "bench-admin-password-0123456789";

/// The environment every child process of a bench run gets: its own data directory and
/// port, a fresh secret, quiet logs, no backups, and the API's request limits off (the
/// bench measures the engine, not the limiter; with them on, wrk would mostly count
/// 429s). Callers add the store, the queue and the provider.
pub fn child_env(
    dir: &Path,
    port: u16,
    database_url: &str,
    namespace: &str,
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (k, v) in [
        ("DATA_DIR", dir.join("data").display().to_string()),
        ("OUTBOX_DIR", dir.join("data/outbox").display().to_string()),
        ("BACKUP_DIR", dir.join("backups").display().to_string()),
        ("DATABASE_URL", database_url.to_owned()),
        ("REDIS_URL", String::new()),
        ("HTTP_HOST", "127.0.0.1".into()),
        ("HTTP_PORT", port.to_string()),
        ("PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("ADMIN_USERNAME", "admin".into()),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        (
            "AUTH_SECRET_KEY",
            format!("bench-secret-{:032x}", rand::random::<u128>()),
        ),
        ("ENVIRONMENT", "development".into()),
        ("LOG_LEVEL", "warn".into()),
        ("RUST_LOG", "warn".into()),
        ("LOG_FORMAT", "json".into()),
        ("QUEUE_NAMESPACE", namespace.to_owned()),
        ("API_RATE_LIMIT_PER_IP", "0".into()),
        ("API_RATE_LIMIT_PER_USER", "0".into()),
        ("BACKUP_ENABLED", "false".into()),
        ("METRICS_ENABLED", "true".into()),
        // Callers that scrape give each process a port of its own; a port inherited
        // from the caller's environment would be taken by a running deployment.
        ("PROMETHEUS_PORT", String::new()),
    ] {
        env.insert(k.to_owned(), v);
    }
    env
}

/// One child process.
pub struct Member {
    /// `serve`, `api` or `worker`.
    pub role: &'static str,
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Member {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return format!("(nothing in {})", self.log.display());
        }
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`. A SIGCONT follows the SIGTERM, so that a
    /// stopped process (a debugger, `kill -STOP`) handles it instead of waiting out the
    /// grace.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        for signal in ["-TERM", "-CONT"] {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(self.pid().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `mailing <role>` with the bench's environment on top of this process's.
pub fn spawn(
    role: &'static str,
    dir: &Path,
    env: &HashMap<String, String>,
    index: usize,
) -> anyhow::Result<Member> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let log = dir.join(format!("{role}-{index}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(exe)
        .arg(role)
        .current_dir(dir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start `mailing {role}`"))?;
    Ok(Member { role, child, log })
}

/// The API of the process that serves HTTP.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
    /// When the token was issued and how long the server said it lives.
    issued: Option<(Instant, Duration)>,
}

impl Api {
    /// A client for `base`.
    pub fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Api {
            base,
            http,
            token: None,
            issued: None,
        })
    }

    /// Waits until `/health` answers 200, or the process exits, or a minute passes.
    pub async fn wait_healthy(&self, member: &mut Member) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = member.exited() {
                bail!(
                    "`mailing {}` exited ({status}) before it was healthy; its log ends:\n{}",
                    member.role,
                    member.log_tail()
                );
            }
            if let Ok(r) = self.http.get(format!("{}/health", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "`mailing {}` did not become healthy within a minute; its log ends:\n{}",
            member.role,
            member.log_tail()
        )
    }

    /// Logs in as the admin; later calls carry the token.
    pub async fn login(&mut self) -> anyhow::Result<String> {
        let body = self
            .call(
                reqwest::Method::POST,
                "/auth/login",
                Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
                200,
            )
            .await?;
        let token = body["access_token"]
            .as_str()
            .context("the login answer has no access_token")?
            .to_owned();
        let lifetime = body["expires_in"]
            .as_u64()
            .context("the login answer has no expires_in")?;
        self.token = Some(token.clone());
        self.issued = Some((Instant::now(), Duration::from_secs(lifetime)));
        Ok(token)
    }

    /// Logs in again once the token has lived half its lifetime (`ACCESS_TOKEN_TTL`),
    /// so a send that outlasts it is still watched to its end. True when it did.
    pub async fn keep_logged_in(&mut self) -> anyhow::Result<bool> {
        match self.issued {
            Some((at, lifetime)) if at.elapsed() >= lifetime / 2 => {
                self.login().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A JSON call that must answer `expect`; returns the body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("{method} {path} failed"))?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        if status != expect {
            return Err(UnexpectedStatus {
                call: format!("{method} {path}"),
                status,
                expect,
                body: text,
            }
            .into());
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Uploads a plugin component; returns its id.
    pub async fn upload_plugin(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<i64> {
        let mut req = self
            .http
            .post(format!(
                "{}/api/v1/plugins?name={name}&version=1.0.0",
                self.base
            ))
            .header("content-type", "application/wasm")
            .body(bytes);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.context("uploading the plugin failed")?;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        if status != 201 {
            bail!("uploading the plugin answered {status}: {text}");
        }
        let body: Value = serde_json::from_str(&text).context("the upload answer")?;
        body["id"].as_i64().context("the upload answer has no id")
    }
}

/// An API call answered with another status than the one expected.
#[derive(Debug)]
pub struct UnexpectedStatus {
    /// `METHOD /path`.
    pub call: String,
    /// What it answered.
    pub status: u16,
    /// What it should have answered.
    pub expect: u16,
    /// The answer's body.
    pub body: String,
}

impl UnexpectedStatus {
    /// Whether asking again cannot help: a client error other than a timeout (408) or
    /// a rate limit (429). The run's token is renewed before it expires, so a 401 is
    /// not a stale token either.
    pub fn is_permanent(&self) -> bool {
        (400..500).contains(&self.status) && !matches!(self.status, 408 | 429)
    }
}

impl std::fmt::Display for UnexpectedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered {} (expected {}): {}",
            self.call, self.status, self.expect, self.body
        )
    }
}

impl std::error::Error for UnexpectedStatus {}

/// The `/metrics` text a bench process serves on its `PROMETHEUS_PORT`, within 10 s (a
/// stopped process never answers).
pub async fn metrics_on(port: u16) -> anyhow::Result<String> {
    Ok(reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}
