//! `/api/v1/subscribers`: search by address, read, update name and attributes,
//! unsubscribe, and the GDPR pair (export everything stored, erase).

use salvo::prelude::*;
use serde::Deserialize;

use super::{JSON_LIMIT, json_body, pagination, path_id};
use crate::auth::principal;
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::subscribers::{MAX_ATTRIBUTES_BYTES, MAX_NAME_LEN, Subscriber};

fn subscriber_json(s: &Subscriber) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "email": s.email, "name": s.name, "status": s.status, "created_at": s.created_at,
        "attributes": serde_json::from_str::<serde_json::Value>(&s.attributes).unwrap_or_default(),
    })
}

/// `GET /api/v1/subscribers?email=<prefix>&limit=&after=`.
#[handler]
pub async fn search(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
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
    let items: Vec<serde_json::Value> = page.items.iter().map(subscriber_json).collect();
    Ok(Json(serde_json::json!(mailing_jobs::store::Page {
        items,
        next: page.next
    })))
}

/// `GET /api/v1/subscribers/{id}`.
#[handler]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    Ok(Json(subscriber_json(
        &state.store.subscriber(path_id(req, "id")?).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    #[serde(default, with = "serde_with_option")]
    name: Option<Option<String>>,
    #[serde(default)]
    attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

mod serde_with_option {
    //! Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// `PATCH /api/v1/subscribers/{id}` with `{"name"?, "attributes"?}`: replaces what is
/// given (`"name": null` clears the name; `attributes` replaces the whole object).
#[handler]
pub async fn update(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    let body: Update = json_body(req, JSON_LIMIT).await?;
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
    Ok(Json(subscriber_json(&s)))
}

/// `POST /api/v1/subscribers/{id}/unsubscribe`: as the one-click link does.
#[handler]
pub async fn unsubscribe(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    state.store.subscriber(id).await?;
    if state.store.unsubscribe(id, 0).await? {
        mailing_jobs::telemetry::Unsubscribed.emit();
    }
    Ok(Json(subscriber_json(&state.store.subscriber(id).await?)))
}

/// `GET /api/v1/subscribers/{id}/export`: everything stored about the subscriber.
#[handler]
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
#[handler]
pub async fn erase(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
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
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}
