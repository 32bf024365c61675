//! Test harness shared by the end-to-end tests: runs the real `mailing` binary with a
//! fresh data directory (and, for fleet tests, a fresh PostgreSQL database and a unique
//! Redis queue namespace), talks to it over HTTP, and runs a real SMTP server on
//! loopback (mailin-embedded) that records what it receives.
//!
//! PostgreSQL and Redis URLs come from `MAILING_TEST_DATABASE_URL` and
//! `MAILING_TEST_REDIS_URL`, defaulting to the local servers. When one is unreachable
//! the test fails under `CI=true` and is skipped (saying so) elsewhere.

#![allow(dead_code)]

pub mod resend_mock;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "correct-horse-battery-staple";

/// A free loopback port (there is a small race between closing and reuse; acceptable
/// for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid_like())
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
    format!("{:016x}", h.finish())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Where the store and the queue live for a test. A fleet backend's database and queue
/// keys are removed by [`Backend::cleanup`] and again when it is dropped: a test that
/// failed half-way, or a process that wrote after the cleanup, leaves nothing behind.
/// Declared before the test's [`Server`]s, it drops after them, once they are stopped.
#[derive(Debug)]
pub struct Backend {
    /// Extra environment for the binary.
    pub env: Vec<(String, String)>,
    /// The PostgreSQL database to drop at the end, if any: (the server's URL, the name).
    pub pg_database: Option<(String, String)>,
    /// The Redis keys to delete at the end, if any: (the server's URL, the namespace).
    pub queue_namespace: Option<(String, String)>,
    /// Human name for messages.
    pub name: &'static str,
}

impl Backend {
    /// SQLite store and queue in the data directory: the embedded default.
    pub fn embedded() -> Self {
        Backend {
            env: Vec::new(),
            pg_database: None,
            queue_namespace: None,
            name: "sqlite",
        }
    }

    /// A fresh PostgreSQL database and a unique Redis namespace, or None (skipped) when
    /// the servers are unreachable outside CI.
    pub async fn fleet(test: &str) -> Option<Self> {
        let pg = std::env::var("MAILING_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let redis_url = std::env::var("MAILING_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let unavailable = |what: &str, err: String| {
            if in_ci() {
                panic!("{what} is required under CI=true but unreachable: {err}");
            }
            eprintln!(
                "SKIPPED {test}: {what} unreachable ({err}); set MAILING_TEST_DATABASE_URL / MAILING_TEST_REDIS_URL"
            );
        };
        let client = match redis::Client::open(redis_url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                unavailable("Redis", e.to_string());
                return None;
            }
        };
        match tokio::time::timeout(
            Duration::from_secs(3),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(mut conn)) => {
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                if let Err(e) = pong {
                    unavailable("Redis", e.to_string());
                    return None;
                }
            }
            Ok(Err(e)) => {
                unavailable("Redis", e.to_string());
                return None;
            }
            Err(_) => {
                unavailable("Redis", "timed out".into());
                return None;
            }
        }
        use sqlx::Connection;
        let mut admin =
            match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&pg))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    unavailable("PostgreSQL", e.to_string());
                    return None;
                }
                Err(_) => {
                    unavailable("PostgreSQL", "timed out".into());
                    return None;
                }
            };
        let db = unique("mailing_test");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
        let base = pg
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(pg.clone());
        let url = format!("{base}/{db}");
        let namespace = unique("mailing_test");
        Some(Backend {
            env: vec![
                ("DATABASE_URL".into(), url),
                ("REDIS_URL".into(), redis_url.clone()),
                ("QUEUE_NAMESPACE".into(), namespace.clone()),
            ],
            pg_database: Some((pg, db)),
            queue_namespace: Some((redis_url, namespace)),
            name: "postgres+redis",
        })
    }

    /// Drops the test database and deletes the namespace's Redis keys (best effort,
    /// idempotent).
    pub async fn cleanup(&self) {
        if let Some((admin_url, db)) = &self.pg_database {
            use sqlx::Connection;
            if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        }
        if let Some((url, namespace)) = &self.queue_namespace
            && let Err(e) = mailing_jobs::queue::remove_redis_namespace(url, namespace).await
        {
            eprintln!("could not remove the test's queue namespace {namespace}: {e}");
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.pg_database.is_none() && self.queue_namespace.is_none() {
            return;
        }
        // This may run inside the test's runtime, which cannot be blocked on, so clean
        // up on a thread of its own.
        let this = &*self;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(this.cleanup()),
                    Err(e) => eprintln!("could not clean up the test backend: {e}"),
                }
            });
        });
    }
}

/// Whether a fleet backend's database, (the server's URL, its name), exists.
pub async fn database_exists((admin_url, database): &(String, String)) -> bool {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("PostgreSQL");
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .expect("pg_database");
    let _ = admin.close().await;
    exists
}

