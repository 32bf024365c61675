//! End to end: the delivery pipeline under failure. Workers killed with SIGKILL, a
//! provider that throttles, a fleet-wide rate limit, campaign control, and recipients
//! the provider refuses. The provider is a local server that behaves like Resend
//! (Idempotency-Key honoured), so "exactly once" is what it received.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::resend_mock::ResendMock;
use support::{Backend, Server, create_campaign, seed_list};

fn assert_each_once(deliveries: &HashMap<String, u32>, n: usize) {
    let doubled: Vec<_> = deliveries.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        doubled.is_empty(),
        "recipients delivered more than once: {doubled:?}"
    );
    assert_eq!(deliveries.len(), n, "every recipient delivered");
}

fn with(
    env: Vec<(&'static str, String)>,
    more: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = env;
    env.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_campaign_delivers_each_recipient_once_and_isolates_a_refused_address() {
    let mock = ResendMock::start().await;
    mock.state
        .lock()
        .expect("state")
        .reject
        .push("user7@".into());
    let server = Server::start("serve", &Backend::embedded(), &mock.env()).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 1000).await;
    let campaign = create_campaign(&server, &token, list, "resend").await;
    support::send_campaign(&server, &token, campaign).await;
    let done = server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(120))
        .await;
    assert_eq!(done["stats"]["sent"], 999, "{done}");
    assert_eq!(done["stats"]["failed"], 1, "{done}");
    let mut deliveries = mock.deliveries();
    assert!(!deliveries.contains_key("user7@example.com"));
    deliveries.insert("user7@example.com".into(), 1);
    assert_each_once(&deliveries, 1000);
    let keys = mock.snapshot(|s| s.keys.len());
    assert!(
        keys >= 10,
        "requests carry up to 100 messages, each with an Idempotency-Key ({keys} keys)"
    );

    // The failed recipient is listed with its reason, by the API and the CLI...
    let (status, failed) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}/deliveries?status=failed"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["items"][0]["email"], "user7@example.com");
    assert!(
        failed["items"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("Invalid `to`"),
        "{failed}"
    );
    let out = std::process::Command::new(support::binary())
        .args([
            "campaign",
            "deliveries",
            &campaign.to_string(),
            "--status",
            "failed",
        ])
        .current_dir(&server.dir)
        .env("DATA_DIR", server.dir.join("data"))
        .env("LOG_LEVEL", "warn")
        .output()
        .expect("the CLI runs");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains("user7@example.com\tfailed"),
        "{listing}"
    );

    // ...and, once the provider accepts the address, retried to completion.
    mock.state.lock().expect("state").reject.clear();
    let (status, body) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/retry-failed"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, body["retried"].clone()), (202, json!(1)), "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, c) = server
            .request(
                "GET",
                &format!("/api/v1/campaigns/{campaign}"),
                Some(&token),
                None,
            )
            .await;
        if c["status"] == "done" && c["stats"]["sent"] == 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried recipient was not sent: {c}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(mock.deliveries().get("user7@example.com"), Some(&1));

    // The compiled-template cache served the batches and can be emptied.
    let (_, stats) = server
        .request("GET", "/admin/cache/stats", Some(&token), None)
        .await;
    assert!(stats["hits"].as_u64().unwrap_or(0) >= 1, "{stats}");
    let misses = stats["misses"].as_u64().unwrap_or(0);
    assert!(
        (1..=4).contains(&misses),
        "compiled once per concurrently starting batch at most: {stats}"
    );
    assert_eq!(stats["size"], 1, "{stats}");
    let (status, cleared) = server
        .request("POST", "/admin/cache/clear", Some(&token), None)
        .await;
    assert_eq!((status, cleared["cleared"].clone()), (200, json!(1)));
    let (_, stats) = server
        .request("GET", "/admin/cache/stats", Some(&token), None)
        .await;
    assert_eq!(stats["size"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_with_sigkill_mid_campaign_lose_and_double_nothing() {
    let Some(backend) = Backend::fleet("sigkill fleet").await else {
        return;
    };
    let mock = ResendMock::start().await;
    let env = with(
        mock.env(),
        &[
            ("RESEND_RATE_LIMIT", "2500"),
            ("CLAIM_LEASE_SECS", "2"),
            ("BATCH_SIZE", "250"),
            ("WORKER_CONCURRENCY", "2"),
        ],
    );
    let api = Server::start("api", &backend, &env).await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Server::start_in(&api.dir, "worker", &backend, &env).await);
    }
    let token = api.login().await;
    let n = 20_000;
    let list = seed_list(&api, &token, n).await;
    let campaign = create_campaign(&api, &token, list, "resend").await;
    support::send_campaign(&api, &token, campaign).await;
    for pause in [1500, 2500] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let delivered = mock.deliveries().len();
        assert!(
            delivered < n,
            "the kill lands mid-campaign ({delivered} delivered)"
        );
        eprintln!("killing a worker with {delivered} of {n} delivered");
        workers[0].signal("KILL");
        workers[0]
            .wait_exit(Duration::from_secs(5))
            .expect("the worker died");
        workers[0] = Server::start_in(&api.dir, "worker", &backend, &env).await;
    }
    let done = api
        .wait_campaign(&token, campaign, "done", Duration::from_secs(240))
        .await;
    assert_eq!(done["stats"]["sent"], n, "{done}");
    assert_each_once(&mock.deliveries(), n);
    let replays = mock.snapshot(|s| s.replays);
    eprintln!("requests replayed with a known Idempotency-Key after the kills: {replays}");
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_server_killed_and_restarted_mid_campaign_sends_each_recipient_once() {
    let mock = ResendMock::start().await;
    let env = with(
        mock.env(),
        &[
            ("RESEND_RATE_LIMIT", "4000"),
            ("CLAIM_LEASE_SECS", "2"),
            ("BATCH_SIZE", "250"),
        ],
    );
    let backend = Backend::embedded();
    let mut server = Server::start("serve", &backend, &env).await;
    let token = server.login().await;
    let n = 20_000;
    let list = seed_list(&server, &token, n).await;
    let campaign = create_campaign(&server, &token, list, "resend").await;
    support::send_campaign(&server, &token, campaign).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("KILL");
    server
        .wait_exit(Duration::from_secs(5))
        .expect("the server died");
    let before = mock.deliveries().len();
    assert!(
        before < n,
        "the kill landed mid-campaign ({before} delivered)"
    );
    let restarted = Server::start_in(&server.dir, "serve", &backend, &env).await;
    let token = restarted.login().await;
    let done = restarted
        .wait_campaign(&token, campaign, "done", Duration::from_secs(180))
        .await;
    assert_eq!(done["stats"]["sent"], n, "{done}");
    assert_each_once(&mock.deliveries(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_provider_loses_nothing_and_a_fleet_wide_rate_limit_holds() {
    let Some(backend) = Backend::fleet("rate limit fleet").await else {
        return;
    };
    let mock = ResendMock::start().await;
    let rate = 400.0;
    let env = with(
        mock.env(),
        &[("RESEND_RATE_LIMIT", "400"), ("BATCH_SIZE", "200")],
    );
    let api = Server::start("api", &backend, &env).await;
    let _workers = [
        Server::start_in(&api.dir, "worker", &backend, &env).await,
        Server::start_in(&api.dir, "worker", &backend, &env).await,
        Server::start_in(&api.dir, "worker", &backend, &env).await,
    ];
    let token = api.login().await;
    let n = 4000;
    let list = seed_list(&api, &token, n).await;
    let campaign = create_campaign(&api, &token, list, "resend").await;
    mock.throttle_for(Duration::from_secs(2));
    support::send_campaign(&api, &token, campaign).await;
    let done = api
        .wait_campaign(&token, campaign, "done", Duration::from_secs(180))
        .await;
    assert_eq!(done["stats"]["sent"], n, "{done}");
    assert_each_once(&mock.deliveries(), n);
    assert!(
        mock.snapshot(|s| s.throttled) > 0,
        "the provider did throttle"
    );

    // Skip the first second's burst, then measure the steady rate across three workers.
    let mut times = mock.snapshot(|s| s.accepted_at.clone());
    times.sort();
    let skip = rate as usize;
    let span = times[n - 1].duration_since(times[skip]).as_secs_f64();
    let measured = (n - 1 - skip) as f64 / span;
    eprintln!("fleet-wide rate: limit {rate}/s, measured {measured:.1}/s over {span:.2} s");
    assert!(
        (measured - rate).abs() <= rate * 0.10,
        "measured {measured:.1}/s against a limit of {rate}/s"
    );
    backend.cleanup().await;
}

/// Waits until a running campaign has sent something (but not everything).
async fn wait_for_progress(server: &Server, token: &str, campaign: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, c) = server
            .request(
                "GET",
                &format!("/api/v1/campaigns/{campaign}"),
                Some(token),
                None,
            )
            .await;
        if c["stats"]["sent"].as_i64().unwrap_or(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the campaign made no progress: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_outbox(server: &Server) -> usize {
    std::fs::read_dir(server.outbox())
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel_and_send_at_work_end_to_end() {
    let env = [
        ("FILE_RATE_LIMIT", "500".to_owned()),
        ("BATCH_SIZE", "100".to_owned()),
    ];
    let server = Server::start("serve", &Backend::embedded(), &env).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 3000).await;

    // Pause and resume.
    let campaign = create_campaign(&server, &token, list, "file").await;
    support::send_campaign(&server, &token, campaign).await;
    wait_for_progress(&server, &token, campaign).await;
    let (status, body) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/pause"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, body["status"].clone()), (202, json!("paused")));
    tokio::time::sleep(Duration::from_millis(3000)).await; // in-flight batches finish
    let settled = count_outbox(&server);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count_outbox(&server),
        settled,
        "nothing is sent while paused"
    );
    assert!(settled < 3000, "the pause landed mid-campaign");
    let (status, _) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/pause"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "a paused campaign cannot be paused again");
    let (status, _) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/resume"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let done = server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(60))
        .await;
    assert_eq!(done["stats"]["sent"], 3000);
    assert_eq!(count_outbox(&server), 3000);

    // Cancel.
    let cancelled = create_campaign(&server, &token, list, "file").await;
    support::send_campaign(&server, &token, cancelled).await;
    wait_for_progress(&server, &token, cancelled).await;
    let (status, _) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{cancelled}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, after) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{cancelled}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["stats"]["pending"], 0, "{after}");
    let (sent, skipped) = (
        after["stats"]["sent"].as_i64().unwrap_or(0),
        after["stats"]["skipped"].as_i64().unwrap_or(0),
    );
    assert_eq!(
        sent + skipped,
        after["stats"]["total"].as_i64().unwrap_or(-1),
        "{after}"
    );
    assert!(
        skipped > 0,
        "cancel stopped recipients that were not sent: {after}"
    );

    // send_at.
    let at = chrono_like_in(3);
    let (status, template) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(&token),
            Some(json!({"name": "t", "subject": "s", "html": "<p>{{ subscriber.name }}</p>"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, scheduled) = server
        .request(
            "POST",
            "/api/v1/campaigns",
            Some(&token),
            Some(json!({"name": "Later", "template_id": template["id"], "list_ids": [list], "from": "a@shop.example", "send_at": at})),
        )
        .await;
    assert_eq!(status, 201, "{scheduled}");
    let id = scheduled["id"].as_i64().expect("id");
    let (status, body) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{id}/send"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, body["status"].clone()), (202, json!("scheduled")));
    let started = Instant::now();
    let done = server
        .wait_campaign(&token, id, "done", Duration::from_secs(60))
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for send_at"
    );
    assert_eq!(done["stats"]["sent"], 3000);
}

/// An RFC 3339 time `secs` seconds from now.
fn chrono_like_in(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs);
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    let (s, ms) = (d.as_secs(), d.subsec_millis());
    let days = s / 86_400;
    let rem = s % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_variable_that_does_not_exist_fails_its_recipients_with_the_reason() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 5).await;
    let (status, template) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(&token),
            Some(json!({"name": "t", "subject": "Hi", "html": "<p>{{ subscriber.attributes.missing }}</p>"})),
        )
        .await;
    assert_eq!(
        status, 201,
        "the template parses; the variable is missing only at render time"
    );
    let (_, campaign) = server
        .request(
            "POST",
            "/api/v1/campaigns",
            Some(&token),
            Some(json!({"name": "c", "template_id": template["id"], "list_ids": [list], "from": "a@shop.example"})),
        )
        .await;
    let id = campaign["id"].as_i64().expect("id");
    support::send_campaign(&server, &token, id).await;
    let done = server
        .wait_campaign(&token, id, "done", Duration::from_secs(30))
        .await;
    assert_eq!(done["stats"]["failed"], 5, "{done}");
    assert_eq!(count_outbox(&server), 0);
}
