//! `mailing bench --mode api`: the HTTP API under `wrk`, in one run against one
//! `mailing serve` (SQLite, the `file` provider): bare `GET /health`, an authenticated
//! `GET /api/v1/campaigns`, and `POST /api/v1/tx` (each request renders and writes one
//! transactional message). Reports requests/s and p99 latency per endpoint, and the
//! authenticated GET as a share of `/health`. The server runs with the bench's
//! `API_CACHE_TTL_MS` (reported): by default the token's standing and the page are kept
//! for a second, as a polling dashboard would meet them. The wrk scripts are
//! `engine/benches/*.lua`, compiled into the binary.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;

use super::fleet::{self, Api};
use super::interrupt::Interrupt;
use super::{BenchArgs, audience, free_port, scratch_dir};
use crate::config::Config;

const AUTH_GET_LUA: &str = include_str!("../../benches/auth_get.lua");
const TX_POST_LUA: &str = include_str!("../../benches/tx_post.lua");

/// One endpoint's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointLoad {
    /// What was requested.
    pub endpoint: &'static str,
    /// Requests per second wrk completed.
    pub requests_per_sec: f64,
    /// 99th percentile latency, milliseconds (wrk's `--latency`).
    pub p99_ms: f64,
    /// 50th percentile latency, milliseconds.
    pub p50_ms: f64,
    /// Requests wrk completed.
    pub requests: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Socket errors wrk counted (connect, read, write, timeout).
    pub socket_errors: u64,
}

/// The API run.
#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    /// `ok` or `FAILED`.
    pub status: &'static str,
    /// Why it failed.
    pub failures: Vec<String>,
    /// wrk threads, connections and seconds per endpoint.
    pub wrk: String,
    /// Each endpoint.
    pub endpoints: Vec<EndpointLoad>,
    /// Authenticated GET requests/s over `/health` requests/s.
    pub auth_get_fraction_of_health: f64,
    /// Peak RSS of `mailing serve`, bytes (`null`: not measured; Linux only).
    pub peak_rss_bytes: Option<u64>,
    /// `API_CACHE_TTL_MS` the server ran with (inherited from the bench's environment;
    /// 0: token standings and campaign pages read from the database on every request).
    pub api_cache_ttl_ms: u64,
}

impl ApiReport {
    /// The report as a table, for a terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<28} {:>12} {:>10} {:>10} {:>10} {:>14}\n",
            "endpoint", "requests/s", "p50 ms", "p99 ms", "non-2xx", "socket errors"
        );
        for e in &self.endpoints {
            out.push_str(&format!(
                "{:<28} {:>12.0} {:>10.2} {:>10.2} {:>10} {:>14}\n",
                e.endpoint, e.requests_per_sec, e.p50_ms, e.p99_ms, e.non_2xx, e.socket_errors
            ));
        }
        out.push_str(&format!(
            "authenticated GET / health: {:.1}%   ({}; API_CACHE_TTL_MS={}; serve peak RSS {})\n",
            self.auth_get_fraction_of_health * 100.0,
            self.wrk,
            self.api_cache_ttl_ms,
            super::report::memory(self.peak_rss_bytes)
        ));
        out.push_str(&format!("status: {}\n", self.status));
        out
    }
}

fn millis(value: &str) -> Option<f64> {
    let value = value.trim();
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

/// Reads wrk's `--latency` report.
pub fn parse_wrk(endpoint: &'static str, out: &str) -> anyhow::Result<EndpointLoad> {
    let field = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    };
    let requests_per_sec = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec:\n{out}"))?;
    let p99_ms = field("99%")
        .and_then(|v| millis(&v))
        .with_context(|| format!("wrk printed no 99% latency:\n{out}"))?;
    let p50_ms = field("50%").and_then(|v| millis(&v)).unwrap_or(0.0);
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(EndpointLoad {
        endpoint,
        requests_per_sec,
        p99_ms,
        p50_ms,
        requests,
        non_2xx,
        socket_errors,
    })
}