/// Fails if a Redis key, or a queue in apalis-redis's registry, starts with `prefix`.
pub async fn assert_no_queue_left(redis_url: &str, prefix: &str) {
    let (keys, queues) = queue_leftovers(redis_url, prefix).await;
    assert!(
        keys.is_empty(),
        "{} keys left, e.g. {:?}",
        keys.len(),
        keys.first()
    );
    assert!(
        queues.is_empty(),
        "queues left in apalis's registry: {queues:?}"
    );
}

/// The Redis keys whose names start with `prefix`, and the queues in apalis-redis's
/// registry that do.
pub async fn queue_leftovers(redis_url: &str, prefix: &str) -> (Vec<String>, Vec<String>) {
    let mut redis = redis::Client::open(redis_url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    let queues: Vec<String> = redis::cmd("ZRANGE")
        .arg(mailing_jobs::queue::APALIS_REDIS_QUEUE_REGISTRY)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("apalis's queue registry");
    let queues = queues
        .into_iter()
        .filter(|q| q.starts_with(prefix))
        .collect();
    (keys, queues)
}

/// A running `mailing` process.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    _tmp: Option<tempfile::TempDir>,
}

/// An HTTP client for tests (installs the process's TLS crypto provider first, as the
/// binary does).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mailing")
}

/// The environment every test process gets.
pub fn base_env(dir: &Path, port: u16) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (k, v) in [
        ("DATA_DIR", dir.join("data").display().to_string()),
        ("HTTP_HOST", "127.0.0.1".into()),
        ("HTTP_PORT", port.to_string()),
        ("PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        (
            "AUTH_SECRET_KEY",
            "test-secret-key-0123456789-abcdefghijklmnop".into(),
        ),
        ("LOG_FORMAT", "json".into()),
        ("LOG_LEVEL", "info".into()),
        ("QUEUE_POLL_MS", "50".into()),
        ("RETRY_BACKOFF_SECS", "1".into()),
    ] {
        env.insert(k.to_owned(), v);
    }
    env
}

impl Server {
    /// Starts `mailing <command>` with the backend and extra settings; waits for /health.
    pub async fn start(command: &str, backend: &Backend, extra: &[(&str, String)]) -> Server {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let dir = tmp.path().to_path_buf();
        let mut server = Self::start_in(&dir, command, backend, extra).await;
        server._tmp = Some(tmp);
        server
    }

    /// Starts a process sharing `dir` (several processes of one deployment).
    pub async fn start_in(
        dir: &Path,
        command: &str,
        backend: &Backend,
        extra: &[(&str, String)],
    ) -> Server {
        let port = free_port();
        let mut env = base_env(dir, port);
        for (k, v) in &backend.env {
            env.insert(k.clone(), v.clone());
        }
        for (k, v) in extra {
            env.insert((*k).to_owned(), v.clone());
        }
        let log =
            std::fs::File::create(dir.join(format!("{command}-{port}.log"))).expect("log file");
        let child = Command::new(binary())
            .arg(command)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("the mailing binary starts");
        let server = Server {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            http: http_client(),
            _tmp: None,
        };
        if command != "worker" {
            server.wait_healthy().await;
        }
        server
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/health", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "server at {} never became healthy; logs:\n{}",
            self.base,
            self.logs()
        );
    }

    /// Everything the process(es) in this directory logged.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// The log lines above INFO (warnings and errors) of every process in this
    /// directory, and the last lines of each: what a failure report needs, without
    /// thousands of "Batch delivered" lines cutting it short.
    pub fn notable_logs(&self) -> String {
        const TAIL: usize = 15;
        const NOTABLE: usize = 60;
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            if e.path().extension().is_none_or(|x| x != "log") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("== {}\n", e.path().display()));
            let notable: Vec<&&str> = lines
                .iter()
                .filter(|l| !l.contains("\"level\":\"INFO\"") && !l.contains("\"level\":\"DEBUG\""))
                .collect();
            for line in notable.iter().take(NOTABLE) {
                out.push_str(line);
                out.push('\n');
            }
            if notable.len() > NOTABLE {
                out.push_str(&format!("({} more left out)\n", notable.len() - NOTABLE));
            }
            out.push_str(&format!("-- its last {TAIL} lines\n"));
            for line in &lines[lines.len().saturating_sub(TAIL)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.join("data").join("outbox")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub async fn login(&self) -> String {
        let (status, body) = self
            .request(
                "POST",
                "/auth/login",
                None,
                Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "login failed: {body}");
        body["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }

    /// Sends a JSON request; returns status and JSON body (Null when empty).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Polls a campaign until it reaches `status` or the timeout passes.
    pub async fn wait_campaign(
        &self,
        token: &str,
        id: i64,
        status: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self
                .request("GET", &format!("/api/v1/campaigns/{id}"), Some(token), None)
                .await;
            if body["status"] == status {
                return body;
            }
            if Instant::now() > deadline {
                let mut unfinished = String::new();
                for left in ["pending", "sending"] {
                    let (_, page) = self
                        .request(
                            "GET",
                            &format!("/api/v1/campaigns/{id}/deliveries?status={left}&limit=5"),
                            Some(token),
                            None,
                        )
                        .await;
                    unfinished.push_str(&format!("{left}: {page}\n"));
                }
                panic!(
                    "campaign {id} did not reach {status}: {body}\nunfinished recipients (first 5 of each):\n{unfinished}\
                     warnings and errors logged:\n{}",
                    self.notable_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Logs in as a fresh viewer (`vic`, created by `admin`); returns the token.
pub async fn viewer_token(server: &Server, admin: &str) -> String {
    let (status, body) = server
        .request(
            "POST",
            "/api/v1/users",
            Some(admin),
            Some(
                json!({"username": "vic", "password": "a-long-viewer-password", "role": "viewer"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, login) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "vic", "password": "a-long-viewer-password"})),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    login["access_token"].as_str().expect("token").to_owned()
}

/// `(actor, target, detail)` of each audit entry with `action`, oldest first, read from
/// the store of the deployment in `dir`.
pub async fn audit_entries(
    backend: &Backend,
    dir: &Path,
    action: &str,
) -> Vec<(String, Option<String>, Value)> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = backend
        .env
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                dir.join("data").join("mailing.sqlite3").display()
            )
        });
    let mut conn = sqlx::AnyConnection::connect(&url)
        .await
        .expect("the store opens");
    let rows: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT actor, target, detail FROM audit_log WHERE action = $1 ORDER BY id")
            .bind(action)
            .fetch_all(&mut conn)
            .await
            .expect("the audit log reads");
    let _ = conn.close().await;
    rows.into_iter()
        .map(|(actor, target, detail)| {
            (
                actor,
                target,
                serde_json::from_str(&detail).expect("audit detail is JSON"),
            )
        })
        .collect()
}

/// Sends a draft campaign (asserting 202).
pub async fn send_campaign(server: &Server, token: &str, campaign: i64) {
    let (status, body) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/send"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// Creates a list with `n` subscribers named `Subscriber {i}`; returns the list id.
pub async fn seed_list(server: &Server, token: &str, n: usize) -> i64 {
    let (status, list) = server
        .request(
            "POST",
            "/api/v1/lists",
            Some(token),
            Some(json!({"name": "Customers"})),
        )
        .await;
    assert_eq!(status, 201, "{list}");
    let id = list["id"].as_i64().expect("list id");
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"email": format!("user{i}@example.com"), "name": format!("Subscriber {i}"), "attributes": {"n": i}}))
            .collect();
        let (status, report) = server
            .request(
                "POST",
                &format!("/api/v1/lists/{id}/subscribers"),
                Some(token),
                Some(Value::Array(rows)),
            )
            .await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(
            report["rejected"].as_array().map(Vec::len),
            Some(0),
            "{report}"
        );
    }
    id
}

