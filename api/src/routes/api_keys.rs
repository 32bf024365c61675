//! `/api/v1/api-keys` (admin): keys for machines, scoped by role. The key text is
//! returned once at creation; only its prefix is listed afterwards.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use super::{JSON_LIMIT, PageQuery, json_body, pagination, path_id, required_text};
use crate::auth::principal;
use crate::openapi::{Created, NoContent};
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::Page;
use mailing_jobs::store::api_keys::ApiKey;

/// An API key to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewApiKey {
    /// A label, 1 to 100 characters (surrounding spaces are trimmed).
    #[salvo(schema(min_length = 1, max_length = 100))]
    name: String,
    /// What the key may do: `admin`, `editor` or `viewer`.
    #[salvo(schema(value_type = Role))]
    role: String,
}

/// A new API key: the stored key and, this once, its full text.
#[derive(Debug, Serialize, ToSchema)]
struct CreatedApiKey {
    #[serde(flatten)]
    stored: ApiKey,
    /// The full key (`mk_<prefix>_<secret>`), to send as `Authorization: Bearer <key>`.
    /// Shown only in this answer: the secret is not stored.
    key: String,
}

/// `POST /api/v1/api-keys` with `{"name","role"}` → 201 with the key (shown once).
#[endpoint(tags("api-keys"), request_body = NewApiKey)]
pub async fn create(req: &mut Request, depot: &mut Depot) -> ApiResult<Created<CreatedApiKey>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let body: NewApiKey = json_body(req, JSON_LIMIT).await?;
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
    Ok(Created(CreatedApiKey {
        stored: key,
        key: secret,
    }))
}

/// `GET /api/v1/api-keys`: one page of keys, revoked ones included, never with their
/// secret.
#[endpoint(tags("api-keys"), parameters(PageQuery))]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Page<ApiKey>>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(state.store.api_keys(after, limit).await?))
}

/// `DELETE /api/v1/api-keys/{id}`: revokes the key at once; 404 when there is no
/// active key with this id.
#[endpoint(tags("api-keys"), parameters(("id" = i64, Path, description = "The API key")))]
pub async fn revoke(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
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
    Ok(NoContent)
}
