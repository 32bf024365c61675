//! `/api/v1/campaigns`: creation (validated against templates, lists and providers),
//! the status machine (send, pause, resume, cancel) and statistics from the ledger.

use salvo::prelude::*;
use serde::Deserialize;

use super::{JSON_LIMIT, json_body, pagination, path_id, required_text};
use crate::auth::principal;
use crate::problem::{ApiError, ApiResult, FieldError};
use crate::state::{AppState, from_depot};
use mailing_jobs::pipeline::PlanCampaign;
use mailing_jobs::store::campaigns::{CampaignPlugin, CampaignRow, CampaignStats, NewCampaign};
use mailing_jobs::{CampaignStatus, Role, StoreError};

/// The most lists a campaign may target.
pub const MAX_LISTS: usize = 100;
/// The most plugins a campaign may chain.
pub const MAX_PLUGINS: usize = 8;
/// The largest JSON config of one plugin of a campaign.
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignInput {
    name: String,
    template_id: i64,
    list_ids: Vec<i64>,
    from: String,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    plugins: Vec<CampaignPlugin>,
    #[serde(default)]
    send_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn campaign_json(state: &AppState, row: &CampaignRow) -> ApiResult<serde_json::Value> {
    let stats = state.store.campaign_stats(row.id).await?;
    let list_ids = state.store.campaign_list_ids(row.id).await?;
    campaign_view(row, stats, list_ids)
}

fn campaign_view(
    row: &CampaignRow,
    stats: CampaignStats,
    list_ids: Vec<i64>,
) -> ApiResult<serde_json::Value> {
    let plugins = row.plugins().map_err(ApiError::from)?;
    Ok(serde_json::json!({
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "template_id": row.template_id,
        "list_ids": list_ids,
        "from": row.from_addr,
        "reply_to": row.reply_to,
        "provider": row.provider,
        "plugins": plugins,
        "send_at": row.send_at.and_then(chrono::DateTime::from_timestamp_millis),
        "last_error": row.last_error,
        "created_at": chrono::DateTime::from_timestamp_millis(row.created_at),
        "started_at": row.started_at.and_then(chrono::DateTime::from_timestamp_millis),
        "finished_at": row.finished_at.and_then(chrono::DateTime::from_timestamp_millis),
        "stats": stats,
    }))
}

async fn validate(state: &AppState, input: CampaignInput) -> ApiResult<NewCampaign> {
    let mut errors = Vec::new();
    let name = match required_text("name", &input.name, 200) {
        Ok(n) => n,
        Err(_) => {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
            String::new()
        }
    };
    match state.store.template(input.template_id).await {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => {
            errors.push(FieldError::new("template_id", "no template has this id"))
        }
        Err(e) => return Err(e.into()),
    }
    if input.list_ids.is_empty() || input.list_ids.len() > MAX_LISTS {
        errors.push(FieldError::new(
            "list_ids",
            format!("name 1 to {MAX_LISTS} lists"),
        ));
    } else {
        for missing in state.store.missing_lists(&input.list_ids).await? {
            errors.push(FieldError::new(
                "list_ids",
                format!("no list has id {missing}"),
            ));
        }
    }
    if let Err(e) = mailing_jobs::message::check_mailbox(&input.from) {
        errors.push(FieldError::new("from", format!("not a valid address: {e}")));
    }
    if let Some(r) = &input.reply_to
        && let Err(e) = mailing_jobs::message::check_mailbox(r)
    {
        errors.push(FieldError::new(
            "reply_to",
            format!("not a valid address: {e}"),
        ));
    }
    let provider = input.provider.unwrap_or_else(|| "file".into());
    if let Err(e) = state.providers.by_name(&provider) {
        errors.push(FieldError::new(
            "provider",
            format!("{e}; configured: {}", state.providers.names().join(", ")),
        ));
    }
    if input.plugins.len() > MAX_PLUGINS {
        errors.push(FieldError::new(
            "plugins",
            format!("at most {MAX_PLUGINS} plugins"),
        ));
    }
    for (i, entry) in input.plugins.iter().enumerate() {
        match state.store.plugin(entry.plugin_id).await {
            Ok(_) => {}
            Err(mailing_jobs::StoreError::NotFound(_)) => errors.push(FieldError::new(
                format!("plugins[{i}].plugin_id"),
                format!("no plugin has id {}", entry.plugin_id),
            )),
            Err(e) => return Err(e.into()),
        }
        let config_len = entry.config.as_ref().map_or(0, |c| c.to_string().len());
        if config_len > MAX_PLUGIN_CONFIG_BYTES {
            errors.push(FieldError::new(
                format!("plugins[{i}].config"),
                format!("is {config_len} bytes of JSON; the limit is {MAX_PLUGIN_CONFIG_BYTES}"),
            ));
        }
    }
    if let Some(at) = input.send_at
        && at.timestamp_millis() < chrono::Utc::now().timestamp_millis() - 60_000
    {
        errors.push(FieldError::new("send_at", "is in the past"));
    }
    if !errors.is_empty() {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::Validation { detail, errors });
    }
    Ok(NewCampaign {
        name,
        template_id: input.template_id,
        list_ids: input.list_ids,
        from: input.from,
        reply_to: input.reply_to,
        provider,
        plugins: input.plugins,
        send_at: input.send_at.map(|t| t.timestamp_millis()),
    })
}

