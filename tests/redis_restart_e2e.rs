//! End to end: the Redis behind the queue restarts (without persistence, so every queued
//! job is gone) in the middle of a campaign. The campaign still completes, and the
//! Resend-like provider receives every recipient exactly once. This test runs its own
//! `redis-server` on a free port, so it disturbs no other test.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::resend_mock::ResendMock;
use support::{Backend, Server, create_campaign, free_port, seed_list};

struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(RedisServer {
            port,
            child: Some(child),
        })
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_campaign_loses_and_doubles_nothing() {
    let port = free_port();
    let Some(mut redis) = RedisServer::start(port) else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("redis-server is required under CI=true");
        }
        eprintln!("SKIPPED redis restart: no redis-server binary");
        return;
    };
    let Some(mut backend) = Backend::fleet("redis restart").await else {
        return;
    };
    for (k, v) in backend.env.iter_mut() {
        if k == "REDIS_URL" {
            *v = format!("redis://127.0.0.1:{}", redis.port);
        }
    }
    let mock = ResendMock::start().await;
    let mut env = mock.env();
    env.extend([
        ("RESEND_RATE_LIMIT", "800".to_owned()),
        ("BATCH_SIZE", "200".to_owned()),
        ("STALL_RECOVERY_SECS", "3".to_owned()),
        ("CLAIM_LEASE_SECS", "3".to_owned()),
    ]);
    let api = Server::start("api", &backend, &env).await;
    let _worker = Server::start_in(&api.dir, "worker", &backend, &env).await;
    let token = api.login().await;
    let n = 4000;
    let list = seed_list(&api, &token, n).await;
    let campaign = create_campaign(&api, &token, list, "resend").await;
    support::send_campaign(&api, &token, campaign).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = mock.deliveries().len();
    assert!(
        before < n,
        "the restart lands mid-campaign ({before} delivered)"
    );
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _redis = RedisServer::start(port).expect("redis restarts");
    let done = api
        .wait_campaign(&token, campaign, "done", Duration::from_secs(180))
        .await;
    assert_eq!(done["stats"]["sent"], n, "{done}");
    let deliveries = mock.deliveries();
    let doubled: Vec<_> = deliveries.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
    assert_eq!(deliveries.len(), n);
    backend.cleanup().await;
}
