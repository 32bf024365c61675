//! End to end: observability. `/metrics` exposes 20+ metric families in Prometheus text
//! format that `promtool` accepts and that count a campaign; the real Prometheus server
//! scrapes it and answers a PromQL query; OTLP export sends metrics and traces to the
//! configured endpoint; a black-holed collector does not stop sending.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use salvo::conn::{Acceptor, Listener, TcpListener};
use salvo::prelude::*;
use support::{Backend, Server, create_campaign, free_port, seed_list};

async fn run_campaign(server: &Server, n: usize) -> i64 {
    let token = server.login().await;
    let list = seed_list(server, &token, n).await;
    let campaign = create_campaign(server, &token, list, "file").await;
    support::send_campaign(server, &token, campaign).await;
    server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(60))
        .await;
    campaign
}

async fn metrics_text(server: &Server) -> String {
    server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_twenty_families_that_promtool_accepts_and_count_the_campaign() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    run_campaign(&server, 50).await;
    // The ledger ratios are sampled every 15 s; wait for the first round after the campaign.
    let deadline = Instant::now() + Duration::from_secs(40);
    let text = loop {
        let text = metrics_text(&server).await;
        if text.contains("mailing_delivery_rate_ratio 1") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the delivery rate never reached 1:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        families.len() >= 20,
        "{} families: {families:?}",
        families.len()
    );
    assert!(
        families.iter().all(|f| f.starts_with("mailing_")),
        "{families:?}"
    );
    let sent = text
        .lines()
        .find(|l| {
            l.starts_with("mailing_deliveries_total{")
                && l.contains("outcome=\"sent\"")
                && l.contains("provider=\"file\"")
        })
        .expect("a sent counter");
    assert!(sent.ends_with(" 50"), "{sent}");
    assert!(
        text.contains("mailing_http_requests_total{route=\"/api/v1/lists\",status=\"201\"}"),
        "routes are labelled by pattern"
    );
    assert!(
        !text.contains("@example.com"),
        "no address ever appears in a label"
    );
    for expected in [
        "mailing_queue_depth_jobs",
        "mailing_process_resident_memory_bytes",
        "mailing_delivery_rate_ratio",
        "mailing_actor_up",
        "mailing_queue_oldest_job_age_seconds",
        "mailing_running_campaign_recipients",
        "mailing_queue_roundtrip_seconds",
    ] {
        assert!(families.contains(expected), "{expected} missing");
    }

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("promtool");
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if in_ci() => {
            panic!("promtool (Debian package prometheus) is required under CI=true")
        }
        Err(_) => eprintln!("SKIPPED promtool check: promtool is not installed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_prometheus_scrapes_mailing_and_answers_a_promql_query() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !in_ci(),
            "prometheus (Debian package) is required under CI=true"
        );
        eprintln!("SKIPPED prometheus scrape: prometheus is not installed");
        return;
    }
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    run_campaign(&server, 30).await;
    let dir = tempfile::tempdir().expect("tmp");
    let target = server.base.trim_start_matches("http://");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mailing\n    static_configs:\n      - targets: [\"{target}\"]\n"),
    )
    .expect("config");
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let client = support::http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = "sum(mailing_deliveries_total{outcome=\"sent\"})";
    let value = loop {
        let encoded: String = query
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let answer = client
            .get(format!(
                "http://127.0.0.1:{port}/api/v1/query?query={encoded}"
            ))
            .send()
            .await;
        if let Ok(r) = answer
            && let Ok(body) = r.json::<serde_json::Value>().await
            && let Some(v) = body["data"]["result"][0]["value"][1].as_str()
        {
            break v.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered {query}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(value, "30", "PromQL {query}");
}

#[derive(Default)]
struct Received {
    metric_names: BTreeSet<String>,
    span_names: BTreeSet<String>,
    /// (span name, trace id).
    spans: Vec<(String, Vec<u8>)>,
}

/// Records what one OTLP export request (HTTP path or gRPC method, protobuf body) carries.
fn record(received: &Mutex<Received>, path: &str, body: &[u8]) {
    let mut r = received.lock().expect("state");
    if path.ends_with("/v1/metrics") || path.ends_with("MetricsService/Export") {
        if let Ok(m) =
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::decode(
                body,
            )
        {
            for rm in m.resource_metrics {
                for sm in rm.scope_metrics {
                    r.metric_names
                        .extend(sm.metrics.into_iter().map(|m| m.name));
                }
            }
        }
    } else if (path.ends_with("/v1/traces") || path.ends_with("TraceService/Export"))
        && let Ok(t) =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                body,
            )
    {
        for rs in t.resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    r.span_names.insert(span.name.clone());
                    r.spans.push((span.name, span.trace_id));
                }
            }
        }
    }
}

struct Collector(Arc<Mutex<Received>>);

