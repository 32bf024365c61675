//! The bench's stand-ins for a provider, in the bench process: an HTTP server that
//! accepts Resend-style batch requests (`POST /emails/batch`, bearer key, up to 100
//! emails, answers a random id for each, as Resend answers UUIDs, and accepts a request
//! whose `Idempotency-Key` it has seen once only, as Resend does) and a minimal SMTP
//! server (no TLS, no auth), both counting the messages they accept and the distinct
//! recipients among them: the second half of the bench's ledger check.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use salvo::conn::{Acceptor, Listener, TcpListener};
use salvo::prelude::*;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The API key the HTTP sink expects.
pub const SINK_API_KEY: &str = "re_bench_sink_key";

/// What a sink accepted.
#[derive(Default)]
pub struct Tally {
    /// Messages accepted.
    pub accepted: AtomicU64,
    /// Requests (HTTP) or SMTP transactions answered.
    pub requests: AtomicU64,
    /// Requests refused (bad key, bad body).
    pub refused: AtomicU64,
    /// Requests answered without counting them: their `Idempotency-Key` was accepted
    /// before (a retry of a request whose answer the engine did not get).
    pub replayed: AtomicU64,
    recipients: Mutex<HashSet<u64>>,
    idempotency_keys: Mutex<HashSet<u64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Tally {
    fn record(&self, addresses: impl IntoIterator<Item = String>) {
        let mut n = 0;
        let mut seen = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        for address in addresses {
            let bare = address
                .rsplit('<')
                .next()
                .unwrap_or(&address)
                .trim_end_matches('>')
                .trim()
                .to_ascii_lowercase();
            let mut h = self.hasher.build_hasher();
            h.write(bare.as_bytes());
            seen.insert(h.finish());
            n += 1;
        }
        drop(seen);
        self.accepted.fetch_add(n, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Requests answered again for an `Idempotency-Key` already accepted.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Whether a request with this `Idempotency-Key` is new (and from now on known).
    fn first_with_key(&self, key: &str) -> bool {
        let mut h = self.hasher.build_hasher();
        h.write(key.as_bytes());
        self.idempotency_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h.finish())
    }

    /// Distinct recipients among them.
    pub fn distinct(&self) -> u64 {
        self.recipients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64
    }

    /// Forgets everything (after the sink's own limit was measured).
    pub fn reset(&self) {
        self.accepted.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.refused.store(0, Ordering::Relaxed);
        self.replayed.store(0, Ordering::Relaxed);
        self.recipients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.idempotency_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[derive(Deserialize)]
struct BatchEmail {
    to: Vec<String>,
}

struct BatchHandler(Arc<Tally>);

#[async_trait]
impl Handler for BatchHandler {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let auth = req.header::<String>("authorization").unwrap_or_default();
        if auth != format!("Bearer {SINK_API_KEY}") {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            res.status_code(StatusCode::UNAUTHORIZED);
            res.render(Json(serde_json::json!({"message": "API key is invalid"})));
            return;
        }
        let emails: Vec<BatchEmail> = match req.payload_with_max_size(16 << 20).await {
            Ok(bytes) => match serde_json::from_slice(bytes) {
                Ok(e) => e,
                Err(e) => {
                    self.0.refused.fetch_add(1, Ordering::Relaxed);
                    res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
                    res.render(Json(serde_json::json!({"message": e.to_string()})));
                    return;
                }
            },
            Err(e) => {
                self.0.refused.fetch_add(1, Ordering::Relaxed);
                res.status_code(StatusCode::BAD_REQUEST);
                res.render(Json(serde_json::json!({"message": e.to_string()})));
                return;
            }
        };
        if emails.is_empty() || emails.len() > 100 {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
            res.render(Json(
                serde_json::json!({"message": "between 1 and 100 emails per batch"}),
            ));
            return;
        }
        let count = emails.len();
        // A retry of a request already accepted is answered (with fresh ids; Resend
        // answers the first response again) and not counted: the provider sent it once.
        let key = req.header::<String>("idempotency-key");
        if key.is_none_or(|k| self.0.first_with_key(&k)) {
            self.0
                .record(emails.into_iter().filter_map(|e| e.to.into_iter().next()));
        } else {
            self.0.replayed.fetch_add(1, Ordering::Relaxed);
        }
        // Random ids, as Resend's are (UUIDs): the ledger indexes them, and ids that
        // sort in sending order would make that index cheaper than it is in production.
        // From the thread's generator: `Uuid::new_v4` asks the kernel for every id, a
        // system call per message on the cores the measured `serve` shares.
        let mut body = String::with_capacity(48 * count + 16);
        body.push_str("{\"data\":[");
        for i in 0..count {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"id\":\"");
            body.push_str(
                uuid::Builder::from_random_bytes(rand::random())
                    .into_uuid()
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            );
            body.push_str("\"}");
        }
        body.push_str("]}");
        res.headers_mut().insert(
            salvo::http::header::CONTENT_TYPE,
            salvo::http::HeaderValue::from_static("application/json"),
        );
        res.render(body);
    }
}

/// A running sink: its base URL (HTTP) or port (SMTP) and its tally.
pub struct Sink {
    /// `http://127.0.0.1:PORT` for the HTTP sink, `127.0.0.1:PORT` for SMTP.
    pub address: String,
    /// The port.
    pub port: u16,
    /// What it accepted.
    pub tally: Arc<Tally>,
}

/// Starts the Resend-style HTTP sink on a free loopback port.
pub async fn start_http() -> anyhow::Result<Sink> {
    let tally = Arc::new(Tally::default());
    let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
    let port = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .map(|a| a.port())
        .context("the sink has no local address")?;
    let router = Router::with_path("emails/batch").post(BatchHandler(tally.clone()));
    tokio::spawn(async move { Server::new(acceptor).serve(router).await });
    Ok(Sink {
        address: format!("http://127.0.0.1:{port}"),
        port,
        tally,
    })
}

/// Starts the SMTP sink on a free loopback port.
pub async fn start_smtp() -> anyhow::Result<Sink> {
    let tally = Arc::new(Tally::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the SMTP sink")?;
    let port = listener.local_addr()?.port();
    let t = tally.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // Replies are small writes the client waits for: no Nagle delay on them.
            let _ = stream.set_nodelay(true);
            let t = t.clone();
            tokio::spawn(async move {
                let _ = smtp_session(stream, &t).await;
            });
        }
    });
    Ok(Sink {
        address: format!("127.0.0.1:{port}"),
        port,
        tally,
    })
}

