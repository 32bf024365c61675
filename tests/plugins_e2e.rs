//! End to end: WebAssembly personalization plugins through the real binary. Uploads are
//! validated (nothing invalid is stored); a campaign's chain [segment filter, locale
//! greeting] over 10,000 recipients skips with the plugin's reason and greets everyone
//! else; each hostile plugin fails only its own campaign's recipients, with a clear
//! reason, while a campaign beside it completes; `mailing plugin check` dry-runs a file.

mod support;

#[path = "support/examples.rs"]
mod examples;

use std::collections::HashMap;
use std::time::Duration;

use examples::{example_bytes, example_plugin};
use mail_parser::MessageParser;
use serde_json::{Value, json};
use support::{Backend, Server, send_campaign};

async fn upload(
    server: &Server,
    token: &str,
    name: &str,
    version: &str,
    bytes: Vec<u8>,
    content_type: &str,
) -> (u16, Value) {
    let res = server
        .http
        .post(format!(
            "{}/api/v1/plugins?name={name}&version={version}",
            server.base
        ))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload sent");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn register(server: &Server, token: &str, example: &str) -> i64 {
    let (status, body) = upload(
        server,
        token,
        example,
        "1.0.0",
        example_bytes(example),
        "application/wasm",
    )
    .await;
    assert_eq!(status, 201, "{example}: {body}");
    assert_eq!(body["sha256"].as_str().map(str::len), Some(64), "{body}");
    body["id"].as_i64().expect("plugin id")
}

/// A list of `n` subscribers with `plan` (every fourth is `free`) and `lang` attributes.
async fn seed_audience(server: &Server, token: &str, n: usize) -> i64 {
    let (status, list) = server
        .request(
            "POST",
            "/api/v1/lists",
            Some(token),
            Some(json!({"name": "Audience"})),
        )
        .await;
    assert_eq!(status, 201, "{list}");
    let id = list["id"].as_i64().expect("list id");
    let langs = ["en", "fr", "de", "es"];
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                json!({
                    "email": format!("user{i}@example.com"),
                    "name": format!("Name{i}"),
                    "attributes": {"plan": if i % 4 == 0 { "free" } else { "pro" }, "lang": langs[i % 4]}
                })
            })
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
    }
    id
}