#[async_trait]
impl Handler for Collector {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        let path = req.uri().path().to_owned();
        let body = req
            .payload_with_max_size(64 << 20)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        record(&self.0, &path, &body);
        res.status_code(StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_delivers_metrics_and_traces_to_the_collector() {
    let received = Arc::new(Mutex::new(Received::default()));
    let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
    let addr = acceptor.holdings()[0]
        .local_addr
        .clone()
        .into_std()
        .expect("addr");
    let router = Router::with_path("{**rest}").post(Collector(received.clone()));
    tokio::spawn(async move { salvo::Server::new(acceptor).serve(router).await });
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "500".to_owned()),
    ];
    let server = support::Server::start("serve", &Backend::embedded(), &env).await;
    run_campaign(&server, 20).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let r = received.lock().expect("state");
            if r.metric_names.contains("mailing_deliveries_total") && !r.span_names.is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no OTLP metrics or traces arrived\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The send request, the plan job and every batch's spans share one trace.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = received.lock().expect("state").spans.clone();
        let plan = spans
            .iter()
            .find(|(name, _)| name == "plan")
            .map(|(_, t)| t.clone());
        if let Some(trace) = plan {
            let names: BTreeSet<&str> = spans
                .iter()
                .filter(|(_, t)| *t == trace)
                .map(|(n, _)| n.as_str())
                .collect();
            if ["http", "plan", "send_batch", "render", "deliver"]
                .iter()
                .all(|n| names.contains(n))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "spans of the campaign's trace: {names:?}"
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "no plan span arrived: {:?}",
                received.lock().expect("state").span_names
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_collector_does_not_stop_sending() {
    // Accepts connections and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = hole.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hole.incoming().flatten() {
            held.push(conn);
        }
    });
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_owned()),
        // A small span queue, so that spans pile up while exports hang.
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16".to_owned()),
    ];
    let server = Server::start("serve", &Backend::embedded(), &env).await;
    run_campaign(&server, 200).await;
    // Every request is a span: far more than 16 end while one export hangs.
    for _ in 0..200 {
        server
            .http
            .get(format!("{}/health", server.base))
            .send()
            .await
            .expect("health");
    }
    // Failed exports and spans the full queue refused are both counted, while sending
    // went on and /metrics is still served.
    let dropped = |text: &str, signal: &str, reason: &str| {
        text.lines()
            .filter(|l| l.starts_with("mailing_telemetry_dropped_total{"))
            .filter(|l| {
                l.contains(&format!("signal=\"{signal}\""))
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics_text(&server).await;
        let failed = dropped(&text, "metrics", "export_failed");
        let refused = dropped(&text, "traces", "queue_full");
        if failed >= 1.0 && refused >= 1.0 {
            assert!(
                text.contains("mailing_deliveries_total"),
                "metrics still served locally"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped telemetry was never counted (metrics export_failed {failed}, traces queue_full {refused}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The sum of a counter's series in Prometheus text.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_port_serves_metrics_apart_and_in_workers_too() {
    let Some(backend) = Backend::fleet("PROMETHEUS_PORT on a fleet").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (api_port, worker_port) = (free_port(), free_port());
    let api = Server::start_in(
        dir.path(),
        "api",
        &backend,
        &[("PROMETHEUS_PORT", api_port.to_string())],
    )
    .await;
    let _worker = Server::start_in(
        dir.path(),
        "worker",
        &backend,
        &[("PROMETHEUS_PORT", worker_port.to_string())],
    )
    .await;
    run_campaign(&api, 30).await;

    // Off the API port...
    let res = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 404, "/metrics moved to PROMETHEUS_PORT");
    // ...on its own, in the API process and in the worker that did the sending.
    let scrape = |port: u16| {
        let http = api.http.clone();
        async move {
            let res = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .expect("scrape");
            assert_eq!(res.status(), 200);
            res.text().await.expect("text")
        }
    };
    let api_text = scrape(api_port).await;
    assert!(
        counter_sum(&api_text, "mailing_http_requests_total") >= 1.0,
        "{api_text}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let worker_text = scrape(worker_port).await;
        if counter_sum(&worker_text, "mailing_deliveries_total") >= 30.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's deliveries never showed on its PROMETHEUS_PORT:\n{worker_text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing else is routed there.
    let res = api
        .http
        .get(format!("http://127.0.0.1:{api_port}/api/v1/lists"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 404);
    backend.cleanup().await;
}

/// An OTLP/gRPC collector on `listener`, on HTTP/2 without TLS as collectors listen on
/// 4317: each unary `Export` call's message (gRPC framing: a compression flag, a 4-byte
/// length, the protobuf) is recorded, and answered with an empty response and
/// `grpc-status: 0`.
async fn grpc_collector(listener: tokio::net::TcpListener, received: Arc<Mutex<Received>>) {
    while let Ok((socket, _)) = listener.accept().await {
        let received = received.clone();
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(socket).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                let received = received.clone();
                tokio::spawn(async move {
                    let path = request.uri().path().to_owned();
                    let mut body = request.into_body();
                    let mut bytes = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        bytes.extend_from_slice(&chunk);
                    }
                    if bytes.len() >= 5 && bytes[0] == 0 {
                        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                        if let Some(message) = bytes.get(5..5 + len as usize) {
                            record(&received, &path, message);
                        }
                    }
                    let response = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("response");
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    }
                });
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_over_grpc_delivers_metrics_and_traces() {
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(grpc_collector(listener, received.clone()));
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "500".to_owned()),
    ];
    let server = support::Server::start("serve", &Backend::embedded(), &env).await;
    run_campaign(&server, 20).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let r = received.lock().expect("state");
            let plan = r.spans.iter().find(|(n, _)| n == "plan").map(|(_, t)| t);
            let same_trace = plan
                .is_some_and(|trace| r.spans.iter().any(|(n, t)| n == "send_batch" && t == trace));
            if r.metric_names.contains("mailing_deliveries_total") && same_trace {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no OTLP/gRPC metrics or traces arrived: {:?}\n{}",
            received.lock().expect("state").span_names,
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        server.logs().contains("\"traces\":\"gRPC\""),
        "the log says which transport"
    );
}
