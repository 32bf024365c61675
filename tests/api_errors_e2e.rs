//! End to end: bad input gets a clear RFC 9457 answer and leaves nothing behind.

mod support;

use serde_json::json;
use support::{Backend, Server, create_campaign, seed_list};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_tokens_get_401_problems() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let res = server
        .http
        .post(format!("{}/auth/login", server.base))
        .json(&json!({"username": "admin", "password": "wrong"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["status"], 401);
    assert_eq!(body["detail"], "wrong username or password");

    let (status, body) = server.request("GET", "/api/v1/lists", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Authorization: Bearer")
    );
    let (status, _) = server
        .request("GET", "/api/v1/lists", Some("garbage.token.here"), None)
        .await;
    assert_eq!(status, 401);

    let token = server.login().await;
    let (status, _) = server
        .request("GET", "/api/v1/lists", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .request("POST", "/auth/logout", Some(&token), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = server
        .request("GET", "/api/v1/lists", Some(&token), None)
        .await;
    assert_eq!(status, 401, "a logged-out token stops working: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liquid_that_does_not_parse_is_a_422_naming_the_line_and_stores_nothing() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let (status, body) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(&token),
            Some(json!({"name": "Broken", "subject": "Hi", "html": "<p>\n{% if subscriber.name %}\nno end"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "html");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("line 3:"), "{message}");
    assert!(
        message.contains("endif"),
        "the parser's message is kept: {message}"
    );
    let (_, page) = server
        .request("GET", "/api/v1/templates", Some(&token), None)
        .await;
    assert_eq!(
        page["items"].as_array().map(Vec::len),
        Some(0),
        "no template row was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_whose_lists_are_empty_is_refused_and_stays_a_draft() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 0).await;
    let campaign = create_campaign(&server, &token, list, "file").await;
    let (status, body) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/send"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "list_ids");
    let (_, after) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(after["status"], "draft");
    assert_eq!(after["stats"]["total"], 0, "no delivery rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_campaign_fields_are_all_reported_and_nothing_is_created() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 1).await;
    let (status, body) = server
        .request(
            "POST",
            "/api/v1/campaigns",
            Some(&token),
            Some(json!({"name": "", "template_id": 999, "list_ids": [list, 424242], "from": "nobody", "provider": "pigeon"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for f in ["name", "template_id", "list_ids", "from", "provider"] {
        assert!(fields.contains(&f), "{f} reported in {body}");
    }
    let (_, page) = server
        .request("GET", "/api/v1/campaigns", Some(&token), None)
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0));

    let res = server
        .http
        .post(format!("{}/api/v1/lists", server.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 400);
    let (status, body) = server.request("GET", "/no/such/route", None, None).await;
    assert_eq!((status, body["status"].clone()), (404, json!(404)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_of_100000_subscribers_with_malformed_rows_imports_with_a_correct_report() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let (_, list) = server
        .request(
            "POST",
            "/api/v1/lists",
            Some(&token),
            Some(json!({"name": "Big"})),
        )
        .await;
    let id = list["id"].as_i64().expect("id");
    let mut csv = String::from("email,name,city\n");
    let mut bad_rows = Vec::new();
    for i in 0..100_000 {
        if i % 2000 == 7 {
            csv.push_str(&format!("not-an-address-{i},Bad {i},Oslo\n"));
            bad_rows.push(i);
        } else {
            csv.push_str(&format!("person{i}@example.com,Person {i},Oslo\n"));
        }
    }
    csv.push_str("person1@example.com,Duplicate,Oslo\n");
    let res = server
        .http
        .post(format!("{}/api/v1/lists/{id}/subscribers", server.base))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    let report: serde_json::Value = res.json().await.expect("json");
    let rejected = report["rejected"].as_array().expect("rejected");
    assert_eq!(
        report["inserted"],
        100_000 - bad_rows.len(),
        "{}",
        report["inserted"]
    );
    assert_eq!(report["updated"], 0);
    assert_eq!(
        rejected.len(),
        bad_rows.len() + 1,
        "every malformed row and the duplicate"
    );
    let rows: Vec<i64> = rejected.iter().filter_map(|r| r["row"].as_i64()).collect();
    assert_eq!(rows[0], 7, "rows are numbered from the first data row");
    assert!(rejected.last().is_some_and(|r| {
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicate")
    }));
    let (_, shown) = server
        .request("GET", &format!("/api/v1/lists/{id}"), Some(&token), None)
        .await;
    assert_eq!(shown["subscriber_count"], 100_000 - bad_rows.len());

    // Importing again updates instead of inserting.
    let again = "email,name\nperson2@example.com,Renamed\n";
    let res = server
        .http
        .post(format!("{}/api/v1/lists/{id}/subscribers", server.base))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body(again)
        .send()
        .await
        .expect("sent");
    let report: serde_json::Value = res.json().await.expect("json");
    assert_eq!(
        (report["inserted"].clone(), report["updated"].clone()),
        (json!(0), json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_replaced_and_in_use_resources_cannot_be_deleted() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let token = server.login().await;
    let list = seed_list(&server, &token, 2).await;
    let campaign = create_campaign(&server, &token, list, "file").await;
    let (_, c) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}"),
            Some(&token),
            None,
        )
        .await;
    let template = c["template_id"].as_i64().expect("template");

    let body =
        |subject: &str, html: &str| json!({"name": "Welcome", "subject": subject, "html": html});
    let (status, _) = server
        .request(
            "POST",
            &format!("/api/v1/templates/{template}/preview"),
            Some(&token),
            Some(json!({"subscriber": {"attributes": {"n": 1}}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, replaced) = server
        .request(
            "PUT",
            &format!("/api/v1/templates/{template}"),
            Some(&token),
            Some(body("Hi {{ subscriber.name }}", "<p>v2</p>")),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    let (_, preview) = server
        .request(
            "POST",
            &format!("/api/v1/templates/{template}/preview"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        preview["subject"], "Hi Jane Doe",
        "the cached compiled template was not served stale"
    );
    let (status, broken) = server
        .request(
            "PUT",
            &format!("/api/v1/templates/{template}"),
            Some(&token),
            Some(body("Hi", "{% if x %}")),
        )
        .await;
    assert_eq!(status, 422, "{broken}");
    let (_, kept) = server
        .request(
            "GET",
            &format!("/api/v1/templates/{template}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        kept["html"], "<p>v2</p>",
        "a refused replacement changes nothing"
    );

    let (status, body409) = server
        .request(
            "DELETE",
            &format!("/api/v1/templates/{template}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body409}");
    let (status, _) = server
        .request(
            "DELETE",
            &format!("/api/v1/lists/{list}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "a targeted list stays");

    let other = seed_list(&server, &token, 0).await;
    let (status, _) = server
        .request(
            "DELETE",
            &format!("/api/v1/lists/{other}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .request("GET", &format!("/api/v1/lists/{other}"), Some(&token), None)
        .await;
    assert_eq!(status, 404);
    let (_, spare) = server
        .request(
            "POST",
            "/api/v1/templates",
            Some(&token),
            Some(body("Spare", "<p>spare</p>")),
        )
        .await;
    let (status, _) = server
        .request(
            "DELETE",
            &format!("/api/v1/templates/{}", spare["id"]),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
}

/// PATCH /api/v1/lists/{id}: renames and clears what is given, validated as on
/// creation; a refused change, a viewer or an unknown id leaves every list as it was.
async fn list_update(server: &Server, backend: &Backend) {
    let token = server.login().await;
    let (status, list) = server
        .request(
            "POST",
            "/api/v1/lists",
            Some(&token),
            Some(json!({"name": "News", "description": "Weekly"})),
        )
        .await;
    assert_eq!(status, 201, "{list}");
    let path = format!("/api/v1/lists/{}", list["id"]);
    let patch = |body: serde_json::Value, who: &str| {
        let (path, who) = (path.clone(), who.to_owned());
        async move { server.request("PATCH", &path, Some(&who), Some(body)).await }
    };

    let (status, renamed) = patch(json!({"name": "  Digest  "}), &token).await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["name"], "Digest", "trimmed as on creation");
    assert_eq!(renamed["description"], "Weekly", "an absent field stays");
    assert_eq!(renamed["id"], list["id"]);
    assert_eq!(renamed["created_at"], list["created_at"]);

    let (status, cleared) = patch(json!({"description": null}), &token).await;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["description"], serde_json::Value::Null);
    assert_eq!(cleared["name"], "Digest");
    let (_, shown) = server.request("GET", &path, Some(&token), None).await;
    assert_eq!(shown, cleared, "GET shows the stored change");

    // Refused changes: a blank name (every refused field named at once), an unknown
    // field, a null name; none of them writes anything.
    let (status, body) = patch(json!({"name": "   ", "description": "x"}), &token).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "name", "{body}");
    let (status, body) = patch(json!({"name": "", "description": "x".repeat(2001)}), &token).await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["name", "description"], "{body}");
    let (status, body) = patch(json!({"name": "Other", "colour": "red"}), &token).await;
    assert_eq!(
        status, 400,
        "unknown fields are refused as on creation: {body}"
    );
    let (status, body) = patch(json!({"name": null}), &token).await;
    assert_eq!(status, 400, "a list needs a name: {body}");

    let viewer = support::viewer_token(server, &token).await;
    let (status, body) = patch(json!({"name": "Viewer's"}), &viewer).await;
    assert_eq!(status, 403, "{body}");

    let (_, after) = server.request("GET", &path, Some(&token), None).await;
    assert_eq!(after, cleared, "no refused request changed the list");

    let (status, body) = server
        .request(
            "PATCH",
            "/api/v1/lists/987654",
            Some(&token),
            Some(json!({"name": "Nobody"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    let audit = support::audit_entries(backend, &server.dir, "list.update").await;
    let target = format!("list:{}", list["id"]);
    assert_eq!(
        audit,
        vec![
            (
                "admin".to_owned(),
                Some(target.clone()),
                json!({"fields": ["name"]})
            ),
            (
                "admin".to_owned(),
                Some(target),
                json!({"fields": ["description"]})
            ),
        ],
        "each change is audited, refused ones are not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_is_renamed_and_its_description_cleared_by_patch_on_sqlite() {
    let backend = Backend::embedded();
    let server = Server::start("serve", &backend, &[]).await;
    list_update(&server, &backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_is_renamed_and_its_description_cleared_by_patch_on_postgres() {
    let Some(backend) = Backend::fleet("list update on PostgreSQL").await else {
        return;
    };
    let server = Server::start("api", &backend, &[]).await;
    list_update(&server, &backend).await;
    backend.cleanup().await;
}
