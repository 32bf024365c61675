//! End to end: a campaign sent by the real binary, through the file outbox and through a
//! real SMTP server, on the embedded SQLite default and on PostgreSQL + Redis with a
//! separate API process and two worker processes.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use mail_parser::MessageParser;
use support::{Backend, Server, SmtpSink, create_campaign, seed_list, viewer_token};

const N: usize = 1000;

/// Checks every `.eml` in the outbox: a valid RFC 5322 message with From, To, Subject,
/// Date, a unique Message-ID and the recipient's own name; returns how many there are.
fn check_outbox(server: &Server, expected: usize) {
    let files: Vec<_> = std::fs::read_dir(server.outbox())
        .expect("the outbox exists")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(
        files.len(),
        expected,
        "outbox holds {} messages",
        files.len()
    );
    let mut ids = HashSet::new();
    let mut recipients = HashSet::new();
    for f in files {
        let raw = std::fs::read(f.path()).expect("read message");
        let msg = MessageParser::default()
            .parse(&raw)
            .expect("a parseable RFC 5322 message");
        let from = msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .expect("From");
        assert_eq!(from, "news@shop.example");
        let to = msg.to().and_then(|a| a.first()).expect("To");
        let email = to.address().expect("To address").to_owned();
        let n: usize = email
            .strip_prefix("user")
            .and_then(|r| r.strip_suffix("@example.com"))
            .and_then(|n| n.parse().ok())
            .expect("a seeded recipient");
        assert_eq!(to.name(), Some(format!("Subscriber {n}").as_str()));
        assert_eq!(
            msg.subject(),
            Some(format!("Hello Subscriber {n}").as_str())
        );
        assert!(msg.date().is_some(), "Date header");
        let html = msg.body_html(0).expect("an HTML part");
        assert!(
            html.contains(&format!("Dear Subscriber {n}, number {n}.")),
            "{html}"
        );
        assert!(msg.header("List-Unsubscribe-Post").is_some());
        assert!(
            ids.insert(msg.message_id().expect("Message-ID").to_owned()),
            "Message-IDs are unique"
        );
        assert!(recipients.insert(email), "one message per recipient");
    }
}

