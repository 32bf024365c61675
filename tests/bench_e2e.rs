//! End to end: `mailing bench`, the real binary measuring itself. Small SQLite runs
//! without a plugin and with the trivial plugin, and one Redis + PostgreSQL run with two
//! worker processes, each checked for its report's fields and its ledger check (the
//! campaign's ledger and the sink agree on every recipient). No speed is asserted:
//! figures on a shared test machine mean nothing.

mod support;

#[path = "support/examples.rs"]
#[allow(dead_code)]
mod examples;

use std::process::{Command, Output};

use serde_json::Value;
use support::{Backend, binary};

const RECIPIENTS: u64 = 2000;

/// `mailing bench` with `args`, run in `dir` (also its `TMPDIR`) with only `PATH` and
/// `env` for environment.
fn bench_command(dir: &std::path::Path, args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("bench")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TMPDIR", dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

fn bench(args: &[&str], env: &[(String, String)]) -> (Output, Value) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let output = bench_command(
        dir.path(),
        &["--recipients", &RECIPIENTS.to_string(), "--json"],
        env,
    )
    .args(args)
    .output()
    .expect("mailing bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "bench printed no JSON ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

/// The kernel's memory high-water mark is read on Linux only; elsewhere the bench
/// reports it as not measured (`null`), never as 0.
fn peak_measured(report: &Value, key: &str) {
    if cfg!(target_os = "linux") {
        positive(report, key);
    } else {
        assert!(
            report[key].is_null(),
            "{key} is {:?} in {report}",
            report[key]
        );
    }
}

fn positive(report: &Value, key: &str) {
    let v = report[key].as_f64();
    assert!(
        v.is_some_and(|v| v > 0.0),
        "{key} is {:?} in {report}",
        report[key]
    );
}

/// The fields every pipeline report has, and its ledger check.
fn check_report(output: &Output, report: &Value, plugin: &str) {
    assert!(
        output.status.success(),
        "bench failed: {report}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(
        report["failures"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    assert_eq!(report["recipients"], RECIPIENTS, "{report}");
    assert_eq!(report["plugin"], plugin, "{report}");
    for key in [
        "seconds",
        "emails_per_sec",
        "cpu_ms_per_1k",
        "render_only_per_sec",
        "render_only_after_per_sec",
        "queue_noop_jobs_per_sec",
        "queue_noop_emails_per_sec",
        "sink_accept_per_sec",
        "engine_fraction_of_slowest_limit",
        "cpu_per_message_in_renders",
    ] {
        positive(report, key);
    }
    let in_renders = |r: &Value| {
        r["cpu_ms_per_1k"].as_f64().unwrap_or(0.0)
            * r["render_only_per_sec"].as_f64().unwrap_or(0.0)
            / 1e6
    };
    assert!(
        (report["cpu_per_message_in_renders"].as_f64().unwrap_or(0.0) - in_renders(report)).abs()
            < 1e-9 * in_renders(report).max(1.0),
        "{report}"
    );
    peak_measured(report, "peak_rss_bytes");
    // Read during the send, from every process.
    for p in report["processes"].as_array().into_iter().flatten() {
        peak_measured(p, "peak_rss_at_half_bytes");
        peak_measured(p, "peak_rss_bytes");
        // A number (an idle process may have used less than a clock tick), not null.
        assert!(p["cpu_ms"].is_u64(), "{report}");
    }
    if plugin == "none" {
        assert!(report["plugin_only_per_sec"].is_null(), "{report}");
    } else {
        positive(report, "plugin_only_per_sec");
    }
    assert!(
        report["slowest_limit"]
            .as_str()
            .is_some_and(|s| s.ends_with("_per_sec")),
        "{report}"
    );
    let stages = report["stages"].as_array().expect("stages");
    assert_eq!(stages.len(), 2, "{report}");
    for s in stages {
        assert!(s["stage"] == "plan" || s["stage"] == "send", "{s}");
        // Read from every process's /metrics, a fleet's workers included.
        assert!(s["batches"].as_u64().is_some_and(|b| b > 0), "{s}");
        assert!(
            s["p50_ms"].as_f64().is_some_and(|v| v > 0.0)
                && s["p99_ms"].as_f64().is_some_and(|v| v > 0.0),
            "{s}"
        );
    }
    // The send jobs' steps, in the order a batch runs them; `personalize` only with a
    // plugin. Every batch that delivered also recorded and moved the window, and a step
    // cannot end more often than send jobs ran.
    let send_jobs = stages
        .iter()
        .find(|s| s["stage"] == "send")
        .and_then(|s| s["batches"].as_u64())
        .expect("send jobs");
    let steps = report["send_steps"].as_array().expect("send_steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    let expected: &[&str] = if plugin == "none" {
        &["claim", "deliver", "record", "window"]
    } else {
        &["claim", "personalize", "deliver", "record", "window"]
    };
    assert_eq!(names, expected, "{report}");
    let ended = |step: &str| {
        steps
            .iter()
            .find(|s| s["step"] == step)
            .and_then(|s| s["batches"].as_u64())
            .unwrap_or(0)
    };
    assert!(ended("deliver") > 0, "{report}");
    assert_eq!(ended("deliver"), ended("record"), "{report}");
    assert_eq!(ended("record"), ended("window"), "{report}");
    assert!(
        ended("claim") >= ended("deliver") && ended("claim") <= send_jobs,
        "{report}"
    );
    for s in steps {
        assert!(
            s["total_seconds"].as_f64().is_some_and(|t| t > 0.0)
                && s["p50_ms"].as_f64().is_some_and(|v| v > 0.0),
            "{s}"
        );
    }
    let shares: f64 = steps.iter().filter_map(|s| s["share"].as_f64()).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{report}");
    let ledger = &report["ledger"];
    assert_eq!(ledger["campaign_status"], "done", "{report}");
    assert_eq!(ledger["total"], RECIPIENTS, "{report}");
    assert_eq!(ledger["sent"], RECIPIENTS, "{report}");
    assert_eq!(ledger["failed"], 0, "{report}");
    assert_eq!(ledger["sink_distinct"], RECIPIENTS, "{report}");
    // Each exactly once: a run with a message sent twice is FAILED, not fast.
    assert_eq!(ledger["sink_accepted"], RECIPIENTS, "{report}");
    assert!(ledger["sink_replayed"].is_u64(), "{report}");
}

#[test]
fn sqlite_without_a_plugin_reports_figures_that_match_the_ledger() {
    let (output, report) = bench(&["--backend", "sqlite", "--plugin", "none"], &[]);
    check_report(&output, &report, "none");
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["provider"], "sink");
    assert_eq!(
        report["processes"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(report["processes"][0]["role"], "serve", "{report}");
    // The serve process ran both stages, so its histogram has them.
    let send = &report["stages"][1];
    assert!(
        send["batches"]
            .as_u64()
            .is_some_and(|b| b >= RECIPIENTS / 500),
        "{report}"
    );
    assert!(send["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "{report}");
}

#[test]
fn sqlite_with_the_trivial_plugin_reports_the_plugin_limit() {
    let dist = examples::example_plugin("trivial");
    let dir = dist.parent().expect("dist").display().to_string();
    let (output, report) = bench(
        &[
            "--backend",
            "sqlite",
            "--plugin",
            "trivial",
            "--plugins-dir",
            &dir,
        ],
        &[],
    );
    check_report(&output, &report, "trivial");
}

#[test]
fn the_file_provider_is_counted_by_its_outbox_past_the_access_tokens_lifetime() {
    // Access tokens live one second here. The campaign is first looked at 0.5 s after
    // the send starts, past the token's half-life whatever the machine's speed: the
    // bench must log in again, and the run must still end with its ledger check.
    let (output, report) = bench(
        &[
            "--backend",
            "sqlite",
            "--plugin",
            "none",
            "--provider",
            "file",
        ],
        &[("ACCESS_TOKEN_TTL".into(), "1".into())],
    );
    // check_report holds the outbox's .eml files to the ledger (sink_distinct).
    check_report(&output, &report, "none");
    assert_eq!(report["provider"], "file", "{report}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bench: logged in again"),
        "no new login in:\n{stderr}"
    );
}

/// The names in `dir`.
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The ids of `parent`'s child processes that have `word` as one of their arguments.
fn children_running(parent: u32, word: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The parent's id is the fourth field of `stat`, after the command in
            // parentheses (which may itself hold spaces).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent) && cmdline.split(|b| *b == 0).any(|arg| arg == word.as_bytes())
        })
        .collect()
}

/// Runs `mailing bench` with `args` (in a temporary directory of its own, which is also
/// its `TMPDIR`) and calls `at_send` with the bench's process id as soon as the bench
/// says it sends the campaign. Returns its output, everything it wrote to stderr, what
/// `at_send` returned (None if the bench never got there) and the temporary directory.
fn bench_acting_at_send<T: Send + 'static>(
    args: &[&str],
    env: &[(String, String)],
    at_send: impl FnOnce(u32) -> T + Send + 'static,
) -> (Output, String, Option<T>, tempfile::TempDir) {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut bench = bench_command(dir.path(), args, env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mailing bench starts");
    let stderr = bench.stderr.take().expect("stderr");
    let bench_pid = bench.id();
    let watcher = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut at_send = Some(at_send);
        let mut acted = None;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("sending campaign")
                && let Some(act) = at_send.take()
            {
                acted = Some(act(bench_pid));
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        (acted, seen)
    });
    let output = bench.wait_with_output().expect("mailing bench ends");
    let (acted, stderr) = watcher.join().expect("the stderr reader");
    (output, stderr, acted, dir)
}

/// Sends `signal` (`-STOP`, `-INT`, ...) to each process of `pids`.
fn signal(signal: &str, pids: &[u32]) {
    for pid in pids {
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

#[test]
fn an_engine_that_stops_is_reported_as_stalled_with_its_log() {
    // `mailing serve` is stopped (SIGSTOP) as the campaign is sent: nothing moves and
    // its API never answers. The bench must say so after --stall-seconds, with the
    // process's log, instead of waiting for the run's time limit (over 3 minutes).
    let (output, stderr, stopped, _dir) = bench_acting_at_send(
        &["--recipients", "2000", "--json", "--stall-seconds", "3"],
        &[],
        |bench| {
            let serve = children_running(bench, "serve");
            signal("-STOP", &serve);
            serve
        },
    );
    let stopped = stopped.unwrap_or_default();
    assert_eq!(
        stopped.len(),
        1,
        "one `mailing serve` to stop; stderr:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\nstderr:\n{stderr}"));
    assert!(!output.status.success(), "{report}");
    assert_eq!(report["status"], "FAILED", "{report}");
    let failures: Vec<&str> = report["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let stall = failures
        .iter()
        .find(|f| f.starts_with("the run stalled: "))
        .unwrap_or_else(|| panic!("no stall among the failures: {failures:#?}"));
    assert!(stall.contains(" for 3 s ("), "{stall}");
    assert!(stall.contains("`mailing serve`'s log ends:"), "{stall}");
    // Liquid is not measured again after a stalled run.
    assert!(report["render_only_after_per_sec"].is_null(), "{report}");
    assert!(
        stderr.contains("the bench run FAILED: the run stalled"),
        "{stderr}"
    );
    // The stopped process was continued and ended, not left behind.
    assert!(
        !std::path::Path::new(&format!("/proc/{}", stopped[0])).exists(),
        "`mailing serve` ({}) is still there",
        stopped[0]
    );
}

/// Interrupts a bench as it sends: the bench must end at once, saying so, with its
/// engine processes (those of `roles`) gone and its scratch directory removed. Returns
/// the bench's process id.
fn interrupt_as_it_sends(
    args: &[&str],
    env: &[(String, String)],
    how: &'static str,
    roles: &'static [&'static str],
) -> u32 {
    let (output, stderr, acted, tmp) = bench_acting_at_send(args, env, move |bench| {
        let mut children: Vec<u32> = roles
            .iter()
            .flat_map(|role| children_running(bench, role))
            .collect();
        children.sort_unstable();
        children.dedup();
        signal(how, &[bench]);
        (bench, children)
    });
    let (bench, children) =
        acted.unwrap_or_else(|| panic!("the bench never sent; stderr:\n{stderr}"));
    assert_eq!(
        children.len(),
        roles.len(),
        "{children:?}; stderr:\n{stderr}"
    );
    assert!(!output.status.success(), "stderr:\n{stderr}");
    let name = how.trim_start_matches('-');
    assert!(
        stderr.contains(&format!("the bench was interrupted by SIG{name}")),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "an interrupted run reports nothing: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    for pid in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "engine process {pid} is still there; stderr:\n{stderr}"
        );
    }
    let left: Vec<_> = entries(tmp.path())
        .into_iter()
        .filter(|n| n.starts_with("mailing-bench-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    bench
}

#[test]
fn an_interrupted_run_stops_its_engine_and_removes_its_directory() {
    interrupt_as_it_sends(
        &["--recipients", "20000", "--plugin", "none"],
        &[],
        "-INT",
        &["serve"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_fleet_run_drops_its_database_and_queue_keys() {
    use sqlx::Connection as _;
    let Some(backend) = Backend::fleet("bench interrupted").await else {
        return;
    };
    let env = backend.env.clone();
    let bench = tokio::task::spawn_blocking(move || {
        interrupt_as_it_sends(
            &[
                "--recipients",
                "20000",
                "--plugin",
                "none",
                "--backend",
                "redis",
                "--workers",
                "2",
            ],
            &env,
            "-TERM",
            &["api", "worker", "worker"],
        )
    })
    .await;
    let (admin_url, _) = backend.pg_database.clone().expect("a PostgreSQL database");
    let redis_url = backend
        .env
        .iter()
        .find(|(k, _)| k == "REDIS_URL")
        .map(|(_, v)| v.clone())
        .expect("REDIS_URL");
    backend.cleanup().await;
    let bench = bench.expect("the bench thread");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("PostgreSQL");
    let databases: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE $1")
            .bind(format!("mailing_bench_{bench}_%"))
            .fetch_all(&mut admin)
            .await
            .expect("the databases");
    let _ = admin.close().await;
    assert!(databases.is_empty(), "left behind: {databases:?}");
    support::assert_no_queue_left(&redis_url, &format!("mailing_bench_{bench}_")).await;
}

#[test]
fn a_missing_plugin_says_how_to_build_it() {
    let empty = tempfile::tempdir().expect("a temp dir");
    let output = Command::new(binary())
        .args([
            "bench",
            "--recipients",
            "10",
            "--plugin",
            "greeting",
            "--plugins-dir",
        ])
        .arg(empty.path())
        .current_dir(empty.path())
        .output()
        .expect("mailing bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("plugins/examples/build.sh"), "{stderr}");
    assert!(output.stdout.is_empty(), "no --json, no JSON");

    // With --json a run that ends before its report still prints one object.
    let output = bench_command(
        empty.path(),
        &[
            "--recipients",
            "10",
            "--plugin",
            "greeting",
            "--json",
            "--plugins-dir",
        ],
        &[],
    )
    .arg(empty.path())
    .output()
    .expect("mailing bench runs");
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object on stdout");
    assert_eq!(report["status"], "FAILED", "{report}");
    assert!(
        report["failures"][0]
            .as_str()
            .is_some_and(|f| f.contains("plugins/examples/build.sh")),
        "{report}"
    );
}

#[test]
fn options_of_the_other_mode_are_refused_before_anything_starts() {
    let empty = tempfile::tempdir().expect("a temp dir");
    for (line, says) in [
        (
            &["--mode", "api", "--backend", "redis"][..],
            "--backend does not apply to --mode api",
        ),
        (
            &["--recipients", "10", "--duration", "5"],
            "--duration does not apply to --mode pipeline",
        ),
        (
            &["--recipients", "0"],
            "invalid value '0' for '--recipients",
        ),
    ] {
        let output = bench_command(empty.path(), line, &[])
            .output()
            .expect("mailing bench runs");
        assert!(!output.status.success(), "{line:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{line:?}: {stderr}");
    }
    // Refused before a directory, a database or a process was made.
    let made = entries(empty.path());
    assert!(made.is_empty(), "{made:?}");
}

#[test]
fn the_api_load_reports_three_endpoints_under_wrk() {
    if Command::new("wrk").arg("--version").output().is_err() {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !in_ci,
            "wrk is required under CI=true (apt-get install wrk)"
        );
        eprintln!("SKIPPED the_api_load_reports_three_endpoints_under_wrk: wrk is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let output = bench_command(
        dir.path(),
        &[
            "--mode",
            "api",
            "--duration",
            "1",
            "--connections",
            "4",
            "--json",
        ],
        &[],
    )
    .output()
    .expect("mailing bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["wrk"], "wrk -t2 -c4 -d1s", "{report}");
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    let names: Vec<&str> = endpoints
        .iter()
        .filter_map(|e| e["endpoint"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "GET /health",
            "GET /api/v1/campaigns (auth)",
            "POST /api/v1/tx (auth)"
        ],
        "{report}"
    );
    for e in endpoints {
        assert!(e["requests"].as_u64().is_some_and(|n| n > 0), "{e}");
        assert_eq!(e["non_2xx"], 0, "{e}");
        assert_eq!(e["socket_errors"], 0, "{e}");
        assert!(e["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "{e}");
    }
    let fraction = report["auth_get_fraction_of_health"]
        .as_f64()
        .unwrap_or(0.0);
    let expected = endpoints[1]["requests_per_sec"].as_f64().unwrap_or(0.0)
        / endpoints[0]["requests_per_sec"].as_f64().unwrap_or(1.0);
    assert!(
        (fraction - expected).abs() < 1e-9 && fraction > 0.0,
        "{report}"
    );
    peak_measured(&report, "peak_rss_bytes");
    // Its directory (logs, database) is gone.
    let left = entries(dir.path());
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_and_postgres_with_two_workers_report_figures_that_match_the_ledger() {
    let Some(backend) = Backend::fleet("bench redis").await else {
        return;
    };
    let env = backend.env.clone();
    let (output, report) = tokio::task::spawn_blocking(move || {
        bench(
            &["--backend", "redis", "--workers", "2", "--plugin", "none"],
            &env,
        )
    })
    .await
    .expect("the bench thread");
    backend.cleanup().await;
    check_report(&output, &report, "none");
    assert_eq!(report["backend"], "redis");
    let roles: Vec<&str> = report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["role"].as_str())
        .collect();
    assert_eq!(roles, ["api", "worker", "worker"], "{report}");
    // Only the workers run batches, so these come from their /metrics.
    let send = &report["stages"][1];
    assert_eq!(send["stage"], "send", "{report}");
    assert!(
        send["batches"]
            .as_u64()
            .is_some_and(|b| b >= RECIPIENTS / 500),
        "{report}"
    );
}
