//! `POST /api/v1/tx`: one message from a template to one recipient, sent by the tx
//! stage's own workers ahead of bulk traffic; `GET /api/v1/tx/{id}` reports it.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use super::{JSON_LIMIT, json_body, path_id};
use crate::auth::principal;
use crate::openapi::Accepted;
use crate::problem::{ApiError, ApiResult, FieldError};
use crate::state::from_depot;
use mailing_jobs::pipeline::TxSend;
use mailing_jobs::store::subscribers::NewSubscriber;
use mailing_jobs::store::transactional::{NewTx, TxMessage};
use mailing_jobs::{ProviderKind, Role};

/// One transactional message to send: a template rendered for one recipient.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TxDraft {
    /// The template to render: an existing template's id.
    #[salvo(schema(minimum = 1))]
    template_id: i64,
    /// The recipient (a valid address; attributes at most 16 KiB of JSON).
    to: NewSubscriber,
    /// Extra variables for the template, at most 64 KiB of JSON.
    #[serde(default)]
    data: Option<serde_json::Map<String, serde_json::Value>>,
    /// The From header: an address, optionally with a display name.
    #[salvo(schema(min_length = 1))]
    from: String,
    /// A provider configured on this server (`file`, `smtp`, `resend`); `file` when
    /// absent.
    #[serde(default)]
    #[salvo(schema(value_type = Option<ProviderKind>))]
    provider: Option<String>,
}

/// A transactional message accepted for sending; follow it at `GET /api/v1/tx/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TxAccepted {
    /// The message.
    pub id: i64,
    /// Its status: `pending` until a worker sends it.
    pub status: String,
}

/// `POST /api/v1/tx` → 202 `{"id","status"}`: queued ahead of campaign traffic (editor).
#[endpoint(tags("tx"), request_body = TxDraft)]
pub async fn create(req: &mut Request, depot: &mut Depot) -> ApiResult<Accepted<TxAccepted>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let input: TxDraft = json_body(req, JSON_LIMIT).await?;
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
        return Err(ApiError::fields(errors));
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
    Ok(Accepted(TxAccepted {
        id: tx.id,
        status: tx.status,
    }))
}

/// `GET /api/v1/tx/{id}`: the message's status, attempts and provider id.
#[endpoint(tags("tx"), parameters(("id" = i64, Path, description = "The transactional message")))]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<TxMessage>> {
    let state = from_depot(depot)?;
    Ok(Json(state.store.tx(path_id(req, "id")?).await?))
}
