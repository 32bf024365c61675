//! `/api/v1/suppressions`: addresses never mailed again (hard bounces, complaints,
//! unsubscribes, manual entries). Listing pages by address.

use salvo::prelude::*;
use serde::Deserialize;

use super::{JSON_LIMIT, json_body};
use crate::auth::principal;
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::subscribers::normalize_email;

/// `GET /api/v1/suppressions?limit=&after=` (`after` is the last address of the
/// previous page).
#[handler]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let limit = match req.query::<String>("limit") {
        None => super::DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=super::MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    format!("must be between 1 and {}", super::MAX_PAGE),
                )
            })?,
    };
    let after = req.query::<String>("after");
    Ok(Json(serde_json::json!(
        state.store.suppressions(after.as_deref(), limit).await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSuppression {
    email: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/suppressions` with `{"email","reason"?}`.
#[handler]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let body: NewSuppression = json_body(req, JSON_LIMIT).await?;
    let email = normalize_email(&body.email).map_err(|m| ApiError::field("email", m))?;
    let reason = body.reason.unwrap_or_else(|| "manual".into());
    if reason.is_empty() || reason.len() > 64 {
        return Err(ApiError::field("reason", "must be 1 to 64 characters"));
    }
    let created = state.store.suppress(&email, &reason).await?;
    state
        .store
        .audit(
            &who.username,
            "suppression.create",
            Some(&email),
            &serde_json::json!({"reason": reason}),
        )
        .await?;
    res.status_code(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
    .render(Json(
        serde_json::json!({ "email": email, "reason": reason, "created": created }),
    ));
    Ok(())
}

/// `DELETE /api/v1/suppressions/{email}`.
#[handler]
pub async fn delete(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let email = normalize_email(&req.param::<String>("email").unwrap_or_default())
        .map_err(|m| ApiError::field("email", m))?;
    if !state.store.unsuppress(&email).await? {
        return Err(ApiError::NotFound(format!("{email} is not suppressed")));
    }
    state
        .store
        .audit(
            &who.username,
            "suppression.delete",
            Some(&email),
            &serde_json::json!({}),
        )
        .await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}
