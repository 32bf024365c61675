//! A local HTTP server that behaves like Resend's batch API, for tests: it checks the
//! bearer key, honours `Idempotency-Key` (a repeated key returns the first answer and
//! delivers nothing again), limits a request to 100 messages, can answer 429 with
//! `Retry-After` for a while, and records when each recipient was first accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use salvo::conn::{Acceptor, Listener, TcpListener};
use salvo::prelude::*;

pub const API_KEY: &str = "re_test_key";

#[derive(Default)]
pub struct MockState {
    /// Idempotency-Key → the ids answered the first time.
    pub keys: HashMap<String, Vec<String>>,
    /// Recipient → how many times a message to them was accepted (without a replayed key).
    pub deliveries: HashMap<String, u32>,
    /// When each accepted message was accepted.
    pub accepted_at: Vec<Instant>,
    /// Answer 429 for this long from the next request on (armed by `throttle_for`).
    pub throttle_next: Option<Duration>,
    /// Answer 429 until then.
    pub throttle_until: Option<Instant>,
    /// 429 answers given.
    pub throttled: u32,
    /// Requests replayed with a known key.
    pub replays: u32,
    /// Requests received.
    pub requests: u32,
    /// Addresses the service refuses with 422.
    pub reject: Vec<String>,
}

#[derive(Clone)]
pub struct ResendMock {
    pub url: String,
    pub state: Arc<Mutex<MockState>>,
}

struct Handle(Arc<Mutex<MockState>>);

#[async_trait]
impl Handler for Handle {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let auth = req.header::<String>("authorization").unwrap_or_default();
        if auth != format!("Bearer {API_KEY}") {
            res.status_code(StatusCode::UNAUTHORIZED);
            res.render(Json(
                serde_json::json!({"message": "API key is invalid", "statusCode": 401}),
            ));
            return;
        }
        let key = req.header::<String>("idempotency-key");
        let body: Vec<serde_json::Value> = match req.parse_json_with_max_size(8 << 20).await {
            Ok(b) => b,
            Err(e) => {
                res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
                res.render(Json(serde_json::json!({"message": e.to_string()})));
                return;
            }
        };
        let mut s = self.0.lock().expect("mock state");
        s.requests += 1;
        if let Some(d) = s.throttle_next.take() {
            s.throttle_until = Some(Instant::now() + d);
        }
        if s.throttle_until.is_some_and(|t| Instant::now() < t) {
            s.throttled += 1;
            res.status_code(StatusCode::TOO_MANY_REQUESTS);
            let _ = res.add_header("retry-after", "1", true);
            res.render(Json(
                serde_json::json!({"message": "Too many requests", "statusCode": 429}),
            ));
            return;
        }
        if body.len() > 100 {
            res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
            res.render(Json(
                serde_json::json!({"message": "at most 100 emails per batch"}),
            ));
            return;
        }
        if let Some(k) = &key
            && let Some(ids) = s.keys.get(k).cloned()
        {
            s.replays += 1;
            let data: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
            res.render(Json(serde_json::json!({"data": data})));
            return;
        }
        let to: Vec<String> = body
            .iter()
            .map(|e| e["to"][0].as_str().unwrap_or_default().to_owned())
            .collect();
        if let Some(bad) = to
            .iter()
            .find(|t| s.reject.iter().any(|r| t.contains(r.as_str())))
        {
            res.status_code(StatusCode::UNPROCESSABLE_ENTITY);
            res.render(Json(
                serde_json::json!({"message": format!("Invalid `to` field: {bad}")}),
            ));
            return;
        }
        let now = Instant::now();
        let mut ids = Vec::new();
        for t in to {
            let address = t
                .rsplit('<')
                .next()
                .unwrap_or(&t)
                .trim_end_matches('>')
                .to_owned();
            *s.deliveries.entry(address).or_default() += 1;
            s.accepted_at.push(now);
            ids.push(format!("re_{}", s.accepted_at.len()));
        }
        if let Some(k) = key {
            s.keys.insert(k, ids.clone());
        }
        let data: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
        res.render(Json(serde_json::json!({"data": data})));
    }
}

impl ResendMock {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(MockState::default()));
        let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
        let addr = acceptor.holdings()[0]
            .local_addr
            .clone()
            .into_std()
            .expect("tcp address");
        let router = Router::with_path("emails/batch").post(Handle(state.clone()));
        tokio::spawn(async move { Server::new(acceptor).serve(router).await });
        ResendMock {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Settings that point the `resend` provider here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RESEND_API_KEY", API_KEY.to_owned()),
            ("RESEND_API_URL", self.url.clone()),
            ("RESEND_REQUEST_RATE", "0".to_owned()),
        ]
    }

    /// Answers 429 for `d` from the next request on (not from now: on a loaded machine
    /// the first request may come later than `d`).
    pub fn throttle_for(&self, d: Duration) {
        self.state.lock().expect("state").throttle_next = Some(d);
    }

    pub fn deliveries(&self) -> HashMap<String, u32> {
        self.state.lock().expect("state").deliveries.clone()
    }

    pub fn snapshot<T>(&self, f: impl FnOnce(&MockState) -> T) -> T {
        f(&self.state.lock().expect("state"))
    }
}