/// Runs `mailing bench --mode api`: the report, printed by the caller.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<ApiReport> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("`wrk` is not installed (Debian/Ubuntu: `apt-get install -y wrk`)");
    }
    let mut interrupt = Interrupt::listen().context("cannot listen for SIGINT and SIGTERM")?;
    let dir = scratch_dir()?;
    let result = interrupt
        .unless_interrupted(run_in(config, &dir, args))
        .await;
    if args.keep {
        eprintln!("bench: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(
    config: &Config,
    dir: &std::path::Path,
    args: &BenchArgs,
) -> anyhow::Result<ApiReport> {
    let port = free_port()?;
    let mut env = fleet::child_env(
        dir,
        port,
        &format!("sqlite://{}/data/mailing.sqlite3", dir.display()),
        "mailing_bench_api",
    );
    // One login serves the three wrk runs: the token outlives them.
    env.insert(
        "ACCESS_TOKEN_TTL".into(),
        (3 * args.duration() + 600).to_string(),
    );
    env.insert("LOG_LEVEL".into(), args.log_level.clone());
    env.insert("RUST_LOG".into(), args.log_level.clone());
    // The bench's own setting (default 1000 ms; `API_CACHE_TTL_MS=0 mailing bench --mode
    // api` measures the page and the token check read from the database every time).
    let api_cache_ttl_ms = u64::try_from(config.api_cache_ttl.as_millis()).unwrap_or(u64::MAX);
    env.insert("API_CACHE_TTL_MS".into(), api_cache_ttl_ms.to_string());
    let mut serve = fleet::spawn("serve", dir, &env, 0)?;
    let mut api = Api::new(format!("http://127.0.0.1:{port}"))?;
    api.wait_healthy(&mut serve).await?;
    let token = api.login().await?;
    let newsletter = audience::Newsletter::new();
    let template = api
        .call(
            reqwest::Method::POST,
            "/api/v1/templates",
            Some(json!({"name": "Receipt", "subject": newsletter.subject, "html": newsletter.html, "text": newsletter.text})),
            201,
        )
        .await?;
    let template_id = template["id"].as_i64().context("the template has no id")?;
    let list = api
        .call(
            reqwest::Method::POST,
            "/api/v1/lists",
            Some(json!({"name": "Load"})),
            201,
        )
        .await?;
    // A realistic first page: 20 campaigns.
    for i in 0..20 {
        api.call(
            reqwest::Method::POST,
            "/api/v1/campaigns",
            Some(json!({"name": format!("Campaign {i}"), "template_id": template_id, "list_ids": [list["id"]], "from": "Shop <news@shop.example>", "provider": "file"})),
            201,
        )
        .await?;
    }
    let auth_lua = dir.join("auth_get.lua");
    let tx_lua = dir.join("tx_post.lua");
    std::fs::write(&auth_lua, AUTH_GET_LUA)?;
    std::fs::write(&tx_lua, TX_POST_LUA)?;
    let threads = 2;
    // wrk runs as a child the run's future owns (killed if it is dropped, as when the
    // bench is interrupted).
    let wrk = async |endpoint: &'static str, path: &str, script: Option<&std::path::Path>| {
        eprintln!("bench: wrk {endpoint} for {} s ...", args.duration());
        let mut cmd = tokio::process::Command::new("wrk");
        cmd.kill_on_drop(true);
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{}", args.connections()))
            .arg(format!("-d{}s", args.duration()))
            .arg("--latency")
            .env("MAILING_TOKEN", &token)
            .env("MAILING_TEMPLATE_ID", template_id.to_string())
            .env("MAILING_TX_PROVIDER", "file");
        if let Some(s) = script {
            cmd.arg("-s").arg(s);
        }
        cmd.arg(format!("http://127.0.0.1:{port}{path}"));
        let out = cmd.output().await.context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "wrk failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_wrk(endpoint, &text)
    };
    let health = wrk("GET /health", "/health", None).await?;
    let campaigns = wrk(
        "GET /api/v1/campaigns (auth)",
        "/api/v1/campaigns",
        Some(&auth_lua),
    )
    .await?;
    let tx = wrk("POST /api/v1/tx (auth)", "/api/v1/tx", Some(&tx_lua)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peak_rss_bytes = super::probe::peak_rss_bytes(serve.pid());
    serve.stop(Duration::from_secs(30));
    let mut failures = Vec::new();
    for e in [&health, &campaigns, &tx] {
        if e.non_2xx > 0 {
            failures.push(format!(
                "{}: {} answers were not 2xx",
                e.endpoint, e.non_2xx
            ));
        }
        if e.requests == 0 {
            failures.push(format!("{}: no request completed", e.endpoint));
        }
        // wrk leaves failed and timed-out requests out of its latencies: with any, the
        // figures describe only the requests that went well.
        if e.socket_errors > 0 {
            failures.push(format!(
                "{}: {} socket errors (connect, read, write or timeout)",
                e.endpoint, e.socket_errors
            ));
        }
    }
    Ok(ApiReport {
        status: if failures.is_empty() { "ok" } else { "FAILED" },
        failures,
        wrk: format!(
            "wrk -t{threads} -c{} -d{}s",
            args.connections(),
            args.duration()
        ),
        auth_get_fraction_of_health: campaigns.requests_per_sec / health.requests_per_sec.max(1e-9),
        endpoints: vec![health, campaigns, tx],
        peak_rss_bytes,
        api_cache_ttl_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let out = "Running 10s test @ http://127.0.0.1:1/health\n  2 threads and 64 connections\n\
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.20ms  300.00us   9.00ms   90.00%\n\
            Latency Distribution\n     50%    1.10ms\n     75%    1.30ms\n     90%    1.60ms\n     99%  850.00us\n\
            512345 requests in 10.00s, 70.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
            Non-2xx or 3xx responses: 3\nRequests/sec:  51234.50\nTransfer/sec:      7.00MB\n";
        let e = parse_wrk("x", out).unwrap();
        assert_eq!(e.requests, 512345);
        assert!((e.requests_per_sec - 51234.5).abs() < 1e-6);
        assert!((e.p99_ms - 0.85).abs() < 1e-9);
        assert!((e.p50_ms - 1.1).abs() < 1e-9);
        assert_eq!(e.non_2xx, 3);
        assert_eq!(e.socket_errors, 3);
    }
}
