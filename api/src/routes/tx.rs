//! `POST /api/v1/tx`: one message from a template to one recipient, sent by the tx
//! stage's own workers ahead of bulk traffic; `GET /api/v1/tx/{id}` reports it.

use salvo::prelude::*;
use serde::Deserialize;

use super::{JSON_LIMIT, json_body, path_id};
use crate::auth::principal;
use crate::problem::{ApiError, ApiResult, FieldError};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::pipeline::TxSend;
use mailing_jobs::store::subscribers::NewSubscriber;
use mailing_jobs::store::transactional::NewTx;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxInput {
    template_id: i64,
    to: NewSubscriber,
    #[serde(default)]
    data: Option<serde_json::Map<String, serde_json::Value>>,
    from: String,
    #[serde(default)]
    provider: Option<String>,
}

/// `POST /api/v1/tx` → 202 `{"id","status"}`.
#[handler]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let input: TxInput = json_body(req, JSON_LIMIT).await?;
    let mut errors = Vec::new();
    let recipient = input
        .to
        .validate()
        .map_err(|m| errors.push(FieldError::new("to", m)))
        .ok();
    match state.store.template(input.template_id).await {
        Ok(_) => {}
        Err(mailing_jobs::StoreError::NotFound(_)) => {
            errors.push(FieldError::new("template_id", "no template has this id"))
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = mailing_jobs::message::check_mailbox(&input.from) {
        errors.push(FieldError::new("from", format!("not a valid address: {e}")));
    }
    let provider = input.provider.unwrap_or_else(|| "file".into());
    if let Err(e) = state.providers.by_name(&provider) {
        errors.push(FieldError::new("provider", e.to_string()));
    }
    let data = serde_json::Value::Object(input.data.unwrap_or_default()).to_string();
    if data.len() > 64 * 1024 {
        errors.push(FieldError::new("data", "must be at most 64 KiB of JSON"));
    }
    let Some((email, name, attributes)) = recipient.filter(|_| errors.is_empty()) else {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::Validation { detail, errors });
    };
    let tx = state
        .store
        .create_tx(&NewTx {
            template_id: input.template_id,
            email,
            name,
            attributes,
            data,
            from: input.from,
            provider,
        })
        .await?;
    state
        .queue
        .push_tx_after(TxSend::new(tx.id), std::time::Duration::ZERO)
        .await?;
    res.status_code(StatusCode::ACCEPTED).render(Json(
        serde_json::json!({ "id": tx.id, "status": tx.status }),
    ));
    Ok(())
}

/// `GET /api/v1/tx/{id}`.
#[handler]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    Ok(Json(serde_json::json!(
        state.store.tx(path_id(req, "id")?).await?
    )))
}
