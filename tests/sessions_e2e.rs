//! End to end: every session path is refused the right way. Tampered signatures,
//! `alg: none`, another algorithm, expired tokens and the wrong audience get 401; a
//! reused refresh token kills its family; a viewer cannot send (403); a login flood from
//! one address is throttled (429) while the real user logs in from another address; API
//! requests are rate limited per caller and per address (429 with Retry-After), and on
//! a fleet the per-caller limit holds across API replicas through Redis; deleting a
//! user ends their sessions at once on the process that deleted them, and an admin can delete neither themselves nor the
//! last admin; a logout is seen at once by the replica that took it and within
//! `API_CACHE_TTL_MS` by the others.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::{Backend, Server, create_campaign, seed_list};

const SECRET: &str = "test-secret-key-0123456789-abcdefghijklmnop";

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn jwt(header: &Value, claims: &Value, secret: &str, alg: &str) -> String {
    let signing = format!("{}.{}", b64(header), b64(claims));
    let sig = match alg {
        "HS256" => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
            mac.update(signing.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        "HS512" => {
            let mut mac =
                <Hmac<sha2::Sha512> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
            mac.update(signing.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        _ => String::new(),
    };
    format!("{signing}.{sig}")
}

fn claims(now: i64, exp: i64, aud: &str) -> Value {
    json!({"sub": "1", "name": "admin", "role": "admin", "jti": "forged", "exp": exp, "nbf": now - 5,
           "iat": now, "iss": "mailing", "aud": aud})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_misaddressed_tokens_are_refused() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let good = jwt(
        &hs256,
        &claims(now, now + 600, "mailing-api"),
        SECRET,
        "HS256",
    );
    let (status, _) = server
        .request("GET", "/api/v1/lists", Some(&good), None)
        .await;
    assert_eq!(
        status, 200,
        "a token made the way the server makes them works (the harness is right)"
    );

    let cases = [
        (
            "tampered signature",
            format!("{}x", &good[..good.len() - 1]),
        ),
        (
            "alg none",
            jwt(
                &json!({"alg": "none", "typ": "JWT"}),
                &claims(now, now + 600, "mailing-api"),
                SECRET,
                "none",
            ),
        ),
        (
            "another algorithm",
            jwt(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &claims(now, now + 600, "mailing-api"),
                SECRET,
                "HS512",
            ),
        ),
        (
            "expired",
            jwt(
                &hs256,
                &claims(now - 3600, now - 1800, "mailing-api"),
                SECRET,
                "HS256",
            ),
        ),
        (
            "wrong audience",
            jwt(
                &hs256,
                &claims(now, now + 600, "someone-else"),
                SECRET,
                "HS256",
            ),
        ),
        (
            "wrong secret",
            jwt(
                &hs256,
                &claims(now, now + 600, "mailing-api"),
                "another-secret-another-secret-123",
                "HS256",
            ),
        ),
    ];
    for (what, token) in cases {
        let (status, body) = server
            .request("GET", "/api/v1/lists", Some(&token), None)
            .await;
        assert_eq!(status, 401, "{what} must be refused: {body}");
        assert_eq!(body["status"], 401, "{what}: problem+json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_refresh_token_revokes_its_whole_family() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let (_, first) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "admin", "password": support::ADMIN_PASSWORD})),
        )
        .await;
    let r1 = first["refresh_token"].clone();
    let (status, second) = server
        .request(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await;
    assert_eq!(status, 200, "{second}");
    let r2 = second["refresh_token"].clone();
    assert_ne!(r1, r2, "refresh rotates");
    let (status, body) = server
        .request(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": r1})),
        )
        .await;
    assert_eq!(status, 401, "the old token works once: {body}");
    let (status, _) = server
        .request(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": r2})),
        )
        .await;
    assert_eq!(
        status, 401,
        "reuse revoked the whole family, the newest token too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_but_cannot_send_or_manage_users() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let admin = server.login().await;
    let list = seed_list(&server, &admin, 2).await;
    let campaign = create_campaign(&server, &admin, list, "file").await;
    let (status, _) = server
        .request(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(
                json!({"username": "vera", "password": "a-long-viewer-password", "role": "viewer"}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    let (_, login) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "vera", "password": "a-long-viewer-password"})),
        )
        .await;
    let viewer = login["access_token"].as_str().expect("token").to_owned();
    let (status, _) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .request(
            "POST",
            &format!("/api/v1/campaigns/{campaign}/send"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("editor"),
        "{body}"
    );
    let (status, _) = server
        .request(
            "POST",
            "/api/v1/users",
            Some(&viewer),
            Some(json!({"username": "eve", "password": "a-long-password-123", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 403);
    let (_, c) = server
        .request(
            "GET",
            &format!("/api/v1/campaigns/{campaign}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(c["status"], "draft", "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_from_one_address_is_throttled_but_the_user_logs_in_from_another() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let res = server
            .http
            .post(format!("{}/auth/login", server.base))
            .json(&json!({"username": "admin", "password": "guess"}))
            .send()
            .await
            .expect("sent");
        statuses.push((
            res.status().as_u16(),
            res.headers().get("retry-after").is_some(),
        ));
    }
    assert!(
        statuses[..10].iter().all(|(s, _)| *s == 401),
        "{statuses:?}"
    );
    assert_eq!(
        statuses[10],
        (429, true),
        "the 11th attempt is throttled with Retry-After: {statuses:?}"
    );
    let (status, _) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "admin", "password": support::ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(
        status, 429,
        "even the right password waits, from the flooding address"
    );

    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    let res = elsewhere
        .post(format!("{}/auth/login", server.base))
        .json(&json!({"username": "admin", "password": support::ADMIN_PASSWORD}))
        .send()
        .await
        .expect("sent from 127.0.0.2");
    assert_eq!(
        res.status(),
        200,
        "the real user logs in from another address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_scoped_by_role_shown_once_and_revocable() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let admin = server.login().await;
    let (status, created) = server
        .request(
            "POST",
            "/api/v1/api-keys",
            Some(&admin),
            Some(json!({"name": "ci", "role": "editor"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"]
        .as_str()
        .expect("the key is shown at creation")
        .to_owned();
    assert!(key.starts_with("mk_"));
    let (_, listed) = server
        .request("GET", "/api/v1/api-keys", Some(&admin), None)
        .await;
    assert!(
        listed["items"][0].get("key").is_none(),
        "the key is never listed again: {listed}"
    );
    assert!(
        !listed.to_string().contains(&key[10..]),
        "no secret in the listing"
    );

    let (status, _) = server
        .request(
            "POST",
            "/api/v1/lists",
            Some(&key),
            Some(json!({"name": "From CI"})),
        )
        .await;
    assert_eq!(status, 201, "an editor key writes lists");
    let (status, _) = server
        .request(
            "POST",
            "/api/v1/users",
            Some(&key),
            Some(json!({"username": "x", "password": "long-enough-password", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 403, "but is not an admin");
    let (status, _) = server
        .request("GET", "/api/v1/lists", Some(&format!("{key}x")), None)
        .await;
    assert_eq!(status, 401, "an altered key is refused");

    let id = created["id"].as_i64().expect("id");
    let (status, _) = server
        .request(
            "DELETE",
            &format!("/api/v1/api-keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = server
        .request("GET", "/api/v1/lists", Some(&key), None)
        .await;
    assert_eq!(status, 401, "a revoked key stops working: {body}");
}

async fn get_lists(server: &Server, token: &str) -> (u16, Option<String>) {
    let res = server
        .http
        .get(format!("{}/api/v1/lists", server.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (res.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_limited_per_caller_and_per_address() {
    let server = Server::start(
        "serve",
        &Backend::embedded(),
        &[
            ("API_RATE_LIMIT_PER_USER", "5".into()),
            ("API_RATE_LIMIT_PER_IP", "1000".into()),
        ],
    )
    .await;
    let admin = server.login().await;
    let (status, _) = server
        .request(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({
            "username": "other", "password": "other-password-123", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 201);
    // Wait out the admin's burst used by the calls above.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let (code, retry) = get_lists(&server, &admin).await;
        codes.push(code);
        if code == 429 {
            retry_after = retry;
        }
    }
    assert_eq!(&codes[..5], &[200; 5], "{codes:?}");
    assert!(codes[5..].contains(&429), "{codes:?}");
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "Retry-After in whole seconds"
    );
    // Another user is not affected.
    let (_, login) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "other", "password": "other-password-123"})),
        )
        .await;
    let other = login["access_token"].as_str().expect("token").to_owned();
    assert_eq!(get_lists(&server, &other).await.0, 200);

    // Per address: a tiny limit refuses the address, but /health stays open.
    let tight = Server::start(
        "serve",
        &Backend::embedded(),
        &[("API_RATE_LIMIT_PER_IP", "2".into())],
    )
    .await;
    let mut refused = None;
    for _ in 0..6 {
        let (code, body) = tight
            .request(
                "POST",
                "/auth/login",
                None,
                Some(json!({"username": "x", "password": "y"})),
            )
            .await;
        if code == 429 {
            refused = Some(body);
            break;
        }
    }
    let body = refused.expect("the address is limited");
    assert_eq!(body["status"], 429, "problem+json: {body}");
    for _ in 0..5 {
        let (code, _) = tight.request("GET", "/health", None, None).await;
        assert_eq!(code, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_fleet_the_per_caller_limit_holds_across_api_replicas() {
    let Some(backend) = Backend::fleet("API rate limit across replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let extra = [("API_RATE_LIMIT_PER_USER", "4".to_string())];
    let first = Server::start_in(dir.path(), "api", &backend, &extra).await;
    let second = Server::start_in(dir.path(), "api", &backend, &extra).await;
    let token = first.login().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let server = if i % 2 == 0 { &first } else { &second };
        codes.push(get_lists(server, &token).await.0);
    }
    assert_eq!(&codes[..4], &[200; 4], "{codes:?}");
    assert!(
        codes[4..].contains(&429),
        "the replicas share the limit: {codes:?}"
    );
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_fleet_a_logout_reaches_the_other_replicas_within_the_cache_ttl() {
    let Some(backend) = Backend::fleet("logout across replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let ttl = std::time::Duration::from_secs(5);
    let extra = [
        ("API_RATE_LIMIT_PER_USER", "0".to_string()),
        ("API_CACHE_TTL_MS", ttl.as_millis().to_string()),
    ];
    let first = Server::start_in(dir.path(), "api", &backend, &extra).await;
    let second = Server::start_in(dir.path(), "api", &backend, &extra).await;
    let token = first.login().await;
    // Both replicas have found the token standing, and remember it.
    assert_eq!(get_lists(&first, &token).await.0, 200);
    assert_eq!(get_lists(&second, &token).await.0, 200);
    let (status, body) = first
        .request("POST", "/auth/logout", Some(&token), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let logged_out = std::time::Instant::now();
    assert_eq!(
        get_lists(&first, &token).await.0,
        401,
        "the replica that took the logout refuses the token at once"
    );
    // The other replica still remembers the token standing: this is the lag the setting
    // allows (5 s here; the token was found standing there a moment ago).
    assert_eq!(
        get_lists(&second, &token).await.0,
        200,
        "the other replica answers from what it remembered"
    );
    // It forgets once the TTL runs out. (Not a speed claim: the bound below is the
    // setting's promise, with room for a slow machine.)
    let refused_after = loop {
        let (status, _) = get_lists(&second, &token).await;
        if status == 401 {
            break logged_out.elapsed();
        }
        assert_eq!(status, 200);
        assert!(
            logged_out.elapsed() < ttl * 4,
            "the second replica still accepts a token logged out {:?} ago (API_CACHE_TTL_MS={})",
            logged_out.elapsed(),
            ttl.as_millis()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    eprintln!("the second replica refused the token {refused_after:?} after the logout");
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_is_logged_out_at_once_and_admins_cannot_delete_themselves_or_the_last_admin()
 {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    deleting_users(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_too_a_deleted_user_is_logged_out_and_the_last_admin_stays() {
    let Some(backend) = Backend::fleet("deleting users on PostgreSQL").await else {
        return;
    };
    let server = Server::start("serve", &backend, &[]).await;
    deleting_users(&server).await;
    drop(server);
    backend.cleanup().await;
}

/// Admin deletes an editor: the editor's access and refresh tokens stop working at
/// once. Nobody deletes themselves, an editor deletes nobody, the last admin stays.
async fn deleting_users(server: &Server) {
    let admin = server.login().await;
    let (status, created) = server
        .request(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "eddie", "password": "an-editor-password", "role": "editor"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let eddie = created["id"].as_i64().expect("id");
    let (_, login) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "eddie", "password": "an-editor-password"})),
        )
        .await;
    let access = login["access_token"].as_str().expect("token").to_owned();
    let refresh = login["refresh_token"].clone();
    let (status, _) = server
        .request("GET", "/api/v1/lists", Some(&access), None)
        .await;
    assert_eq!(status, 200, "the editor's session works before");

    let (_, users) = server
        .request("GET", "/api/v1/users", Some(&admin), None)
        .await;
    let admin_id = users["items"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["username"] == "admin"))
        .and_then(|u| u["id"].as_i64())
        .expect("the admin is listed");
    let (status, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/users/{admin_id}"),
            Some(&access),
            None,
        )
        .await;
    assert_eq!(status, 403, "an editor cannot delete users: {body}");
    let (status, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/users/{admin_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 409, "nobody deletes themselves: {body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("your own account"),
        "{body}"
    );
    let (_, key) = server
        .request(
            "POST",
            "/api/v1/api-keys",
            Some(&admin),
            Some(json!({"name": "ops", "role": "admin"})),
        )
        .await;
    let key = key["key"].as_str().expect("an admin key").to_owned();
    let (status, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/users/{admin_id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 409, "the last admin stays: {body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("last admin"),
        "{body}"
    );

    let (status, shown) = server
        .request("GET", &format!("/api/v1/users/{eddie}"), Some(&admin), None)
        .await;
    assert_eq!(
        (status, &shown["username"]),
        (200, &json!("eddie")),
        "{shown}"
    );
    let (status, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/users/{eddie}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = server
        .request("GET", "/api/v1/lists", Some(&access), None)
        .await;
    assert_eq!(
        status, 401,
        "the deleted user's access token is refused: {body}"
    );
    let (status, body) = server
        .request(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(status, 401, "and so is their refresh token: {body}");
    let (status, _) = server
        .request(
            "POST",
            "/auth/login",
            None,
            Some(json!({"username": "eddie", "password": "an-editor-password"})),
        )
        .await;
    assert_eq!(status, 401, "they cannot log in again");
    let (status, _) = server
        .request("GET", &format!("/api/v1/users/{eddie}"), Some(&admin), None)
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .request(
            "DELETE",
            &format!("/api/v1/users/{eddie}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_fleet_the_login_throttle_holds_across_api_replicas() {
    let Some(backend) = Backend::fleet("login throttle across replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let extra = [("API_RATE_LIMIT_PER_IP", "0".to_string())];
    let first = Server::start_in(dir.path(), "api", &backend, &extra).await;
    let second = Server::start_in(dir.path(), "api", &backend, &extra).await;
    let attempt = |server: &Server| {
        let url = format!("{}/auth/login", server.base);
        let http = server.http.clone();
        async move {
            http.post(url)
                .json(&json!({"username": "admin", "password": "guess"}))
                .send()
                .await
                .expect("sent")
                .status()
                .as_u16()
        }
    };
    // Ten failures spread over two replicas: each process alone saw five, so only
    // counts shared through Redis reach the limit of ten.
    let mut codes = Vec::new();
    for i in 0..10 {
        codes.push(attempt(if i % 2 == 0 { &first } else { &second }).await);
    }
    assert_eq!(codes, vec![401; 10]);
    assert_eq!(attempt(&first).await, 429, "the 11th, on one replica");
    assert_eq!(attempt(&second).await, 429, "and on the other");
    backend.cleanup().await;
}
