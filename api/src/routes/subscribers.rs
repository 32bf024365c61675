//! `/api/v1/subscribers`: search by address, read, update name and attributes,
//! unsubscribe, and the GDPR pair (export everything stored, erase).

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use super::{JSON_LIMIT, PageQuery, json_body, nullable, pagination, path_id};
use crate::auth::principal;
use crate::openapi::NoContent;
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::Page;
use mailing_jobs::store::subscribers::{MAX_ATTRIBUTES_BYTES, MAX_NAME_LEN, Subscriber};

/// A subscriber as the API shows it: the stored row with its attributes as an object.
#[derive(Debug, Serialize, ToSchema)]
#[salvo(schema(name = "Subscriber"))]
pub struct SubscriberView {
    /// Id.
    pub id: i64,
    /// Address (domain lower-cased).
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// `enabled`, `unsubscribed` or `blocklisted`.
    pub status: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// The attributes templates and plugins read.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl From<&Subscriber> for SubscriberView {
    fn from(s: &Subscriber) -> Self {
        SubscriberView {
            id: s.id,
            email: s.email.clone(),
            name: s.name.clone(),
            status: s.status.clone(),
            created_at: s.created_at,
            attributes: serde_json::from_str(&s.attributes).unwrap_or_default(),
        }
    }
}

/// `?email=` of the subscriber search.
#[derive(Debug, Deserialize, ToParameters)]
#[salvo(parameters(default_parameter_in = Query))]
pub struct EmailPrefix {
    /// The start of the address (at most 254 bytes); absent lists everyone.
    #[salvo(parameter(max_length = 254))]
    pub email: Option<String>,
}

/// `GET /api/v1/subscribers?email=<prefix>&limit=&after=`.
#[endpoint(tags("subscribers"), parameters(EmailPrefix, PageQuery))]
pub async fn search(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Page<SubscriberView>>> {
    let state = from_depot(depot)?;
    let (after, limit) = pagination(req)?;
    let prefix = req.query::<String>("email").unwrap_or_default();
    if prefix.len() > 254 {
        return Err(ApiError::field("email", "is longer than an address can be"));
    }
    let page = state
        .store
        .search_subscribers(prefix.trim(), after, limit)
        .await?;
    Ok(Json(Page {
        items: page.items.iter().map(SubscriberView::from).collect(),
        next: page.next,
    }))
}

/// `GET /api/v1/subscribers/{id}`.
#[endpoint(tags("subscribers"), parameters(("id" = i64, Path, description = "The subscriber")))]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<SubscriberView>> {
    let state = from_depot(depot)?;
    Ok(Json(SubscriberView::from(
        &state.store.subscriber(path_id(req, "id")?).await?,
    )))
}

/// The fields of a subscriber to replace.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SubscriberUpdate {
    /// The new display name, at most 256 characters, without control characters;
    /// `null` (or a blank string) clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[salvo(schema(max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"))]
    name: Option<Option<String>>,
    /// The new attributes (replace the whole object).
    #[serde(default)]
    attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `PATCH /api/v1/subscribers/{id}` with `{"name"?, "attributes"?}`: replaces what is
/// given (`"name": null` clears the name; `attributes` replaces the whole object).
#[endpoint(
    tags("subscribers"),
    parameters(("id" = i64, Path, description = "The subscriber")),
    request_body = SubscriberUpdate
)]
pub async fn update(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<SubscriberView>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    let body: SubscriberUpdate = json_body(req, JSON_LIMIT).await?;
    let name = match body.name {
        Some(Some(n)) if n.chars().count() > MAX_NAME_LEN || n.chars().any(char::is_control) => {
            return Err(ApiError::field(
                "name",
                format!("must be at most {MAX_NAME_LEN} characters, without control characters"),
            ));
        }
        Some(Some(n)) if n.trim().is_empty() => Some(None),
        Some(Some(n)) => Some(Some(n.trim().to_owned())),
        other => other,
    };
    let attributes = match body.attributes {
        None => None,
        Some(map) => {
            let text = serde_json::Value::Object(map).to_string();
            if text.len() > MAX_ATTRIBUTES_BYTES {
                return Err(ApiError::field(
                    "attributes",
                    format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes of JSON"),
                ));
            }
            Some(text)
        }
    };
    let s = state.store.update_subscriber(id, name, attributes).await?;
    state
        .store
        .audit(
            &who.username,
            "subscriber.update",
            Some(&format!("subscriber:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(Json(SubscriberView::from(&s)))
}

/// `POST /api/v1/subscribers/{id}/unsubscribe`: as the one-click link does.
#[endpoint(tags("subscribers"), parameters(("id" = i64, Path, description = "The subscriber")))]
pub async fn unsubscribe(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<SubscriberView>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    state.store.subscriber(id).await?;
    if state.store.unsubscribe(id, 0).await? {
        mailing_jobs::telemetry::Unsubscribed.emit();
    }
    Ok(Json(SubscriberView::from(
        &state.store.subscriber(id).await?,
    )))
}

/// `GET /api/v1/subscribers/{id}/export`: everything stored about the subscriber.
#[endpoint(tags("subscribers"), parameters(("id" = i64, Path, description = "The subscriber")))]
pub async fn export(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let id = path_id(req, "id")?;
    let data = state.store.export_subscriber(id).await?;
    state
        .store
        .audit(
            &who.username,
            "subscriber.export",
            Some(&format!("subscriber:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(Json(data))
}

/// `DELETE /api/v1/subscribers/{id}`: erases the subscriber, memberships and ledger
/// rows. A suppression of the address stays, so it is never mailed again.
#[endpoint(tags("subscribers"), parameters(("id" = i64, Path, description = "The subscriber")))]
pub async fn erase(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let id = path_id(req, "id")?;
    state.store.delete_subscriber(id).await?;
    state
        .store
        .audit(
            &who.username,
            "subscriber.erase",
            Some(&format!("subscriber:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(NoContent)
}
