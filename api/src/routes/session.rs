//! `/auth/login`, `/auth/refresh`, `/auth/logout`.

use salvo::prelude::*;
use serde::Deserialize;

use super::{has_body, json_body};
use crate::auth::{decoy_hash, principal, refresh_token_id, verify_password};
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::tokens::RefreshOutcome;

const AUTH_BODY_LIMIT: usize = 8 * 1024;

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct Refresh {
    refresh_token: String,
}

#[derive(Deserialize, Default)]
struct Logout {
    #[serde(default)]
    refresh_token: Option<String>,
}

fn client_ip(req: &Request) -> String {
    req.remote_addr()
        .ip()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `POST /auth/login`.
#[handler]
pub async fn login(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let body: Login = json_body(req, AUTH_BODY_LIMIT).await?;
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
        if let Some(wait) = state.throttle.blocked_for(key, limit) {
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
        state.throttle.fail(&account_ip_key);
        state.throttle.fail(&ip_key);
        state.throttle.fail(&account_key);
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    state.throttle.reset(&account_ip_key);
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
    res.render(Json(pair));
    Ok(())
}

/// `POST /auth/refresh`: rotates the refresh token.
#[handler]
pub async fn refresh(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let body: Refresh = json_body(req, AUTH_BODY_LIMIT).await?;
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
            res.render(Json(pair));
            Ok(())
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
#[handler]
pub async fn logout(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?.clone();
    let body: Logout = if has_body(req) {
        json_body(req, AUTH_BODY_LIMIT).await?
    } else {
        Logout::default()
    };
    state
        .store
        .revoke_access_token(&who.jti, who.exp * 1000)
        .await?;
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
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}
