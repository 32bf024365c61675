//! `/api/v1/suppressions`: addresses never mailed again (hard bounces, complaints,
//! unsubscribes, manual entries). Listing pages by address.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use super::{JSON_LIMIT, json_body};
use crate::auth::principal;
use crate::openapi::NoContent;
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::Page;
use mailing_jobs::store::subscribers::normalize_email;
use mailing_jobs::store::suppressions::Suppression;

/// `?limit=&after=` of the suppression list, which pages by address.
#[derive(Debug, Deserialize, ToParameters)]
#[salvo(parameters(default_parameter_in = Query))]
pub struct AddressPageQuery {
    /// How many items to return (1 to 500; 50 when absent).
    #[salvo(parameter(minimum = 1, maximum = 500))]
    pub limit: Option<u32>,
    /// The `next` value of the previous page (its last address); absent for the first
    /// page.
    pub after: Option<String>,
}

/// `GET /api/v1/suppressions?limit=&after=` (`after` is the last address of the
/// previous page).
#[endpoint(tags("suppressions"), parameters(AddressPageQuery))]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Page<Suppression>>> {
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
    Ok(Json(
        state.store.suppressions(after.as_deref(), limit).await?,
    ))
}

/// An address to suppress by hand.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewSuppression {
    /// The address (its domain is lower-cased).
    #[salvo(schema(format = Email, max_length = 254))]
    email: String,
    /// Why, 1 to 64 characters; `manual` when absent.
    #[serde(default)]
    #[salvo(schema(min_length = 1, max_length = 64))]
    reason: Option<String>,
}

/// The answer to a suppression request.
#[derive(Debug, Serialize, ToSchema)]
struct SuppressionOutcome {
    /// The address, normalised (domain lower-cased).
    email: String,
    /// The reason given with this request (an existing entry keeps its first reason).
    reason: String,
    /// Whether this request added the address (false: it was already suppressed).
    created: bool,
}

/// `POST /api/v1/suppressions` with `{"email","reason"?}` (editor): 201 when the address
/// is added, 200 when it was already suppressed.
#[endpoint(
    tags("suppressions"),
    request_body = NewSuppression,
    responses(
        (status_code = 201, description = "The address is now suppressed", body = SuppressionOutcome),
        (status_code = 200, description = "The address was already suppressed; nothing changed", body = SuppressionOutcome),
    )
)]
pub async fn create(
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> ApiResult<Json<SuppressionOutcome>> {
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
    });
    Ok(Json(SuppressionOutcome {
        email,
        reason,
        created,
    }))
}

/// `DELETE /api/v1/suppressions/{email}` (admin): the address may be mailed again; 404
/// when it is not suppressed.
#[endpoint(
    tags("suppressions"),
    parameters(("email" = String, Path, description = "The suppressed address (percent-encoded)"))
)]
pub async fn delete(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
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
    Ok(NoContent)
}
