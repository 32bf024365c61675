//! `/api/v1/users` (admin only): create, list, read and delete the people who log in.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Deserialize;

use super::{JSON_LIMIT, PageQuery, json_body, pagination, path_id};
use crate::auth::{hash_password, principal};
use crate::openapi::{Created, NoContent};
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::Page;
use mailing_jobs::store::users::User;

/// The shortest password a user may set.
pub const MIN_PASSWORD_LEN: usize = 12;

/// A user to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    /// The login name: 1 to 64 characters of letters, digits, `.`, `_`, `-` or `@`
    /// (surrounding spaces are trimmed); unique.
    #[salvo(schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._@-]+$"))]
    username: String,
    /// At least 12 characters and at most 1,024 bytes.
    #[salvo(schema(min_length = 12, max_length = 1024))]
    password: String,
    /// `admin`, `editor` or `viewer`.
    #[salvo(schema(value_type = Role))]
    role: String,
}

/// `POST /api/v1/users`: creates a user (admin); 409 when the name is taken.
#[endpoint(tags("users"), request_body = NewUser)]
pub async fn create(req: &mut Request, depot: &mut Depot) -> ApiResult<Created<User>> {
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
    Ok(Created(user))
}

/// `GET /api/v1/users`: one page of users (admin).
#[endpoint(tags("users"), parameters(PageQuery))]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Page<User>>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(state.store.users(after, limit).await?))
}

/// `GET /api/v1/users/{id}`: one user (admin).
#[endpoint(tags("users"), parameters(("id" = i64, Path, description = "The user")))]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<User>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    Ok(Json(state.store.user(path_id(req, "id")?).await?))
}

/// `DELETE /api/v1/users/{id}`: deletes the user and ends their sessions: their
/// refresh tokens stop working at once, and so do their access tokens on this API
/// process (on other replicas within `API_CACHE_TTL_MS`) (admin). 409 for your own
/// account or the last admin.
#[endpoint(tags("users"), parameters(("id" = i64, Path, description = "The user")))]
pub async fn delete(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let id = path_id(req, "id")?;
    if id == who.user_id {
        return Err(ApiError::Conflict(
            "you cannot delete your own account; another admin can".into(),
        ));
    }
    let user = state.store.delete_user(id).await?;
    state.cache.sessions_changed();
    state
        .store
        .audit(
            &who.username,
            "user.delete",
            Some(&format!("user:{id}")),
            &serde_json::json!({"username": user.username, "role": user.role}),
        )
        .await?;
    Ok(NoContent)
}