async fn campaign(server: &Server, token: &str, list: i64, name: &str, plugins: Value) -> i64 {
    let (status, template) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(token),
            Some(json!({
                "name": name,
                "subject": "News for {{ subscriber.name }}",
                "html": "<p>{{ greeting }}!</p><p>{{ subscriber.email }}</p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>",
            })),
        )
        .await;
    assert_eq!(status, 201, "{template}");
    let (status, body) = server
        .request(
            "POST",
            "/api/v1/campaigns",
            Some(token),
            Some(json!({
                "name": name,
                "template_id": template["id"],
                "list_ids": [list],
                "from": "Shop <news@shop.example>",
                "provider": "file",
                "plugins": plugins,
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().expect("campaign id")
}

async fn deliveries(server: &Server, token: &str, id: i64, status: &str) -> Vec<Value> {
    let (code, body) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{id}/deliveries?status={status}&limit=500"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_validated_and_nothing_invalid_is_stored() {
    let server = Server::start(
        "serve",
        &Backend::embedded(),
        // Small enough that the oversized body below fits the loopback socket buffers:
        // the server answers 413 without reading it, and a bigger body could be cut off
        // mid-write, before the client reads the answer.
        &[("PLUGIN_MAX_SIZE_KB", "64".into())],
    )
    .await;
    let token = server.login().await;
    let refusals = [
        (
            b"this is not wasm".to_vec(),
            "application/wasm",
            422,
            "not a WebAssembly file",
        ),
        (
            b"\0asm\x01\0\0\0".to_vec(),
            "application/wasm",
            422,
            "core WebAssembly module",
        ),
        (
            example_bytes("other-world"),
            "application/wasm",
            422,
            "mailing:plugin/personalize@0.1.0",
        ),
        (
            vec![0u8; 100 << 10],
            "application/wasm",
            413,
            "larger than this route accepts",
        ),
        (
            example_bytes("trivial"),
            "application/json",
            415,
            "application/wasm",
        ),
    ];
    for (bytes, content_type, status, words) in refusals {
        let (code, body) = upload(&server, &token, "bad", "1.0.0", bytes, content_type).await;
        assert_eq!(code, status, "{body}");
        assert_eq!(body["status"], status, "problem+json: {body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(words),
            "{words}: {body}"
        );
    }
    let (code, body) = upload(
        &server,
        &token,
        "",
        "1.0.0",
        example_bytes("trivial"),
        "application/wasm",
    )
    .await;
    assert_eq!(code, 422, "{body}");
    let (_, list) = server
        .request("GET", "/api/v1/plugins", Some(&token), None)
        .await;
    assert_eq!(list["items"], json!([]), "nothing was stored: {list}");
    // Editors use plugins; only admins upload them.
    let (code, _) = server
        .request(
            "POST",
            "/api/v1/users",
            Some(&token),
            Some(json!({"username": "ed", "password": "editor-password-123", "role": "editor"})),
        )
        .await;
    assert_eq!(code, 201);
    let (_, login) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "ed", "password": "editor-password-123"})),
        )
        .await;
    let editor = login["access_token"].as_str().expect("token").to_owned();
    let (code, body) = upload(
        &server,
        &editor,
        "x",
        "1.0.0",
        example_bytes("trivial"),
        "application/wasm",
    )
    .await;
    assert_eq!(code, 403, "{body}");

    // The same upload as a multipart form: the `component` part, name and version fields.
    let boundary = "mailing-test-boundary-7d3f";
    let mut form = Vec::new();
    for (field, value) in [("name", "trivial-form"), ("version", "0.1.0")] {
        form.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"trivial.wasm\"\r\n\
             Content-Type: application/wasm\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(&example_bytes("trivial"));
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let res = server
        .http
        .post(format!("{}/api/v1/plugins", server.base))
        .bearer_auth(&token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .expect("sent");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "trivial-form");

    let id = register(&server, &token, "trivial").await;
    let (code, body) = upload(
        &server,
        &token,
        "trivial",
        "1.0.0",
        example_bytes("trivial"),
        "application/wasm",
    )
    .await;
    assert_eq!(code, 409, "the same name and version again: {body}");
    let (code, shown) = server
        .request("GET", &format!("/api/v1/plugins/{id}"), Some(&token), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(shown["name"], "trivial");

    // A campaign naming a plugin that does not exist is refused; one that exists holds
    // the plugin until it is deleted.
    let list = seed_audience(&server, &token, 3).await;
    let (status, template) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(&token),
            Some(json!({"name": "t", "subject": "s", "html": "<p>x</p>"})),
        )
        .await;
    assert_eq!(status, 201);
    let (code, body) = server
        .request(
            "POST",
            "/api/v1/campaigns",
            Some(&token),
            Some(json!({
                "name": "c", "template_id": template["id"], "list_ids": [list],
                "from": "news@shop.example", "plugins": [{"plugin_id": 999}]
            })),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("no plugin has id 999"), "{body}");
    let c = campaign(&server, &token, list, "holds", json!([{"plugin_id": id}])).await;
    let (code, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/plugins/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(code, 409, "in use by a draft campaign: {body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&c.to_string()),
        "{body}"
    );
    let (code, _) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{c}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(code, 202);
    let (code, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/plugins/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(code, 204, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_then_greeting_chain_over_ten_thousand_recipients() {
    const N: usize = 10_000;
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let filter = register(&server, &token, "segment-filter").await;
    let greeting = register(&server, &token, "greeting").await;
    let list = seed_audience(&server, &token, N).await;
    let id = campaign(
        &server,
        &token,
        list,
        "chain",
        json!([
            {"plugin_id": filter, "config": {"attribute": "plan", "op": "eq", "value": "pro"}},
            {"plugin_id": greeting}
        ]),
    )
    .await;
    send_campaign(&server, &token, id).await;
    let done = server
        .wait_campaign(&token, id, "done", Duration::from_secs(600))
        .await;
    assert_eq!(done["stats"]["skipped"], N / 4, "{done}");
    assert_eq!(done["stats"]["sent"], N - N / 4, "{done}");
    assert_eq!(done["stats"]["failed"], 0, "{done}");
    // The collection shows the same figures (it counts a whole page in one query).
    let (_, page) = server
        .request("GET", "/api/v1/campaigns", Some(&token), None)
        .await;
    let listed = page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|c| c["id"] == id))
        .cloned()
        .expect("the campaign is listed");
    assert_eq!(listed["stats"], done["stats"], "{listed}");
    assert_eq!(listed["list_ids"], json!([list]), "{listed}");

    for row in deliveries(&server, &token, id, "skipped").await {
        let n: usize = row["email"]
            .as_str()
            .and_then(|e| e.strip_prefix("user"))
            .and_then(|e| e.strip_suffix("@example.com"))
            .and_then(|n| n.parse().ok())
            .expect("a seeded address");
        assert_eq!(n % 4, 0, "only free-plan recipients are skipped: {row}");
        let reason = row["last_error"].as_str().unwrap_or_default();
        assert!(reason.contains("segment-filter@1.0.0"), "{reason}");
        assert!(reason.contains("plan"), "{reason}");
    }

    let expected = HashMap::from([(1, "Bonjour"), (2, "Hallo"), (3, "Hola")]);
    let mut checked = 0;
    for entry in std::fs::read_dir(server.outbox())
        .expect("outbox")
        .flatten()
    {
        let raw = std::fs::read(entry.path()).expect("read");
        let msg = MessageParser::default().parse(&raw).expect("a message");
        let to = msg
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .expect("To");
        let n: usize = to
            .strip_prefix("user")
            .and_then(|e| e.strip_suffix("@example.com"))
            .and_then(|n| n.parse().ok())
            .expect("a seeded address");
        let html = msg.body_html(0).expect("html");
        let word = expected
            .get(&(n % 4))
            .expect("no free-plan recipient is sent to");
        assert!(
            html.contains(&format!("<p>{word} Name{n}!</p>")),
            "{n}: {html}"
        );
        checked += 1;
    }
    assert_eq!(checked, N - N / 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_only_their_own_recipients() {
    // Ten batches per campaign: with at most WORKER_CONCURRENCY (4) in flight, the last
    // batches start after at least three have failed, so the breaker must have tripped.
    const N: usize = 200;
    let server = Server::start(
        "serve",
        &Backend::embedded(),
        &[
            ("BATCH_SIZE", "20".into()),
            ("PLUGIN_DEADLINE_MS", "200".into()),
            ("PLUGIN_MEMORY_MB", "32".into()),
            ("PLUGIN_BREAKER_THRESHOLD", "3".into()),
            ("FAILURE_PAUSE_RATIO", "0".into()),
        ],
    )
    .await;
    let token = server.login().await;
    let list = seed_audience(&server, &token, N).await;
    let greeting = register(&server, &token, "greeting").await;
    let cases = [
        ("hostile-loop", "fail", "fuel budget"),
        ("hostile-memory", "fail", "memory cap of 33554432 bytes"),
        ("hostile-recursion", "fail", "overflowed its stack"),
        ("hostile-trap", "skip", "trapped"),
        (
            "hostile-huge-output",
            "fail",
            "plugin hostile-huge-output@1.0.0",
        ),
    ];
    let mut campaigns = Vec::new();
    for (name, policy, words) in cases {
        let plugin = register(&server, &token, name).await;
        let id = campaign(
            &server,
            &token,
            list,
            name,
            json!([{"plugin_id": plugin, "on_error": policy}]),
        )
        .await;
        campaigns.push((id, name, policy, words));
    }
    let good = campaign(
        &server,
        &token,
        list,
        "good",
        json!([{"plugin_id": greeting}]),
    )
    .await;
    for (id, ..) in &campaigns {
        send_campaign(&server, &token, *id).await;
    }
    send_campaign(&server, &token, good).await;

    let done = server
        .wait_campaign(&token, good, "done", Duration::from_secs(300))
        .await;
    assert_eq!(
        done["stats"]["sent"], N,
        "the good campaign is untouched: {done}"
    );
    for (id, name, policy, words) in campaigns {
        let done = server
            .wait_campaign(&token, id, "done", Duration::from_secs(300))
            .await;
        let outcome = if policy == "fail" {
            "failed"
        } else {
            "skipped"
        };
        assert_eq!(done["stats"][outcome], N, "{name}: {done}");
        assert_eq!(done["stats"]["sent"], 0, "{name}: {done}");
        let rows = deliveries(&server, &token, id, outcome).await;
        assert_eq!(rows.len(), N);
        let reasons: Vec<&str> = rows
            .iter()
            .filter_map(|r| r["last_error"].as_str())
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains(words)),
            "{name}: no reason mentions {words:?}: {reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("switched off for this campaign by the circuit breaker")),
            "{name}: {reasons:?}"
        );
    }
    let logs = server.logs();
    assert!(
        logs.contains("Plugin switched off for this campaign"),
        "the breaker says so"
    );

    // The worker's memory stayed bounded: the memory bomb's instance was capped at
    // 32 MiB, and instances are pooled, never leaked.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    assert!(rss_kib < 512 * 1024, "RSS {rss_kib} KiB");
}

#[test]
fn plugin_check_dry_runs_a_component_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = |args: &[&str]| {
        std::process::Command::new(support::binary())
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("runs")
    };
    let greeting = example_plugin("greeting");
    let out = run(&[
        "plugin",
        "check",
        greeting.to_str().expect("utf-8"),
        "--sample",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a valid plugin component"), "{stdout}");
    assert!(stdout.contains("kept 5, skipped 0"), "{stdout}");
    assert!(stdout.contains("greeting"), "{stdout}");

    let filter = example_plugin("segment-filter");
    let out = run(&[
        "plugin",
        "check",
        filter.to_str().expect("utf-8"),
        "--sample",
        "6",
        "--config",
        r#"{"attribute":"plan","op":"eq","value":"pro"}"#,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("kept 2, skipped 4"), "{stdout}");

    let out = run(&["plugin", "check", filter.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused its configuration"));

    let other = example_plugin("other-world");
    let out = run(&["plugin", "check", other.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mailing:plugin/personalize@0.1.0"),
        "{stderr}"
    );
}
