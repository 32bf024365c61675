//! End to end: the HTTP surface of the real binary — HTTPS in process (rustls) with a
//! certificate made by openssl, `FORCE_HTTPS` redirects (in process and behind a proxy),
//! CORS closed by default and open to configured origins only, and the OpenAPI
//! document with its docs page.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{ADMIN_PASSWORD, Backend, Server, free_port};

/// A test CA and a server certificate for 127.0.0.1 signed by it (webpki refuses a
/// CA certificate used as the server's own). Returns (CA cert, server chain, server key).
fn certificates(dir: &Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("openssl (Debian's openssl package) makes the test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
    let (csr, cert, key) = (path("server.csr"), path("server.pem"), path("server.key"));
    let ext = path("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .expect("ext file");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Mailing test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca, cert, key)
}

fn client(root_pem: Option<&[u8]>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20));
    if let Some(pem) = root_pem {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).expect("a PEM"));
    }
    b.build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_in_process_serves_tls_with_hsts_and_force_https_redirects_plain_http() {
    let certs = tempfile::tempdir().expect("tmp");
    let (ca, cert, key) = certificates(certs.path());
    let https_port = free_port();
    let server = Server::start(
        "serve",
        &Backend::embedded(),
        &[
            ("HTTPS_ENABLED", "true".into()),
            ("HTTPS_PORT", https_port.to_string()),
            ("SSL_CERT_FILE", cert),
            ("SSL_KEY_FILE", key),
            ("FORCE_HTTPS", "true".into()),
        ],
    )
    .await;
    let plain = client(None);

    // Probes stay on plain HTTP; everything else is sent to HTTPS with its method kept.
    let health = plain
        .get(format!("{}/health", server.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    for (method, path) in [("GET", "/api/v1/lists?limit=5"), ("POST", "/auth/login")] {
        let res = plain
            .request(method.parse().unwrap(), format!("{}{path}", server.base))
            .send()
            .await
            .expect("plain request");
        assert_eq!(res.status(), 308, "{method} {path} over plain HTTP");
        assert_eq!(
            res.headers().get("location").and_then(|v| v.to_str().ok()),
            Some(format!("https://127.0.0.1:{https_port}{path}").as_str())
        );
    }

    let pem = std::fs::read(&ca).expect("CA cert");
    let tls = client(Some(&pem));
    let base = format!("https://127.0.0.1:{https_port}");
    let res = tls
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login over TLS");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("max-age=")),
        "HSTS on HTTPS answers"
    );
    let token = res.json::<serde_json::Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let lists = tls
        .get(format!("{base}/api/v1/lists"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("lists over TLS");
    assert_eq!(lists.status(), 200);

    // A client that does not trust the certificate is refused by TLS, not served.
    assert!(
        client(None)
            .get(format!("{base}/health"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_https_behind_a_proxy_redirects_by_forwarded_proto_to_public_url() {
    let server = Server::start(
        "serve",
        &Backend::embedded(),
        &[
            ("FORCE_HTTPS", "true".into()),
            ("PUBLIC_URL", "https://mail.example.com".into()),
        ],
    )
    .await;
    let plain = client(None);
    let res = plain
        .get(format!("{}/api/v1/lists", server.base))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 308);
    assert_eq!(
        res.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("https://mail.example.com/api/v1/lists")
    );
    // What the proxy forwards from its HTTPS side is served (here: 401 without a token).
    let res = plain
        .get(format!("{}/api/v1/lists", server.base))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("strict-transport-security"));
}

/// Runs `mailing serve` with `env` and expects it to refuse to start, saying `expect`.
fn refuses_to_start(env: &[(&str, &str)], expect: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut all = support::base_env(dir.path(), free_port());
    for (k, v) in env {
        all.insert((*k).to_owned(), (*v).to_owned());
    }
    let out = Command::new(support::binary())
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .envs(&all)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "it must not start: {text}");
    assert!(text.contains(expect), "{expect:?} in: {text}");
}

#[test]
fn bad_transport_settings_are_clear_startup_errors() {
    refuses_to_start(
        &[
            ("HTTPS_ENABLED", "true"),
            ("SSL_CERT_FILE", "/nonexistent/cert.pem"),
        ],
        "SSL_CERT_FILE=\"/nonexistent/cert.pem\" cannot be read",
    );
    refuses_to_start(&[("FORCE_HTTPS", "true")], "FORCE_HTTPS=true needs");
    refuses_to_start(
        &[("CORS_ALLOWED_ORIGINS", "*")],
        "CORS_ALLOWED_ORIGINS: \"*\" is not an origin",
    );
}

async fn preflight(server: &Server, origin: &str) -> reqwest::Response {
    client(None)
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/campaigns", server.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .expect("preflight")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_closed_by_default_and_open_only_to_configured_origins() {
    let closed = Server::start("serve", &Backend::embedded(), &[]).await;
    let res = preflight(&closed, "https://app.example.com").await;
    assert!(
        !res.headers().contains_key("access-control-allow-origin"),
        "no CORS headers unless configured"
    );

    let open = Server::start(
        "serve",
        &Backend::embedded(),
        &[(
            "CORS_ALLOWED_ORIGINS",
            "https://app.example.com, http://localhost:3000".into(),
        )],
    )
    .await;
    let res = preflight(&open, "https://app.example.com").await;
    assert_eq!(res.status(), 204);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&res, "access-control-allow-methods").contains("patch"));
    assert!(header(&res, "access-control-allow-headers").contains("authorization"));

    let res = preflight(&open, "https://evil.example").await;
    assert!(
        !res.headers().contains_key("access-control-allow-origin"),
        "an origin not listed gets nothing a browser would accept"
    );

    let res = client(None)
        .get(format!("{}/health", open.base))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        "http://localhost:3000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_its_docs_page_are_served() {
    let server = Server::start("serve", &Backend::embedded(), &[]).await;
    let http = client(None);
    let doc: serde_json::Value = http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/campaigns/{id}/send"]["post"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let page = http
        .get(format!("{}/docs/", server.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    assert!(
        html.contains("/openapi.json"),
        "the page loads our document"
    );
    let asset = http
        .get(format!("{}/docs/swagger-ui-bundle.js", server.base))
        .send()
        .await
        .expect("sent");
    assert_eq!(asset.status(), 200, "assets come from the binary");
}