/// `POST /api/v1/campaigns`.
#[handler]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let input: CampaignInput = json_body(req, JSON_LIMIT).await?;
    let new = validate(&state, input).await?;
    let row = state.store.create_campaign(&new).await?;
    state
        .store
        .audit(
            &who.username,
            "campaign.create",
            Some(&format!("campaign:{}", row.id)),
            &serde_json::json!({}),
        )
        .await?;
    res.status_code(StatusCode::CREATED)
        .render(Json(campaign_json(&state, &row).await?));
    Ok(())
}

/// `GET /api/v1/campaigns`.
#[handler]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let (after, limit) = pagination(req)?;
    let page = state.store.campaigns(after, limit).await?;
    // Two queries for the whole page, not two per campaign.
    let ids: Vec<i64> = page.items.iter().map(|row| row.id).collect();
    let mut stats = state.store.campaigns_stats(&ids).await?;
    let mut lists = state.store.campaigns_list_ids(&ids).await?;
    let mut items = Vec::with_capacity(page.items.len());
    for row in &page.items {
        items.push(campaign_view(
            row,
            stats.remove(&row.id).unwrap_or_default(),
            lists.remove(&row.id).unwrap_or_default(),
        )?);
    }
    Ok(Json(serde_json::json!(mailing_jobs::store::Page {
        items,
        next: page.next
    })))
}

/// `GET /api/v1/campaigns/{id}`.
#[handler]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let row = state.store.campaign(path_id(req, "id")?).await?;
    Ok(Json(campaign_json(&state, &row).await?))
}

fn accepted(res: &mut Response, id: i64, status: CampaignStatus) {
    res.status_code(StatusCode::ACCEPTED)
        .render(Json(serde_json::json!({ "id": id, "status": status })));
}

fn conflict(row: &CampaignRow, action: &str) -> ApiError {
    ApiError::Conflict(format!(
        "campaign {} is {}; it cannot be {action}",
        row.id, row.status
    ))
}

/// Moves a campaign to running and enqueues its plan job; reverts when the queue fails.
pub async fn start(state: &AppState, row: &CampaignRow, from: CampaignStatus) -> ApiResult<bool> {
    if !state
        .store
        .transition_campaign(row.id, &[from], CampaignStatus::Running, None)
        .await?
    {
        return Ok(false);
    }
    if let Err(e) = state.queue.push_plan(PlanCampaign::new(row.id)).await {
        state
            .store
            .revert_campaign(row.id, CampaignStatus::Running, from)
            .await?;
        return Err(e.into());
    }
    Ok(true)
}

