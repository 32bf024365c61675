//! The HTTP API of Mailing (salvo): sessions (`/auth/*`), the business resources under
//! `/api/v1`, the seed's operational routes, one-click unsubscribe, and the hoops every
//! request passes (security headers, request id, authentication).
//!
//! Handlers validate and enqueue; they never send mail themselves. Errors are RFC 9457
//! problem+json ([`problem`]). The process wiring (binding, TLS, shutdown) lives in
//! `mailing-engine`.

pub mod auth;
pub mod cache;
pub mod limits;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod state;
pub mod transport;

use std::sync::Arc;

use salvo::catcher::Catcher;
use salvo::http::header::{self, HeaderName, HeaderValue};
use salvo::prelude::*;
use tracing::Instrument;

pub use state::{AppState, FaultInjector};

/// Adds the security headers of every answer and an `x-request-id`.
#[derive(Debug, Clone, Copy)]
pub struct SecurityHeaders {
    /// Send `Strict-Transport-Security` (only behind HTTPS).
    pub hsts: bool,
}

#[async_trait]
impl Handler for SecurityHeaders {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let span = tracing::info_span!("http", request_id = %request_id, method = %req.method(), route = %route_of(req.uri().path()));
        let started = std::time::Instant::now();
        ctrl.call_next(req, depot, res).instrument(span).await;
        mailing_jobs::telemetry::HttpRequestServed {
            route: route_of(req.uri().path()),
            status: res.status_code.map(|s| s.as_u16()).unwrap_or(200),
            elapsed: started.elapsed(),
        }
        .emit();
        // Swagger UI at /docs runs its own scripts (served from the binary, never from
        // elsewhere) and one inline bootstrap script; every other answer runs nothing.
        let csp = if req.uri().path().starts_with("/docs") {
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
        } else {
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
        };
        let headers = res.headers_mut();
        let fixed = [
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, "no-store"),
        ];
        for (name, value) in fixed {
            headers.insert(name, HeaderValue::from_static(value));
        }
        if self.hsts {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            );
        }
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), v);
        }
    }
}

/// Every route label; see [`route_of`].
const ROUTES: &[&str] = &[
    "/health",
    "/health/ready",
    "/metrics",
    "/auth/login",
    "/auth/refresh",
    "/auth/logout",
    "/api/v1/lists",
    "/api/v1/lists/{id}",
    "/api/v1/lists/{id}/subscribers",
    "/api/v1/templates",
    "/api/v1/templates/{id}",
    "/api/v1/templates/{id}/preview",
    "/api/v1/campaigns",
    "/api/v1/campaigns/{id}",
    "/api/v1/campaigns/{id}/send",
    "/api/v1/campaigns/{id}/pause",
    "/api/v1/campaigns/{id}/resume",
    "/api/v1/campaigns/{id}/cancel",
    "/api/v1/campaigns/{id}/deliveries",
    "/api/v1/campaigns/{id}/retry-failed",
    "/api/v1/subscribers",
    "/api/v1/subscribers/{id}",
    "/api/v1/subscribers/{id}/unsubscribe",
    "/api/v1/subscribers/{id}/export",
    "/api/v1/users",
    "/api/v1/users/{id}",
    "/api/v1/suppressions",
    "/api/v1/suppressions/{param}",
    "/api/v1/api-keys",
    "/api/v1/api-keys/{id}",
    "/api/v1/tx",
    "/api/v1/plugins",
    "/api/v1/plugins/{id}",
    "/api/v1/tx/{id}",
    "/admin/stats",
    "/admin/cache/stats",
    "/admin/cache/clear",
    "/admin/backup/list",
    "/admin/backup/create",
    "/admin/backup/restore",
    "/admin/debug/crash/{param}",
    "/unsubscribe/{param}",
    "/webhooks/resend",
    "/webhooks/bounce",
    "/openapi.json",
    "/docs",
];

/// A low-cardinality route label: numeric ids and tokens become placeholders, unknown
/// paths collapse to `other`.
pub fn route_of(path: &str) -> String {
    let mut parts = Vec::new();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let shown = if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            "{id}"
        } else if (i > 0 && matches!(segments[i - 1], "unsubscribe" | "suppressions" | "crash"))
            || seg.len() > 40
        {
            "{param}"
        } else {
            seg
        };
        parts.push(shown);
    }
    let route = format!("/{}", parts.join("/"));
    // Only routes that exist become label values; anything else (probes, typos) is one
    // series, so nobody can mint label values without a token.
    if ROUTES.contains(&route.as_str()) {
        route
    } else {
        "other".into()
    }
}