async fn file_campaign(backend: &Backend, server: &Server) {
    let token = server.login().await;
    let list = seed_list(server, &token, N).await;
    let campaign = create_campaign(server, &token, list, "file").await;
    let (status, body) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/send"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "running");
    let done = server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(180))
        .await;
    assert_eq!(done["stats"]["sent"], N, "{done} on {}", backend.name);
    assert_eq!(done["stats"]["total"], N);
    assert_eq!(done["stats"]["pending"], 0);
    check_outbox(server, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_subscribers_become_thousand_eml_files_on_sqlite() {
    let backend = Backend::embedded();
    let server = Server::start("serve", &backend, &[]).await;
    file_campaign(&backend, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_subscribers_become_thousand_eml_files_on_a_postgres_redis_fleet() {
    let Some(backend) = Backend::fleet("fleet file campaign").await else {
        return;
    };
    let api = Server::start("api", &backend, &[]).await;
    let _w1 = Server::start_in(&api.dir, "worker", &backend, &[]).await;
    let _w2 = Server::start_in(&api.dir, "worker", &backend, &[]).await;
    file_campaign(&backend, &api).await;
    backend.cleanup().await;
}

/// A fleet test that fails half-way leaves neither its database nor its queue behind:
/// the backend cleans up when it is dropped, after the processes it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fleet_test_leaves_no_database_or_queue_behind() {
    let Some(backend) = Backend::fleet("fleet cleanup on failure").await else {
        return;
    };
    let database = backend.pg_database.clone().expect("a database");
    let queue = backend.queue_namespace.clone().expect("a queue namespace");
    let prefix = format!("{}:", queue.1);
    let (redis_url, watched) = (queue.0.clone(), prefix.clone());
    let failed = tokio::spawn(async move {
        let api = Server::start("api", &backend, &[]).await;
        let _worker = Server::start_in(&api.dir, "worker", &backend, &[]).await;
        // The worker has registered its queues: there is something to leave behind.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (keys, queues) = support::queue_leftovers(&redis_url, &watched).await;
            if !keys.is_empty() && !queues.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker registered no queue"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("this test fails on purpose with its processes running");
    })
    .await;
    assert!(failed.is_err_and(|e| e.is_panic()));
    assert!(
        !support::database_exists(&database).await,
        "the database {} was left behind",
        database.1
    );
    support::assert_no_queue_left(&queue.0, &prefix).await;
}

async fn smtp_campaign(backend: &Backend, command: &str) {
    let sink = SmtpSink::start();
    let server = Server::start(command, backend, &sink.env()).await;
    let _worker = if command == "api" {
        Some(Server::start_in(&server.dir, "worker", backend, &sink.env()).await)
    } else {
        None
    };
    let token = server.login().await;
    let n = 200;
    let list = seed_list(&server, &token, n).await;
    let campaign = create_campaign(&server, &token, list, "smtp").await;
    support::send_campaign(&server, &token, campaign).await;
    let done = server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(120))
        .await;
    assert_eq!(done["stats"]["sent"], n, "{done}");
    let messages = sink.messages();
    assert_eq!(
        messages.len(),
        n,
        "the SMTP server received {} messages",
        messages.len()
    );
    let mut seen = HashSet::new();
    for m in messages {
        assert_eq!(m.from, "news@shop.example", "envelope sender");
        assert_eq!(m.to.len(), 1, "one envelope recipient per message");
        let rcpt = m.to[0].clone();
        let parsed = MessageParser::default()
            .parse(&m.data)
            .expect("a parseable message");
        let to = parsed
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .expect("To");
        assert_eq!(to, rcpt, "header To matches the envelope");
        let idx = rcpt
            .trim_start_matches("user")
            .trim_end_matches("@example.com");
        let html = parsed.body_html(0).expect("html");
        assert!(html.contains(&format!("Dear Subscriber {idx},")), "{html}");
        assert!(seen.insert(rcpt), "each recipient once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_goes_out_through_a_real_smtp_server_on_sqlite() {
    smtp_campaign(&Backend::embedded(), "serve").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_goes_out_through_a_real_smtp_server_on_a_postgres_redis_fleet() {
    let Some(backend) = Backend::fleet("fleet smtp campaign").await else {
        return;
    };
    smtp_campaign(&backend, "api").await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribe_removes_the_recipient_from_later_campaigns() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 3).await;
    let first = create_campaign(&server, &token, list, "file").await;
    server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{first}/send"),
            Some(&token),
            None,
        )
        .await;
    server
        .wait_campaign(&token, first, "done", Duration::from_secs(60))
        .await;

    let any = std::fs::read_dir(server.outbox())
        .expect("outbox")
        .flatten()
        .next()
        .expect("a message");
    let raw = std::fs::read(any.path()).expect("read");
    let msg = MessageParser::default().parse(&raw).expect("parse");
    let header = msg
        .header_raw("List-Unsubscribe")
        .expect("List-Unsubscribe")
        .replace("\r\n ", " ");
    let url = header
        .trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("an https-style URL")
        .to_owned();
    let path = url
        .strip_prefix(&server.base)
        .expect("the link points at PUBLIC_URL")
        .to_owned();

    let page = server.http.get(&url).send().await.expect("GET");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap_or_default()
            .contains("<form method=\"post\""),
        "GET only confirms"
    );
    let (_, before) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{first}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        before["stats"]["unsubscribed"], 0,
        "a GET (mail scanners) unsubscribes nobody"
    );

    let forged = format!("{path}x");
    let res = server
        .http
        .post(format!("{}{forged}", server.base))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 404);
    let res = server
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    let (_, after) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{first}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(after["stats"]["unsubscribed"], 1);

    let second = create_campaign(&server, &token, list, "file").await;
    server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{second}/send"),
            Some(&token),
            None,
        )
        .await;
    let done = server
        .wait_campaign(&token, second, "done", Duration::from_secs(60))
        .await;
    assert_eq!(
        done["stats"]["total"], 2,
        "the unsubscribed recipient is not planned again: {done}"
    );
    assert_eq!(done["stats"]["sent"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_message_is_sent_with_its_data_and_bad_input_is_refused() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let (_, template) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(&token),
            Some(serde_json::json!({"name": "Reset", "subject": "Your code", "html": "<p>Hi {{ subscriber.name }}, code {{ code }}</p>"})),
        )
        .await;
    let (status, tx) = server
        .request(
            "POST",
            "/api/v1/tx",
            Some(&token),
            Some(serde_json::json!({"template_id": template["id"], "to": {"email": "ann@example.com", "name": "Ann"},
                                    "data": {"code": "493817"}, "from": "Shop <auth@shop.example>"})),
        )
        .await;
    assert_eq!(status, 202, "{tx}");
    let id = tx["id"].as_i64().expect("id");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = server
            .request("GET", &format!("/api/v1/tx/{id}"), Some(&token), None)
            .await;
        if t["status"] == "sent" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not sent: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let file = std::fs::read_dir(server.outbox())
        .expect("outbox")
        .flatten()
        .next()
        .expect("the message");
    let raw = std::fs::read(file.path()).expect("read");
    let msg = MessageParser::default().parse(&raw).expect("parse");
    assert!(
        msg.body_html(0)
            .expect("html")
            .contains("Hi Ann, code 493817")
    );
    assert!(
        msg.header("List-Unsubscribe").is_none(),
        "transactional mail carries no unsubscribe headers"
    );

    let (status, body) = server
        .request(
            "POST",
            "/api/v1/tx",
            Some(&token),
            Some(serde_json::json!({"template_id": 999, "to": {"email": "nobody"}, "from": "x@shop.example"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"to") && fields.contains(&"template_id"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_are_searched_updated_exported_unsubscribed_and_erased() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 12).await;
    let campaign = create_campaign(&server, &token, list, "file").await;
    support::send_campaign(&server, &token, campaign).await;
    server
        .wait_campaign(&token, campaign, "done", Duration::from_secs(60))
        .await;

    let (status, found) = server
        .request("GET", "/api/v1/subscribers?email=user1", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{found}");
    let emails: Vec<&str> = found["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["email"].as_str())
        .collect();
    assert_eq!(
        emails,
        [
            "user1@example.com",
            "user10@example.com",
            "user11@example.com"
        ],
        "prefix search"
    );
    let (_, none) = server
        .request(
            "GET",
            "/api/v1/subscribers?email=user1_",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        none["items"].as_array().map(Vec::len),
        Some(0),
        "`_` is not a wildcard"
    );
    let id = found["items"][0]["id"].as_i64().expect("id");

    let (status, updated) = server
        .request(
            "PATCH",
            &format!("/api/v1/subscribers/{id}"),
            Some(&token),
            Some(serde_json::json!({"name": "Ann", "attributes": {"vip": true}})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (
            updated["name"].clone(),
            updated["attributes"]["vip"].clone()
        ),
        (serde_json::json!("Ann"), serde_json::json!(true))
    );

    let (status, export) = server
        .request(
            "GET",
            &format!("/api/v1/subscribers/{id}/export"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(export["subscriber"]["email"], "user1@example.com");
    assert_eq!(export["lists"][0]["id"], list);
    assert_eq!(export["deliveries"][0]["campaign_id"], campaign);
    assert_eq!(export["deliveries"][0]["status"], "sent");

    let (_, unsub) = server
        .request(
            "POST",
            &format!("/api/v1/subscribers/{id}/unsubscribe"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(unsub["status"], "unsubscribed");
    let (_, suppressed) = server
        .request("GET", "/api/v1/suppressions", Some(&token), None)
        .await;
    assert_eq!(suppressed["items"][0]["email"], "user1@example.com");

    let (status, _) = server
        .request(
            "DELETE",
            &format!("/api/v1/subscribers/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .request(
            "GET",
            &format!("/api/v1/subscribers/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404, "erased");
    let (status, _) = server
        .request(
            "GET",
            &format!("/api/v1/subscribers/{id}/export"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (_, c) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        c["stats"]["total"], 11,
        "the erased subscriber's ledger rows went too"
    );
}

/// The campaign ids of a subscriber's ledger rows, from the GDPR export.
async fn ledger_campaigns(server: &Server, token: &str, email: &str) -> Vec<i64> {
    let (_, found) = server
        .request(
            "GET",
            &format!("/api/v1/subscribers?email={email}"),
            Some(token),
            None,
        )
        .await;
    let id = found["items"][0]["id"].as_i64().expect("the subscriber");
    let (status, export) = server
        .request(
            "GET",
            &format!("/api/v1/subscribers/{id}/export"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{export}");
    export["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter_map(|d| d["campaign_id"].as_i64())
        .collect()
}

/// The campaign `id` as the first page of `GET /api/v1/campaigns` shows it.
async fn listed_campaign(server: &Server, token: &str, id: i64) -> serde_json::Value {
    let (status, page) = server
        .request("GET", "/api/v1/campaigns", Some(token), None)
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|c| c["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("campaign {id} is not on the first page: {page}"))
}

/// PATCH changes a draft's settings (validated as on creation) and nothing once it is
/// sent; DELETE removes a campaign that is not sending, with its ledger, and refuses a
/// running or paused one; a viewer can do neither.
async fn campaign_edit_and_delete(server: &Server) {
    let token = server.login().await;
    let viewer = viewer_token(server, &token).await;
    let list = seed_list(server, &token, 200).await;
    let (status, vip) = server
        .request(
            "POST",
            "/api/v1/lists",
            Some(&token),
            Some(serde_json::json!({"name": "VIP"})),
        )
        .await;
    assert_eq!(status, 201, "{vip}");
    let vip = vip["id"].as_i64().expect("list id");
    let draft = create_campaign(server, &token, list, "file").await;
    let path = format!("/api/v1/campaigns/{draft}");
    // The page is read (and kept for API_CACHE_TTL_MS) before the change below.
    let before = listed_campaign(server, &token, draft).await;
    assert_ne!(before["name"], "Spring launch", "{before}");

    // A draft: the given fields change, the others stay.
    let send_at = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let (status, patched) = server
        .request(
            "PATCH",
            &path,
            Some(&token),
            Some(serde_json::json!({
                "name": "  Spring launch ",
                "list_ids": [list, vip],
                "reply_to": "Help <help@shop.example>",
                "send_at": send_at,
            })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["id"], draft);
    assert_eq!(patched["status"], "draft");
    assert_eq!(patched["name"], "Spring launch");
    assert_eq!(patched["list_ids"], serde_json::json!([list, vip]));
    assert_eq!(patched["reply_to"], "Help <help@shop.example>");
    assert!(patched["send_at"].is_string(), "{patched}");
    assert_eq!(patched["from"], "Shop <news@shop.example>", "untouched");
    assert_eq!(patched["provider"], "file");
    let (_, shown) = server.request("GET", &path, Some(&token), None).await;
    assert_eq!(shown, patched, "stored as answered");
    // A change made through the process is on its campaign page at once.
    assert_eq!(
        listed_campaign(server, &token, draft).await,
        patched,
        "the page kept from before the change is not served after it"
    );

    // `null` clears the optional fields; absent ones stay.
    let (status, cleared) = server
        .request(
            "PATCH",
            &path,
            Some(&token),
            Some(serde_json::json!({"reply_to": null, "send_at": null, "list_ids": [list]})),
        )
        .await;
    assert_eq!(status, 200, "{cleared}");
    assert!(
        cleared["reply_to"].is_null() && cleared["send_at"].is_null(),
        "{cleared}"
    );
    assert_eq!(cleared["name"], "Spring launch");
    assert_eq!(cleared["list_ids"], serde_json::json!([list]));

    // Invalid values: 422 naming every refused field, and nothing changes.
    let (status, refused) = server
        .request(
            "PATCH",
            &path,
            Some(&token),
            Some(serde_json::json!({
                "name": " ",
                "template_id": 999_999,
                "list_ids": [],
                "from": "not an address",
                "provider": "pigeon",
                "send_at": "2001-01-01T00:00:00Z",
            })),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    let mut fields: Vec<&str> = refused["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "from",
            "list_ids",
            "name",
            "provider",
            "send_at",
            "template_id"
        ],
        "{refused}"
    );
    let (status, body) = server
        .request(
            "PATCH",
            &path,
            Some(&token),
            Some(serde_json::json!({"name": null})),
        )
        .await;
    assert_eq!(status, 400, "a required field cannot be null: {body}");
    let (status, body) = server
        .request(
            "PATCH",
            &path,
            Some(&token),
            Some(serde_json::json!({"status": "done"})),
        )
        .await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");
    let (_, unchanged) = server.request("GET", &path, Some(&token), None).await;
    assert_eq!(unchanged, cleared, "a refused update changes nothing");

    // A viewer may read but neither change nor delete.
    for (method, body) in [
        ("PATCH", Some(serde_json::json!({"name": "Mine"}))),
        ("DELETE", None),
    ] {
        let (status, answer) = server.request(method, &path, Some(&viewer), body).await;
        assert_eq!(status, 403, "{method}: {answer}");
    }
    let (status, _) = server.request("GET", &path, Some(&viewer), None).await;
    assert_eq!(status, 200);

    // A campaign that is sending can be neither changed nor deleted.
    let sent = create_campaign(server, &token, list, "file").await;
    let sent_path = format!("/api/v1/campaigns/{sent}");
    support::send_campaign(server, &token, sent).await;
    let (status, body) = server
        .request(
            "PATCH",
            &sent_path,
            Some(&token),
            Some(serde_json::json!({"name": "Too late"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("only a draft or scheduled campaign can be changed"),
        "{body}"
    );
    let (status, body) = server
        .request("DELETE", &sent_path, Some(&token), None)
        .await;
    assert_eq!(status, 409, "running: {body}");
    let (status, body) = server
        .request("POST", &format!("{sent_path}/pause"), Some(&token), None)
        .await;
    assert_eq!(
        (status, body["status"].clone()),
        (202, serde_json::json!("paused"))
    );
    let (status, body) = server
        .request("DELETE", &sent_path, Some(&token), None)
        .await;
    assert_eq!(status, 409, "paused: {body}");
    let (status, _) = server
        .request("POST", &format!("{sent_path}/resume"), Some(&token), None)
        .await;
    assert_eq!(status, 202);
    let done = server
        .wait_campaign(&token, sent, "done", Duration::from_secs(120))
        .await;
    assert_eq!(done["stats"]["sent"], 200, "{done}");
    let (status, body) = server
        .request(
            "PATCH",
            &sent_path,
            Some(&token),
            Some(serde_json::json!({"name": "Too late"})),
        )
        .await;
    assert_eq!(status, 409, "a sent campaign cannot be changed: {body}");
    assert!(
        ledger_campaigns(server, &token, "user7@example.com")
            .await
            .contains(&sent),
        "the ledger has the sent campaign's rows"
    );

    // A finished campaign goes, with its ledger rows.
    let (status, body) = server
        .request("DELETE", &sent_path, Some(&token), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = server.request("GET", &sent_path, Some(&token), None).await;
    assert_eq!(status, 404, "gone");
    let (status, _) = server
        .request(
            "GET",
            &format!("{sent_path}/deliveries"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .request("DELETE", &sent_path, Some(&token), None)
        .await;
    assert_eq!(status, 404, "deleted once");
    assert!(
        !ledger_campaigns(server, &token, "user7@example.com")
            .await
            .contains(&sent),
        "its ledger rows went too"
    );
    let (status, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/lists/{vip}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204, "no campaign targets the list any more: {body}");

    // And so does a draft.
    let (status, _) = server.request("DELETE", &path, Some(&token), None).await;
    assert_eq!(status, 204);
    let (_, page) = server
        .request("GET", "/api/v1/campaigns", Some(&token), None)
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_are_edited_while_draft_and_deleted_unless_sending_on_sqlite() {
    // Slow enough that the campaign is still running when it is paused.
    let env = [("FILE_RATE_LIMIT", "20".to_owned())];
    let server = Server::start("serve", &Backend::embedded(), &env).await;
    campaign_edit_and_delete(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_are_edited_while_draft_and_deleted_unless_sending_on_a_postgres_redis_fleet() {
    let Some(backend) = Backend::fleet("fleet campaign edit and delete").await else {
        return;
    };
    let env = [("FILE_RATE_LIMIT", "20".to_owned())];
    let api = Server::start("api", &backend, &env).await;
    let _worker = Server::start_in(&api.dir, "worker", &backend, &env).await;
    campaign_edit_and_delete(&api).await;
    backend.cleanup().await;
}