/// `POST /api/v1/campaigns/{id}/send`: sends now, or schedules when `send_at` is ahead.
#[handler]
pub async fn send(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let row = state.store.campaign(path_id(req, "id")?).await?;
    let status = row.status()?;
    if status != CampaignStatus::Draft {
        return Err(conflict(&row, "sent"));
    }
    if state.providers.by_name(&row.provider).is_err() {
        return Err(ApiError::field(
            "provider",
            format!(
                "provider '{}' is not configured on this server",
                row.provider
            ),
        ));
    }
    if state.store.audience_page(row.id, 0, 1).await?.is_empty() {
        return Err(ApiError::field(
            "list_ids",
            "the campaign's lists have no subscriber who can receive mail (empty, unsubscribed or suppressed)",
        ));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let next = if row.send_at.is_some_and(|at| at > now) {
        if !state
            .store
            .transition_campaign(row.id, &[status], CampaignStatus::Scheduled, None)
            .await?
        {
            return Err(conflict(&row, "scheduled"));
        }
        CampaignStatus::Scheduled
    } else {
        if !start(&state, &row, status).await? {
            return Err(conflict(&row, "sent"));
        }
        CampaignStatus::Running
    };
    state
        .store
        .audit(
            &who.username,
            "campaign.send",
            Some(&format!("campaign:{}", row.id)),
            &serde_json::json!({"status": next}),
        )
        .await?;
    accepted(res, row.id, next);
    Ok(())
}

/// `POST /api/v1/campaigns/{id}/pause`.
#[handler]
pub async fn pause(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let row = state.store.campaign(path_id(req, "id")?).await?;
    if !state
        .store
        .transition_campaign(
            row.id,
            &[CampaignStatus::Running],
            CampaignStatus::Paused,
            None,
        )
        .await?
    {
        return Err(conflict(&row, "paused"));
    }
    state
        .store
        .audit(
            &who.username,
            "campaign.pause",
            Some(&format!("campaign:{}", row.id)),
            &serde_json::json!({}),
        )
        .await?;
    accepted(res, row.id, CampaignStatus::Paused);
    Ok(())
}

/// `POST /api/v1/campaigns/{id}/resume`.
#[handler]
pub async fn resume(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let row = state.store.campaign(path_id(req, "id")?).await?;
    if !start(&state, &row, CampaignStatus::Paused).await? {
        return Err(conflict(&row, "resumed"));
    }
    state
        .store
        .audit(
            &who.username,
            "campaign.resume",
            Some(&format!("campaign:{}", row.id)),
            &serde_json::json!({}),
        )
        .await?;
    accepted(res, row.id, CampaignStatus::Running);
    Ok(())
}

/// `POST /api/v1/campaigns/{id}/cancel`: pending recipients are marked skipped.
#[handler]
pub async fn cancel(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let row = state.store.campaign(path_id(req, "id")?).await?;
    let from = [
        CampaignStatus::Draft,
        CampaignStatus::Scheduled,
        CampaignStatus::Running,
        CampaignStatus::Paused,
    ];
    if !state
        .store
        .transition_campaign(row.id, &from, CampaignStatus::Cancelled, None)
        .await?
    {
        return Err(conflict(&row, "cancelled"));
    }
    state
        .store
        .skip_pending(row.id, "campaign cancelled")
        .await?;
    state
        .store
        .audit(
            &who.username,
            "campaign.cancel",
            Some(&format!("campaign:{}", row.id)),
            &serde_json::json!({}),
        )
        .await?;
    accepted(res, row.id, CampaignStatus::Cancelled);
    Ok(())
}

/// `GET /api/v1/campaigns/{id}/deliveries?status=&email=&limit=&after=`: the ledger,
/// one row per recipient with its outcome, attempts and last error.
#[handler]
pub async fn deliveries(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let id = path_id(req, "id")?;
    state.store.campaign(id).await?;
    let (after, limit) = pagination(req)?;
    let status = match req.query::<String>("status") {
        None => None,
        Some(s) => Some(
            s.parse::<mailing_jobs::DeliveryStatus>()
                .map_err(|e| ApiError::field("status", e.to_string()))?,
        ),
    };
    let email = match req.query::<String>("email") {
        None => None,
        Some(e) => Some(
            mailing_jobs::store::subscribers::normalize_email(&e)
                .map_err(|m| ApiError::field("email", m))?,
        ),
    };
    Ok(Json(serde_json::json!(
        state
            .store
            .deliveries(id, status, email.as_deref(), after, limit)
            .await?
    )))
}

/// `POST /api/v1/campaigns/{id}/retry-failed`: failed recipients go back to pending with
/// fresh attempts; a finished campaign runs again for them.
#[handler]
pub async fn retry_failed(
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let row = state.store.campaign(path_id(req, "id")?).await?;
    if matches!(
        row.status()?,
        CampaignStatus::Draft | CampaignStatus::Scheduled | CampaignStatus::Cancelled
    ) {
        return Err(conflict(&row, "retried"));
    }
    let retried = state.store.retry_failed(row.id).await?;
    let status = state.store.campaign(row.id).await?.status()?;
    if retried > 0 && status == CampaignStatus::Running {
        state.queue.push_plan(PlanCampaign::new(row.id)).await?;
    }
    state
        .store
        .audit(
            &who.username,
            "campaign.retry_failed",
            Some(&format!("campaign:{}", row.id)),
            &serde_json::json!({"retried": retried}),
        )
        .await?;
    res.status_code(StatusCode::ACCEPTED).render(Json(
        serde_json::json!({ "id": row.id, "status": status, "retried": retried }),
    ));
    Ok(())
}
