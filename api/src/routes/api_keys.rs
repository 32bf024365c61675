//! `/api/v1/api-keys` (admin): keys for machines, scoped by role. The key text is
//! returned once at creation; only its prefix is listed afterwards.

use salvo::prelude::*;
use serde::Deserialize;

use super::{JSON_LIMIT, json_body, pagination, path_id, required_text};
use crate::auth::principal;
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    role: String,
}

/// `POST /api/v1/api-keys` with `{"name","role"}` → 201 with the key (shown once).
#[handler]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let body: NewKey = json_body(req, JSON_LIMIT).await?;
    let name = required_text("name", &body.name, 100)?;
    let role: Role = body
        .role
        .parse()
        .map_err(|e: mailing_jobs::UnknownValue| ApiError::field("role", e.to_string()))?;
    let (key, secret) = state
        .store
        .create_api_key(&name, role, &who.username)
        .await?;
    state
        .store
        .audit(
            &who.username,
            "api_key.create",
            Some(&format!("api_key:{}", key.id)),
            &serde_json::json!({"role": role}),
        )
        .await?;
    let mut body = serde_json::json!(key);
    body["key"] = secret.into();
    res.status_code(StatusCode::CREATED).render(Json(body));
    Ok(())
}

/// `GET /api/v1/api-keys`.
#[handler]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(serde_json::json!(
        state.store.api_keys(after, limit).await?
    )))
}

/// `DELETE /api/v1/api-keys/{id}`: revokes the key at once.
#[handler]
pub async fn revoke(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let id = path_id(req, "id")?;
    if !state.store.revoke_api_key(id).await? {
        return Err(ApiError::NotFound("no active API key has this id".into()));
    }
    state
        .store
        .audit(
            &who.username,
            "api_key.revoke",
            Some(&format!("api_key:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}