/// The router of every route: the API's routes under the state and the per-address
/// limit, and the OpenAPI document of them at `/openapi.json` (Swagger UI at `/docs`).
pub fn router(state: Arc<AppState>) -> Router {
    let api = api_routes(state.fault_injector.is_some(), state.metrics.is_some());
    let doc = openapi::document(&api);
    let mut root = Router::new()
        .hoop(affix_state::inject(state))
        .hoop(cache::ForgetOnWrite)
        .hoop(limits::LimitByAddress)
        .push(api);
    match openapi::routes(&doc) {
        Ok(docs) => root = root.push(docs),
        Err(e) => {
            tracing::error!(error = %e, "The OpenAPI document could not be rendered; /openapi.json and /docs are off")
        }
    }
    root
}

/// Every documented route, without the hoops that need the state.
fn api_routes(fault_injection: bool, metrics: bool) -> Router {
    use routes::*;
    use salvo::oapi::{RouterExt, SecurityRequirement};
    let authed = Router::new()
        .oapi_security(SecurityRequirement::new(
            openapi::BEARER,
            Vec::<String>::new(),
        ))
        .hoop(auth::Authenticate)
        .hoop(limits::LimitByCaller)
        .push(Router::with_path("auth/logout").post(session::logout))
        .push(
            Router::with_path("api/v1")
                .push(
                    Router::with_path("lists")
                        .get(lists::index)
                        .post(lists::create)
                        .push(
                            Router::with_path("{id}")
                                .get(lists::show)
                                .patch(lists::update)
                                .delete(lists::delete)
                                .push(
                                    Router::with_path("subscribers")
                                        .get(lists::subscribers)
                                        .post(lists::add_subscribers),
                                ),
                        ),
                )
                .push(
                    Router::with_path("templates")
                        .get(templates::index)
                        .post(templates::create)
                        .push(
                            Router::with_path("{id}")
                                .get(templates::show)
                                .put(templates::replace)
                                .delete(templates::delete)
                                .push(Router::with_path("preview").post(templates::preview)),
                        ),
                )
                .push(
                    Router::with_path("campaigns")
                        .get(campaigns::index)
                        .post(campaigns::create)
                        .push(
                            Router::with_path("{id}")
                                .get(campaigns::show)
                                .patch(campaigns::update)
                                .delete(campaigns::delete)
                                .push(Router::with_path("send").post(campaigns::send))
                                .push(Router::with_path("pause").post(campaigns::pause))
                                .push(Router::with_path("resume").post(campaigns::resume))
                                .push(Router::with_path("cancel").post(campaigns::cancel))
                                .push(Router::with_path("deliveries").get(campaigns::deliveries))
                                .push(
                                    Router::with_path("retry-failed").post(campaigns::retry_failed),
                                ),
                        ),
                )
                .push(
                    Router::with_path("tx")
                        .post(tx::create)
                        .push(Router::with_path("{id}").get(tx::show)),
                )
                .push(
                    Router::with_path("api-keys")
                        .get(api_keys::index)
                        .post(api_keys::create)
                        .push(Router::with_path("{id}").delete(api_keys::revoke)),
                )
                .push(
                    Router::with_path("subscribers")
                        .get(subscribers::search)
                        .push(
                            Router::with_path("{id}")
                                .get(subscribers::show)
                                .patch(subscribers::update)
                                .delete(subscribers::erase)
                                .push(
                                    Router::with_path("unsubscribe").post(subscribers::unsubscribe),
                                )
                                .push(Router::with_path("export").get(subscribers::export)),
                        ),
                )
                .push(
                    Router::with_path("suppressions")
                        .get(suppressions::index)
                        .post(suppressions::create)
                        .push(Router::with_path("{email}").delete(suppressions::delete)),
                )
                .push(
                    Router::with_path("plugins")
                        .get(plugins::index)
                        .post(plugins::create)
                        .push(
                            Router::with_path("{id}")
                                .get(plugins::show)
                                .delete(plugins::delete),
                        ),
                )
                .push(
                    Router::with_path("users")
                        .get(users::index)
                        .post(users::create)
                        .push(
                            Router::with_path("{id}")
                                .get(users::show)
                                .delete(users::delete),
                        ),
                ),
        )
        .push({
            let mut admin = Router::with_path("admin")
                .push(Router::with_path("stats").get(ops::stats))
                .push(Router::with_path("cache/stats").get(ops::cache_stats))
                .push(Router::with_path("cache/clear").post(ops::cache_clear))
                .push(Router::with_path("backup/list").get(ops::backup_list))
                .push(Router::with_path("backup/create").post(ops::backup_create))
                .push(Router::with_path("backup/restore").post(ops::backup_restore));
            if fault_injection {
                admin = admin.push(Router::with_path("debug/crash/{component}").post(ops::crash));
            }
            admin
        });
    let mut root = Router::new().push(
        Router::with_path("health")
            .get(ops::health)
            .push(Router::with_path("ready").get(ops::ready)),
    );
    if metrics {
        root = root.push(Router::with_path("metrics").get(ops::metrics));
    }
    root.push(Router::with_path("auth/login").post(session::login))
        .push(Router::with_path("auth/refresh").post(session::refresh))
        .push(Router::with_path("webhooks/resend").post(webhooks::resend))
        .push(Router::with_path("webhooks/bounce").post(webhooks::bounce))
        .push(
            Router::with_path("unsubscribe/{token}")
                .get(unsubscribe::confirm)
                .post(unsubscribe::one_click),
        )
        .push(authed)
}

