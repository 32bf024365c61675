//! Request rate limits, answered with 429 problem+json and `Retry-After`:
//!
//! * per client address ([`LimitByAddress`]), on every route but `/health`, `/metrics`
//!   and the provider webhooks (a provider may legitimately burst, and its requests are
//!   signed);
//! * per authenticated caller, a user or an API key ([`LimitByCaller`]), on `/api/v1`
//!   and `/admin`.
//!
//! Both are GCRA with a burst of one second's worth (`mailing_jobs::ratelimit::KeyedLimiter`),
//! held in Redis when it is configured, so they hold across API replicas. The address is
//! the TCP peer's: behind a reverse proxy, every request shares the proxy's address, so
//! raise or disable the per-address limit there and rely on the proxy's own.

use mailing_jobs::ratelimit::KeyedLimiter;
use salvo::prelude::*;

use crate::auth::principal;
use crate::problem::ApiError;

/// The limiters of the API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Per client address (`API_RATE_LIMIT_PER_IP`).
    pub per_address: KeyedLimiter,
    /// Per user or API key (`API_RATE_LIMIT_PER_USER`).
    pub per_caller: KeyedLimiter,
}

impl ApiLimits {
    /// No limits.
    pub fn off() -> Self {
        ApiLimits {
            per_address: KeyedLimiter::Off,
            per_caller: KeyedLimiter::Off,
        }
    }
}

fn too_many(wait: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests(wait.as_secs_f64().ceil().max(1.0) as u64)
}

fn exempt(path: &str) -> bool {
    path == "/health"
        || path.starts_with("/health/")
        || path == "/metrics"
        || path.starts_with("/webhooks/")
}

/// The per-address hoop.
#[derive(Debug, Clone, Copy)]
pub struct LimitByAddress;

#[async_trait]
impl Handler for LimitByAddress {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        if exempt(req.uri().path()) {
            return;
        }
        let Ok(state) = crate::state::from_depot(depot) else {
            return;
        };
        let address = req
            .remote_addr()
            .ip()
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if let Err(wait) = state.limits.per_address.check(&address).await {
            too_many(wait).write(req, depot, res).await;
            ctrl.skip_rest();
        }
    }
}

/// The per-caller hoop; it runs after `Authenticate`.
#[derive(Debug, Clone, Copy)]
pub struct LimitByCaller;

#[async_trait]
impl Handler for LimitByCaller {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let (Ok(state), Ok(who)) = (crate::state::from_depot(depot), principal(depot)) else {
            return;
        };
        let caller = if who.user_id > 0 {
            format!("user:{}", who.user_id)
        } else {
            who.jti.clone()
        };
        if let Err(wait) = state.limits.per_caller.check(&caller).await {
            too_many(wait).write(req, depot, res).await;
            ctrl.skip_rest();
        }
    }
}