/// One SMTP connection: EHLO, then any number of MAIL/RCPT/DATA transactions.
async fn smtp_session(stream: tokio::net::TcpStream, tally: &Tally) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.bench ESMTP\r\n").await?;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.bench\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.bench\r\n"
        } else if upper.starts_with("MAIL FROM") {
            rcpts.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO") {
            let to = line.trim_end().get(8..).unwrap_or("").trim().to_owned();
            rcpts.push(to);
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
            }
            tally.record(std::mem::take(&mut rcpts));
            b"250 OK queued\r\n"
        } else if upper == "RSET" {
            rcpts.clear();
            b"250 OK\r\n"
        } else if upper == "NOOP" {
            b"250 OK\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        // As `main` does before any client is built.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    async fn post(sink: &Sink, key: Option<&str>, to: &[&str]) -> (u16, serde_json::Value) {
        let emails: Vec<_> = to
            .iter()
            .map(|t| serde_json::json!({"from": "a@shop.example", "to": [t], "subject": "s", "html": "h"}))
            .collect();
        let mut req = client()
            .post(format!("{}/emails/batch", sink.address))
            .bearer_auth(SINK_API_KEY)
            .json(&emails);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.expect("the sink answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or_default())
    }

    #[tokio::test]
    async fn a_retried_request_is_answered_but_counted_once_as_resend_would_send_it_once() {
        let sink = start_http().await.expect("the sink starts");
        let (status, body) = post(&sink, Some("k1"), &["a@x.example", "B <b@x.example>"]).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
        // The same key again: answered with an id per message, not counted.
        let (status, body) = post(&sink, Some("k1"), &["a@x.example", "B <b@x.example>"]).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
        assert_eq!((sink.tally.accepted(), sink.tally.distinct()), (2, 2));
        assert_eq!(sink.tally.replayed(), 1);
        // Without a key, or with another one, a message to the same recipient counts
        // again: that is a duplicate the ledger check reports.
        post(&sink, None, &["a@x.example"]).await;
        post(&sink, Some("k2"), &["A@X.example"]).await;
        assert_eq!((sink.tally.accepted(), sink.tally.distinct()), (4, 2));
        // A refused request does not make its key known.
        let refused = client()
            .post(format!("{}/emails/batch", sink.address))
            .bearer_auth("wrong")
            .header("Idempotency-Key", "k3")
            .json(&serde_json::json!([{"to": ["c@x.example"]}]))
            .send()
            .await
            .expect("the sink answers");
        assert_eq!(refused.status().as_u16(), 401);
        post(&sink, Some("k3"), &["c@x.example"]).await;
        assert_eq!((sink.tally.accepted(), sink.tally.replayed()), (5, 1));
        sink.tally.reset();
        post(&sink, Some("k1"), &["a@x.example"]).await;
        assert_eq!((sink.tally.accepted(), sink.tally.replayed()), (1, 0));
    }
}