/// The service of the `PROMETHEUS_PORT` listener: `GET /metrics` and nothing else
/// (problem+json 404 for any other path).
pub fn metrics_service(registry: prometheus::Registry) -> Service {
    Service::new(
        Router::new().push(Router::with_path("metrics").get(routes::ops::MetricsOnly(registry))),
    )
    .hoop(SecurityHeaders { hsts: false })
    .catcher(Catcher::default().hoop(problem::problem_catcher))
}

/// The service: the router, the security headers, the plain-HTTP redirect and CORS when
/// configured, and problem+json error pages.
pub fn service(state: Arc<AppState>) -> Service {
    let policy = state.transport.clone();
    let mut service = Service::new(router(state)).hoop(SecurityHeaders { hsts: policy.hsts });
    if let Some(target) = &policy.redirect_to {
        service = service.hoop(transport::ForceHttps::new(target, policy.behind_proxy));
    }
    if let Some(cors) = transport::CorsHoop::new(&policy.cors_origins) {
        service = service.hoop(cors);
    }
    service.catcher(Catcher::default().hoop(problem::problem_catcher))
}

#[cfg(test)]
mod tests {
    use super::{ROUTES, route_of};

    /// `/a/{id}/b` and `/a/{param}/b` name the same route.
    fn shape(path: &str) -> String {
        path.split('/')
            .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn the_openapi_document_covers_every_route_with_its_parameters_and_answers() {
        let doc = super::openapi::document(&super::api_routes(true, true));
        let json: serde_json::Value =
            serde_json::from_str(&doc.to_json().expect("the document renders")).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        let paths = json["paths"].as_object().expect("paths");
        let documented: Vec<String> = paths.keys().map(|p| shape(p)).collect();
        let missing: Vec<&str> = ROUTES
            .iter()
            .copied()
            .filter(|r| !matches!(*r, "/openapi.json" | "/docs"))
            .filter(|r| !documented.contains(&shape(r)))
            .collect();
        assert!(
            missing.is_empty(),
            "routes missing from /openapi.json: {missing:?}"
        );
        for (path, item) in paths {
            let declared: Vec<String> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}').map(str::to_owned))
                .collect();
            for (method, op) in item.as_object().unwrap() {
                let params: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                for name in &declared {
                    assert!(
                        params.contains(&name.as_str()),
                        "{method} {path}: path parameter `{name}` is not declared"
                    );
                }
                let answers = op["responses"].as_object().expect("responses");
                assert!(
                    answers
                        .keys()
                        .any(|code| code.starts_with('2') || code.starts_with('3')),
                    "{method} {path}: no success answer documented: {:?}",
                    answers.keys().collect::<Vec<_>>()
                );
            }
        }
        let import = &paths["/api/v1/lists/{id}/subscribers"]["post"]["requestBody"]["content"];
        assert!(
            import["application/json"].is_object() && import["text/csv"].is_object(),
            "the import takes JSON and CSV: {import}"
        );
        let upload = &paths["/api/v1/plugins"]["post"]["requestBody"]["content"];
        for media in [
            "application/wasm",
            "application/octet-stream",
            "multipart/form-data",
        ] {
            assert!(
                upload[media].is_object(),
                "plugin upload takes {media}: {upload}"
            );
        }
        for name in json["components"]["schemas"].as_object().unwrap().keys() {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
                "schema name `{name}` is not a valid component key"
            );
        }
    }

    /// The request bodies state the limits their handlers enforce, from the same
    /// constants where the code has one.
    #[test]
    fn request_body_schemas_state_the_limits_the_handlers_enforce() {
        use super::routes::{campaigns, lists, users};
        use mailing_jobs::render::MAX_TEMPLATE_BYTES;
        use mailing_jobs::store::subscribers::{MAX_EMAIL_LEN, MAX_NAME_LEN};

        let doc = super::openapi::document(&super::api_routes(true, true));
        let json: serde_json::Value =
            serde_json::from_str(&doc.to_json().expect("the document renders")).unwrap();
        let schemas = &json["components"]["schemas"];
        let field = |schema: &str, name: &str| schemas[schema]["properties"][name].clone();
        for schema in ["NewList", "ListChanges"] {
            assert_eq!(field(schema, "name")["minLength"], 1, "{schema}");
            assert_eq!(field(schema, "name")["maxLength"], 200, "{schema}");
            assert_eq!(field(schema, "description")["maxLength"], 2000, "{schema}");
        }
        assert_eq!(
            field("ListChanges", "name")["type"],
            "string",
            "not nullable"
        );
        let patch = &json["paths"]["/api/v1/lists/{id}"]["patch"];
        assert_eq!(
            patch["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ListChanges"
        );
        assert_eq!(schemas["SubscriberRows"]["minItems"], 1);
        assert_eq!(
            schemas["SubscriberRows"]["maxItems"],
            lists::IMPORT_MAX_ROWS
        );
        for schema in ["CampaignDraft", "CampaignChanges"] {
            assert_eq!(field(schema, "list_ids")["minItems"], 1, "{schema}");
            assert_eq!(
                field(schema, "list_ids")["maxItems"],
                campaigns::MAX_LISTS,
                "{schema}"
            );
            assert_eq!(
                field(schema, "plugins")["maxItems"],
                campaigns::MAX_PLUGINS,
                "{schema}"
            );
        }
        for schema in ["CampaignDraft", "CampaignChanges", "TxDraft"] {
            let provider = field(schema, "provider").to_string();
            assert!(
                provider.contains("#/components/schemas/ProviderKind"),
                "{schema}: {provider}"
            );
        }
        for part in ["subject", "html", "text"] {
            assert_eq!(
                field("TemplateDraft", part)["maxLength"],
                MAX_TEMPLATE_BYTES,
                "{part}"
            );
        }
        assert_eq!(
            field("NewUser", "password")["minLength"],
            users::MIN_PASSWORD_LEN
        );
        for schema in ["NewUser", "NewApiKey"] {
            assert_eq!(
                field(schema, "role")["allOf"][0]["$ref"],
                "#/components/schemas/Role",
                "{schema}"
            );
        }
        for schema in ["NewSubscriber", "NewSuppression", "BounceReport"] {
            assert_eq!(field(schema, "email")["format"], "email", "{schema}");
            assert_eq!(
                field(schema, "email")["maxLength"],
                MAX_EMAIL_LEN,
                "{schema}"
            );
        }
        for schema in ["NewSubscriber", "SubscriberUpdate"] {
            assert_eq!(field(schema, "name")["maxLength"], MAX_NAME_LEN, "{schema}");
            // No control character: `char::is_control` is exactly these two ranges.
            assert_eq!(
                field(schema, "name")["pattern"],
                r"^[^\u0000-\u001F\u007F-\u009F]*$",
                "{schema}"
            );
        }
    }

    #[test]
    fn route_labels_are_patterns_and_unknown_paths_collapse() {
        assert_eq!(
            route_of("/api/v1/campaigns/42/send"),
            "/api/v1/campaigns/{id}/send"
        );
        assert_eq!(route_of("/unsubscribe/abc.def"), "/unsubscribe/{param}");
        assert_eq!(route_of("/api/v1/abc123"), "other");
        assert_eq!(route_of("/adminfoo"), "other");
        assert_eq!(route_of("/wp-login.php"), "other");
    }
}