/// Creates a template and a campaign to `list`; returns the campaign id.
pub async fn create_campaign(server: &Server, token: &str, list: i64, provider: &str) -> i64 {
    let (status, template) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(token),
            Some(json!({
                "name": "Welcome",
                "subject": "Hello {{ subscriber.name }}",
                "html": "<p>Dear {{ subscriber.name }}, number {{ subscriber.attributes.n }}.</p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>",
                "text": "Dear {{ subscriber.name }}\n{{ unsubscribe_url }}"
            })),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let (status, campaign) = server
        .request(
            "POST",
            "/api/v1/campaigns",
            Some(token),
            Some(json!({
                "name": "Launch",
                "template_id": template["id"],
                "list_ids": [list],
                "from": "Shop <news@shop.example>",
                "provider": provider
            })),
        )
        .await;
    assert_eq!(status, 201, "{campaign}");
    assert_eq!(campaign["status"], "draft");
    campaign["id"].as_i64().expect("campaign id")
}

/// One message as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Clone)]
struct Recorder {
    inbox: Arc<Mutex<Vec<Received>>>,
    current: Option<Received>,
}

impl mailin_embedded::Handler for Recorder {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.current = Some(Received {
            from: from.to_owned(),
            to: to.to_vec(),
            data: Vec::new(),
        });
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(c) = self.current.as_mut() {
            c.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        if let Some(c) = self.current.take()
            && let Ok(mut inbox) = self.inbox.lock()
        {
            inbox.push(c);
        }
        mailin_embedded::response::OK
    }
}

/// A real SMTP server (mailin-embedded) on a loopback port, recording messages.
pub struct SmtpSink {
    pub port: u16,
    pub inbox: Arc<Mutex<Vec<Received>>>,
}

impl SmtpSink {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind SMTP");
        let port = listener.local_addr().expect("addr").port();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let mut server = mailin_embedded::Server::new(Recorder {
            inbox: inbox.clone(),
            current: None,
        });
        server
            .with_name("sink.test")
            .with_num_threads(32)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpSink { port, inbox }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.inbox.lock().map(|i| i.clone()).unwrap_or_default()
    }

    /// Settings that point the `smtp` provider here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SMTP_HOST", "127.0.0.1".to_owned()),
            ("SMTP_PORT", self.port.to_string()),
            ("SMTP_TLS", "none".to_owned()),
        ]
    }
}
