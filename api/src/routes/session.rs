//! `/auth/login`, `/auth/refresh`, `/auth/logout`.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use super::{has_body, json_body};
use crate::auth::{decoy_hash, principal, refresh_token_id, verify_password};
use crate::openapi::NoContent;
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::tokens::RefreshOutcome;

const AUTH_BODY_LIMIT: usize = 8 * 1024;

/// A username and password to log in with (the body is at most 8 KiB).
#[derive(Deserialize, ToSchema)]
struct LoginRequest {
    /// The login name.
    username: String,
    /// The password.
    password: String,
}

/// A refresh token to exchange for a new pair (the body is at most 8 KiB).
#[derive(Deserialize, ToSchema)]
struct RefreshRequest {
    /// The `refresh_token` of the last pair; it works once.
    refresh_token: String,
}

/// What to end besides the access token (the body is optional, at most 8 KiB).
#[derive(Deserialize, Default, ToSchema)]
struct LogoutRequest {
    /// A refresh token of this login: its whole family is revoked too.
    #[serde(default)]
    refresh_token: Option<String>,
}

/// A session: a short-lived access token and the refresh token that renews it.
#[derive(Debug, Serialize, ToSchema)]
struct TokenPair {
    /// The JWT to send as `Authorization: Bearer <access_token>`.
    access_token: String,
    /// Opaque; exchange it at `/auth/refresh` for a new pair (once).
    refresh_token: String,
    /// Always `Bearer`.
    token_type: String,
    /// Seconds until the access token expires.
    expires_in: u64,
}

impl From<crate::auth::TokenPair> for TokenPair {
    fn from(pair: crate::auth::TokenPair) -> Self {
        let crate::auth::TokenPair {
            access_token,
            refresh_token,
            token_type,
            expires_in,
        } = pair;
        TokenPair {
            access_token,
            refresh_token,
            token_type: token_type.to_owned(),
            expires_in,
        }
    }
}

fn client_ip(req: &Request) -> String {
    req.remote_addr()
        .ip()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `POST /auth/login`: a new session. 401 for a wrong username or password; 429 (with
/// `Retry-After`) after repeated failures for the account or from the address.
#[endpoint(tags("sessions"), request_body = LoginRequest)]
pub async fn login(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<TokenPair>> {
    let state = from_depot(depot)?;
    let body: LoginRequest = json_body(req, AUTH_BODY_LIMIT).await?;
    // Three counters: this account from this address (a flood from one place locks only
    // that place out), this address for any account, and this account from anywhere
    // (a high ceiling against distributed guessing).
    let ip = client_ip(req);
    let account = body.username.to_lowercase();
    let account_ip_key = format!("user:{account}:ip:{ip}");
    let ip_key = format!("ip:{ip}");
    let account_key = format!("user:{account}");
    for (key, limit) in [
        (&account_ip_key, state.auth.max_failures_per_account),
        (&ip_key, state.auth.max_failures_per_ip),
        (&account_key, state.auth.max_failures_per_account_anywhere),
    ] {
        if let Some(wait) = state.throttle.blocked_for(key, limit).await {
            return Err(ApiError::TooManyRequests(wait));
        }
    }
    let user = state.store.user_credentials(&body.username).await?;
    let password = body.password;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_owned());
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let Some(user) = user.filter(|_| ok) else {
        state.throttle.fail(&account_ip_key).await;
        state.throttle.fail(&ip_key).await;
        state.throttle.fail(&account_key).await;
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    state.throttle.reset(&account_ip_key).await;
    let role: Role = user
        .role
        .parse()
        .map_err(|e: mailing_jobs::UnknownValue| ApiError::Internal(e.to_string()))?;
    let pair = state
        .issue_tokens(user.id, &user.username, role, None)
        .await?;
    state
        .store
        .audit(&user.username, "auth.login", None, &serde_json::json!({}))
        .await?;
    Ok(Json(pair.into()))
}

/// `POST /auth/refresh`: rotates the refresh token: a new pair, and the old refresh
/// token stops working. 401 for an unknown, expired or revoked token; presenting a used
/// one revokes every token of its login.
#[endpoint(tags("sessions"), request_body = RefreshRequest)]
pub async fn refresh(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<TokenPair>> {
    let state = from_depot(depot)?;
    let body: RefreshRequest = json_body(req, AUTH_BODY_LIMIT).await?;
    match state
        .store
        .use_refresh_token(&refresh_token_id(&body.refresh_token))
        .await?
    {
        RefreshOutcome::Rotated { user_id, family_id } => {
            let user = state.store.user(user_id).await?;
            let role: Role = user
                .role
                .parse()
                .map_err(|e: mailing_jobs::UnknownValue| ApiError::Internal(e.to_string()))?;
            let pair = state
                .issue_tokens(user.id, &user.username, role, Some(family_id))
                .await?;
            Ok(Json(pair.into()))
        }
        RefreshOutcome::Reused => Err(ApiError::Unauthorized(
            "this refresh token was already used; every session of its login is now revoked".into(),
        )),
        RefreshOutcome::Invalid => Err(ApiError::Unauthorized(
            "the refresh token is not valid or expired".into(),
        )),
    }
}

/// `POST /auth/logout`: revokes the access token and, when given, the refresh family.
#[endpoint(tags("sessions"), request_body = Option<LogoutRequest>)]
pub async fn logout(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
    let state = from_depot(depot)?;
    let who = principal(depot)?.clone();
    let body: LogoutRequest = if has_body(req) {
        json_body(req, AUTH_BODY_LIMIT).await?
    } else {
        LogoutRequest::default()
    };
    state
        .store
        .revoke_access_token(&who.jti, who.exp * 1000)
        .await?;
    state.cache.sessions_changed();
    if let Some(token) = body.refresh_token
        && let Some(family) = state
            .store
            .refresh_family(&refresh_token_id(&token))
            .await?
    {
        state.store.revoke_refresh_family(&family).await?;
    }
    state
        .store
        .audit(&who.username, "auth.logout", None, &serde_json::json!({}))
        .await?;
    Ok(NoContent)
}
