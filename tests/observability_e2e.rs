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
        let mut r = self.0.lock().expect("state");
        if path.ends_with("/v1/metrics") {
            if let Ok(m) = opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::decode(body.as_slice()) {
                for rm in m.resource_metrics {
                    for sm in rm.scope_metrics {
                        r.metric_names.extend(sm.metrics.into_iter().map(|m| m.name));
                    }
                }
            }
        } else if path.ends_with("/v1/traces")
            && let Ok(t) =
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                    body.as_slice(),
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
    ];
    let server = Server::start("serve", &Backend::embedded(), &env).await;
    run_campaign(&server, 200).await;
    // Exports time out and are counted as dropped, while sending went on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics_text(&server).await;
        let dropped = text
            .lines()
            .find(|l| l.starts_with("mailing_telemetry_dropped_total{signal=\"metrics\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 1.0 {
            assert!(
                text.contains("mailing_deliveries_total"),
                "metrics still served locally"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dropped telemetry was never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
