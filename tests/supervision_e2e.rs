//! End to end: the supervision tree restarts a component that panics while the process
//! keeps serving, and SIGTERM stops the process cleanly with exit code 0.

mod support;

use std::time::{Duration, Instant};

use support::{Backend, Server, create_campaign, seed_list};

async fn component(server: &Server, name: &str) -> serde_json::Value {
    let (_, health) = server.request("GET", "/health", None, None).await;
    health["components"][name].clone()
}

async fn wait_restarted(server: &Server, name: &str, restarts: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = component(server, name).await;
        if c["restarts"] == restarts && c["status"] == "running" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not restarted: {c}\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_panics_is_restarted_and_the_process_keeps_serving() {
    let server = Server::start(
        "serve",
        &Backend::embedded(),
        &[("FAULT_INJECTION", "true".into())],
    )
    .await;
    let token = server.login().await;
    for name in ["scheduler", "send", "plan", "http"] {
        assert_eq!(component(&server, name).await["restarts"], 0);
        let (status, body) = server
            .request(
                "POST",
                &format!("/admin/debug/crash/{name}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, 202, "{body}");
        wait_restarted(&server, name, 1).await;
        let last_error = component(&server, name).await["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(last_error.contains("fault injection"), "{last_error}");
    }
    // The restarted stages still deliver.
    let list = seed_list(&server, &token, 20).await;
    let campaign = create_campaign(&server, &token, list, "file").await;
    support::send_campaign(&server, &token, campaign).await;
    let done = server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(60))
        .await;
    assert_eq!(done["stats"]["sent"], 20);
    let (_, health) = server.request("GET", "/health", None, None).await;
    assert_eq!(health["status"], "ok", "{health}");
    let (status, _) = server
        .request("POST", "/admin/debug/crash/root", Some(&token), None)
        .await;
    assert_eq!(status, 404, "the root is not a crashable component");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_not_routed_unless_enabled() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let (status, _) = server
        .request("POST", "/admin/debug/crash/scheduler", Some(&token), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_campaign_work_in_flight_and_exits_zero() {
    let mut server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 300).await;
    let campaign = create_campaign(&server, &token, list, "file").await;
    support::send_campaign(&server, &token, campaign).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(40))
        .expect("the process exits after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}\n{}",
        server.logs()
    );
    assert!(
        server.logs().contains("Stopped"),
        "the shutdown was orderly"
    );
}
