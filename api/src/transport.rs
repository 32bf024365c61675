//! How the API meets the network: whether HTTPS is in front (HSTS), redirecting plain
//! HTTP to HTTPS (`FORCE_HTTPS`), and which browser origins may call it (CORS, closed
//! unless `CORS_ALLOWED_ORIGINS` names some). TLS itself is terminated by the listener
//! in `mailing-engine` (rustls) or by a proxy in front.

use salvo::cors::{AllowHeaders, AllowMethods, AllowOrigin, CallNext, Cors, CorsHandler};
use salvo::http::header::{self, HeaderValue};
use salvo::http::uri::Scheme;
use salvo::http::{Method, StatusCode};
use salvo::prelude::*;

/// The transport settings of the API.
#[derive(Debug, Clone, Default)]
pub struct TransportPolicy {
    /// Send `Strict-Transport-Security` (HTTPS is in process or in a proxy in front).
    pub hsts: bool,
    /// `FORCE_HTTPS`: where plain-HTTP requests are redirected (`https://host[:port]`,
    /// no trailing slash). None: plain HTTP is served.
    pub redirect_to: Option<String>,
    /// TLS is terminated by a proxy: a request is plain when its `X-Forwarded-Proto`
    /// says `http` (the connection itself is always plain then).
    pub behind_proxy: bool,
    /// Origins (`https://app.example.com`) browsers may call the API from. Empty: no
    /// CORS headers at all, so browsers refuse cross-origin calls.
    pub cors_origins: Vec<String>,
}

/// Routes a plain-HTTP probe must still reach (load balancers, Prometheus).
const PLAIN_HTTP_EXEMPT: &[&str] = &["/health", "/health/ready", "/metrics"];

/// Redirects plain-HTTP requests to HTTPS with 308 (the method and body are kept, so a
/// client that POSTs over HTTP learns the right address instead of silently losing the
/// body). The target is the configured origin, never the request's `Host` header.
#[derive(Debug, Clone)]
pub struct ForceHttps {
    target: String,
    behind_proxy: bool,
}

impl ForceHttps {
    /// A redirect to `target` (`https://host[:port]`).
    pub fn new(target: impl Into<String>, behind_proxy: bool) -> Self {
        ForceHttps {
            target: target.into().trim_end_matches('/').to_owned(),
            behind_proxy,
        }
    }

    fn is_plain(&self, req: &Request) -> bool {
        if self.behind_proxy {
            req.headers()
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("http"))
        } else {
            req.scheme() != &Scheme::HTTPS
        }
    }
}

#[async_trait]
impl Handler for ForceHttps {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        if !self.is_plain(req) || PLAIN_HTTP_EXEMPT.contains(&req.uri().path()) {
            return;
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        match HeaderValue::from_str(&format!("{}{path}", self.target)) {
            Ok(location) => {
                res.headers_mut().insert(header::LOCATION, location);
                res.status_code(StatusCode::PERMANENT_REDIRECT);
            }
            Err(_) => {
                res.status_code(StatusCode::BAD_REQUEST);
            }
        }
        ctrl.skip_rest();
    }
}

/// The CORS hoop for the configured origins: a preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) is answered here with 204 and never reaches the
/// router; any other request runs and then gets the CORS headers when its origin is
/// allowed.
#[derive(Debug, Clone)]
pub struct CorsHoop {
    preflight: CorsHandler,
    actual: CorsHandler,
}

impl CorsHoop {
    /// The hoop for `origins`, or None when CORS is closed (no origins).
    pub fn new(origins: &[String]) -> Option<Self> {
        let cors = cors(origins)?;
        Some(CorsHoop {
            preflight: CorsHandler::new(cors.clone(), CallNext::After),
            actual: CorsHandler::new(cors, CallNext::Before),
        })
    }
}

#[async_trait]
impl Handler for CorsHoop {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let preflight = req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ORIGIN)
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            ctrl.skip_rest();
            self.preflight.handle(req, depot, res, ctrl).await;
        } else {
            self.actual.handle(req, depot, res, ctrl).await;
        }
    }
}

fn cors(origins: &[String]) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    Some(
        Cors::new()
            .allow_origin(AllowOrigin::list(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect::<Vec<_>>(),
            ))
            .allow_methods(AllowMethods::list([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ]))
            .allow_headers(AllowHeaders::list([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
            ]))
            .expose_headers(vec![
                header::RETRY_AFTER,
                header::HeaderName::from_static("x-request-id"),
            ])
            .max_age(600),
    )
}
