//! End to end: provider webhooks. A Svix-signed Resend event marks the recipient bounced
//! or complained, suppresses the address and is applied once; stale, tampered and
//! wrongly signed events are refused; the next campaign skips suppressed addresses.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::resend_mock::ResendMock;
use support::{Backend, Server, create_campaign, seed_list};

const SECRET: &[u8] = b"webhook-secret-for-tests-0123456";

fn signed(server: &Server, key: &[u8], id: &str, ts: i64, body: &Value) -> reqwest::RequestBuilder {
    let raw = body.to_string();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("key");
    mac.update(format!("{id}.{ts}.{raw}").as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    server
        .http
        .post(format!("{}/webhooks/resend", server.base))
        .header("svix-id", id)
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", format!("v1,{sig}"))
        .header("content-type", "application/json")
        .body(raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_resend_events_update_the_ledger_and_suppress_once() {
    let mock = ResendMock::start().await;
    let mut env = mock.env();
    env.push((
        "RESEND_WEBHOOK_SECRET",
        format!("whsec_{}", STANDARD.encode(SECRET)),
    ));
    let server = Server::start("serve", &Backend::embedded(), &env).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 10).await;
    let campaign = create_campaign(&server, &token, list, "resend").await;
    server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/send"),
            Some(&token),
            None,
        )
        .await;
    server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(60))
        .await;
    let (_, ledger) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}/deliveries?limit=10"),
            Some(&token),
            None,
        )
        .await;
    let row = |i: usize| ledger["items"][i].clone();
    let (bounced, complained) = (row(0), row(1));
    let now = chrono_now();

    let bounce = json!({"type": "email.bounced", "data": {"email_id": bounced["provider_message_id"],
        "to": [bounced["email"]], "bounce": {"type": "Permanent", "message": "550 mailbox unavailable"}}});
    let res = signed(&server, SECRET, "msg_bounce", now, &bounce)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["applied"], true, "{body}");
    let res = signed(&server, SECRET, "msg_bounce", now, &bounce)
        .send()
        .await
        .expect("sent");
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        body["status"], "duplicate",
        "an event id is applied once: {body}"
    );

    let complaint = json!({"type": "email.complained", "data": {"email_id": complained["provider_message_id"], "to": [complained["email"]]}});
    assert_eq!(
        signed(&server, SECRET, "msg_complaint", now, &complaint)
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );

    // Refused: stale, tampered, wrong secret, missing headers.
    let stale = signed(&server, SECRET, "msg_stale", now - 600, &bounce)
        .send()
        .await
        .expect("sent");
    assert_eq!(stale.status(), 401);
    let stale: Value = stale.json().await.expect("json");
    assert!(
        stale["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("tolerance"),
        "{stale}"
    );
    let tampered = signed(&server, SECRET, "msg_t", now, &bounce)
        .body(json!({"type": "email.complained", "data": {"email_id": "x"}}).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(tampered.status(), 401);
    let wrong = signed(
        &server,
        b"not-the-secret-not-the-secret-00",
        "msg_w",
        now,
        &bounce,
    )
    .send()
    .await
    .expect("sent");
    assert_eq!(wrong.status(), 401);
    let bare = server
        .http
        .post(format!("{}/webhooks/resend", server.base))
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(bare.status(), 401);

    let (_, c) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (
            c["stats"]["bounced"].clone(),
            c["stats"]["complained"].clone()
        ),
        (json!(1), json!(1)),
        "{c}"
    );
    assert_eq!(c["stats"]["sent"], 8);
    let (_, suppressed) = server
        .request("GET", "/api/v1/suppressions", Some(&token), None)
        .await;
    let emails: Vec<&str> = suppressed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["email"].as_str())
        .collect();
    assert_eq!(emails.len(), 2, "{suppressed}");

    let next = create_campaign(&server, &token, list, "resend").await;
    server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{next}/send"),
            Some(&token),
            None,
        )
        .await;
    let done = server
        .wait_campaign(&token, next, "done", Duration::from_secs(60))
        .await;
    assert_eq!(
        done["stats"]["total"], 8,
        "suppressed addresses are not planned: {done}"
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
