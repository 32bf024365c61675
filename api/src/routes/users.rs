//! `/api/v1/users` (admin only).

use salvo::prelude::*;
use serde::Deserialize;

use super::{JSON_LIMIT, json_body, pagination};
use crate::auth::{hash_password, principal};
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;

/// The shortest password a user may set.
pub const MIN_PASSWORD_LEN: usize = 12;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    role: String,
}

/// `POST /api/v1/users`.
#[handler]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let body: NewUser = json_body(req, JSON_LIMIT).await?;
    let username = body.username.trim();
    if username.is_empty()
        || username.len() > 64
        || !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(ApiError::field(
            "username",
            "must be 1 to 64 characters of letters, digits, '.', '_', '-' or '@'",
        ));
    }
    if body.password.chars().count() < MIN_PASSWORD_LEN || body.password.len() > 1024 {
        return Err(ApiError::field(
            "password",
            format!("must be at least {MIN_PASSWORD_LEN} characters (and at most 1024 bytes)"),
        ));
    }
    let role: Role = body
        .role
        .parse()
        .map_err(|e: mailing_jobs::UnknownValue| ApiError::field("role", e.to_string()))?;
    let password = body.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let user = state.store.create_user(username, &hash, role).await?;
    state
        .store
        .audit(
            &who.username,
            "user.create",
            Some(&format!("user:{}", user.id)),
            &serde_json::json!({"role": role}),
        )
        .await?;
    res.status_code(StatusCode::CREATED).render(Json(serde_json::json!({
        "id": user.id, "username": user.username, "role": user.role, "created_at": user.created_at
    })));
    Ok(())
}

/// `GET /api/v1/users`.
#[handler]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(serde_json::json!(
        state.store.users(after, limit).await?
    )))
}
