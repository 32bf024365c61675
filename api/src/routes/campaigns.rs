//! `/api/v1/campaigns`: creation and editing (validated against templates, lists and
//! providers; only a draft or scheduled campaign can be edited), deletion of a campaign
//! that is not sending, the status machine (send, pause, resume, cancel) and statistics
//! from the ledger.

use chrono::{DateTime, Utc};
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    JSON_LIMIT, PageQuery, json_body, nullable, pagination, path_id, present, required_text,
};
use crate::auth::principal;
use crate::openapi::{Accepted, Created, JsonBytes, NoContent};
use crate::problem::{ApiError, ApiResult, FieldError};
use crate::state::{AppState, from_depot};
use mailing_jobs::pipeline::PlanCampaign;
use mailing_jobs::store::Page;
use mailing_jobs::store::campaigns::{
    CampaignPlugin, CampaignRow, CampaignStats, CampaignSummary, NewCampaign,
};
use mailing_jobs::store::deliveries::DeliveryRow;
use mailing_jobs::{CampaignStatus, DeliveryStatus, ProviderKind, Role, StoreError};

/// The most lists a campaign may target.
pub const MAX_LISTS: usize = 100;
/// The most plugins a campaign may chain.
pub const MAX_PLUGINS: usize = 8;
/// The largest JSON config of one plugin of a campaign.
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 64 * 1024;

/// A campaign to create (it starts as a `draft`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CampaignDraft {
    /// 1 to 200 characters (surrounding spaces are trimmed).
    #[salvo(schema(min_length = 1, max_length = 200))]
    name: String,
    /// The template to render: an existing template's id.
    #[salvo(schema(minimum = 1))]
    template_id: i64,
    /// The audience: 1 to 100 existing list ids.
    #[salvo(schema(min_items = 1, max_items = 100))]
    list_ids: Vec<i64>,
    /// The From header: an address, optionally with a display name
    /// (`Shop <news@shop.example>`).
    #[salvo(schema(min_length = 1))]
    from: String,
    /// The Reply-To header, in the same form as `from`.
    #[serde(default)]
    #[salvo(schema(min_length = 1))]
    reply_to: Option<String>,
    /// A provider configured on this server (`file`, `smtp`, `resend`); `file` when
    /// absent.
    #[serde(default)]
    #[salvo(schema(value_type = Option<ProviderKind>))]
    provider: Option<String>,
    /// At most 8 registered plugins, in the order they run; each `config` at most 64 KiB
    /// of JSON.
    #[serde(default)]
    #[salvo(schema(max_items = 8))]
    plugins: Vec<CampaignPlugin>,
    /// When `send` should start sending (RFC 3339), not more than a minute in the past;
    /// absent sends at once.
    #[serde(default)]
    send_at: Option<DateTime<Utc>>,
}

/// The settings of a `draft` or `scheduled` campaign to change; absent fields stay as
/// they are. Each given field is validated as on creation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CampaignChanges {
    /// 1 to 200 characters (surrounding spaces are trimmed).
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(nullable = false, min_length = 1, max_length = 200))]
    name: Option<String>,
    /// The template to render: an existing template's id.
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(nullable = false, minimum = 1))]
    template_id: Option<i64>,
    /// The new audience (replaces the whole set): 1 to 100 existing list ids.
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(nullable = false, min_items = 1, max_items = 100))]
    list_ids: Option<Vec<i64>>,
    /// The From header: an address, optionally with a display name.
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(nullable = false, min_length = 1))]
    from: Option<String>,
    /// The Reply-To header; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[salvo(schema(min_length = 1))]
    reply_to: Option<Option<String>>,
    /// A provider configured on this server (`file`, `smtp`, `resend`).
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = ProviderKind))]
    provider: Option<String>,
    /// The new plugin chain (replaces the whole chain): at most 8, in the order they run.
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(nullable = false, max_items = 8))]
    plugins: Option<Vec<CampaignPlugin>>,
    /// When to send (RFC 3339), not more than a minute in the past; `null` removes it
    /// from a draft (a scheduled campaign must keep one).
    #[serde(default, deserialize_with = "nullable")]
    send_at: Option<Option<DateTime<Utc>>>,
}

impl CampaignChanges {
    /// The names of the fields given, for the audit log.
    fn given(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("template_id", self.template_id.is_some()),
            ("list_ids", self.list_ids.is_some()),
            ("from", self.from.is_some()),
            ("reply_to", self.reply_to.is_some()),
            ("provider", self.provider.is_some()),
            ("plugins", self.plugins.is_some()),
            ("send_at", self.send_at.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

/// A campaign as the API shows it: its settings, its status and its recipients'
/// outcomes counted from the delivery ledger.
#[derive(Debug, Serialize, ToSchema)]
#[salvo(schema(name = "Campaign"))]
pub struct CampaignView {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Where the campaign is in its life.
    pub status: CampaignStatus,
    /// The template it renders.
    pub template_id: i64,
    /// The lists it sends to.
    pub list_ids: Vec<i64>,
    /// The From header.
    pub from: String,
    /// The Reply-To header.
    pub reply_to: Option<String>,
    /// The provider that sends it.
    pub provider: String,
    /// Plugins in the order they run.
    pub plugins: Vec<CampaignPlugin>,
    /// When it is (or was) to be sent; `null` sends on request.
    pub send_at: Option<DateTime<Utc>>,
    /// Why it failed, if it did.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When sending started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached `done`, `cancelled` or `failed`.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its recipients by outcome.
    pub stats: CampaignStats,
}

/// A campaign's new status after a request that moves it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignStatusChange {
    /// The campaign.
    pub id: i64,
    /// Its status now.
    pub status: CampaignStatus,
}

/// What `retry-failed` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryFailedReport {
    /// The campaign.
    pub id: i64,
    /// Its status now (`running` again when there was something to retry).
    pub status: CampaignStatus,
    /// How many failed recipients went back to pending.
    pub retried: u64,
}

/// `?status=&email=` of the delivery ledger.
#[derive(Debug, Deserialize, ToParameters)]
#[salvo(parameters(default_parameter_in = Query))]
pub struct DeliveryFilter {
    /// Only recipients with this outcome.
    pub status: Option<DeliveryStatus>,
    /// Only this recipient (the exact address).
    #[salvo(parameter(format = Email, max_length = 254))]
    pub email: Option<String>,
}

async fn campaign_json(state: &AppState, id: i64) -> ApiResult<CampaignView> {
    campaign_view(state.store.campaign_summary(id).await?)
}

fn campaign_view(summary: CampaignSummary) -> ApiResult<CampaignView> {
    let CampaignSummary {
        row,
        stats,
        list_ids,
    } = summary;
    let at = DateTime::<Utc>::from_timestamp_millis;
    Ok(CampaignView {
        id: row.id,
        status: row.status()?,
        plugins: row.plugins()?,
        template_id: row.template_id,
        list_ids,
        send_at: row.send_at.and_then(at),
        created_at: at(row.created_at).unwrap_or_default(),
        started_at: row.started_at.and_then(at),
        finished_at: row.finished_at.and_then(at),
        name: row.name,
        from: row.from_addr,
        reply_to: row.reply_to,
        provider: row.provider,
        last_error: row.last_error,
        stats,
    })
}

/// The campaign fields a request sets (all of them on creation, those given on an
/// update); [`check`] validates each one present.
#[derive(Default)]
struct Fields<'a> {
    name: Option<&'a str>,
    template_id: Option<i64>,
    list_ids: Option<&'a [i64]>,
    from: Option<&'a str>,
    reply_to: Option<&'a str>,
    provider: Option<&'a str>,
    plugins: Option<&'a [CampaignPlugin]>,
    send_at: Option<DateTime<Utc>>,
}

/// Validates every field given and reports all refused ones at once (422); returns the
/// trimmed name when one was given.
async fn check(state: &AppState, fields: Fields<'_>) -> ApiResult<Option<String>> {
    let mut errors = Vec::new();
    let name = match fields.name.map(|n| required_text("name", n, 200)) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
            None
        }
    };
    if let Some(template_id) = fields.template_id {
        match state.store.template(template_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => {
                errors.push(FieldError::new("template_id", "no template has this id"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(list_ids) = fields.list_ids {
        if list_ids.is_empty() || list_ids.len() > MAX_LISTS {
            errors.push(FieldError::new(
                "list_ids",
                format!("name 1 to {MAX_LISTS} lists"),
            ));
        } else {
            for missing in state.store.missing_lists(list_ids).await? {
                errors.push(FieldError::new(
                    "list_ids",
                    format!("no list has id {missing}"),
                ));
            }
        }
    }
    if let Some(from) = fields.from
        && let Err(e) = mailing_jobs::message::check_mailbox(from)
    {
        errors.push(FieldError::new("from", format!("not a valid address: {e}")));
    }
    if let Some(r) = fields.reply_to
        && let Err(e) = mailing_jobs::message::check_mailbox(r)
    {
        errors.push(FieldError::new(
            "reply_to",
            format!("not a valid address: {e}"),
        ));
    }
    if let Some(provider) = fields.provider
        && let Err(e) = state.providers.by_name(provider)
    {
        errors.push(FieldError::new(
            "provider",
            format!("{e}; configured: {}", state.providers.names().join(", ")),
        ));
    }
    if let Some(plugins) = fields.plugins {
        if plugins.len() > MAX_PLUGINS {
            errors.push(FieldError::new(
                "plugins",
                format!("at most {MAX_PLUGINS} plugins"),
            ));
        }
        for (i, entry) in plugins.iter().enumerate() {
            match state.store.plugin(entry.plugin_id).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => errors.push(FieldError::new(
                    format!("plugins[{i}].plugin_id"),
                    format!("no plugin has id {}", entry.plugin_id),
                )),
                Err(e) => return Err(e.into()),
            }
            let config_len = entry.config.as_ref().map_or(0, |c| c.to_string().len());
            if config_len > MAX_PLUGIN_CONFIG_BYTES {
                errors.push(FieldError::new(
                    format!("plugins[{i}].config"),
                    format!(
                        "is {config_len} bytes of JSON; the limit is {MAX_PLUGIN_CONFIG_BYTES}"
                    ),
                ));
            }
        }
    }
    if let Some(at) = fields.send_at
        && at.timestamp_millis() < Utc::now().timestamp_millis() - 60_000
    {
        errors.push(FieldError::new("send_at", "is in the past"));
    }
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    Ok(name)
}

async fn validate(state: &AppState, input: CampaignDraft) -> ApiResult<NewCampaign> {
    let provider = input.provider.unwrap_or_else(|| "file".into());
    let name = check(
        state,
        Fields {
            name: Some(&input.name),
            template_id: Some(input.template_id),
            list_ids: Some(&input.list_ids),
            from: Some(&input.from),
            reply_to: input.reply_to.as_deref(),
            provider: Some(&provider),
            plugins: Some(&input.plugins),
            send_at: input.send_at,
        },
    )
    .await?;
    Ok(NewCampaign {
        name: name.unwrap_or_default(),
        template_id: input.template_id,
        list_ids: input.list_ids,
        from: input.from,
        reply_to: input.reply_to,
        provider,
        plugins: input.plugins,
        send_at: input.send_at.map(|t| t.timestamp_millis()),
    })
}

/// `POST /api/v1/campaigns`: creates a draft campaign (editor).
#[endpoint(tags("campaigns"), request_body = CampaignDraft)]
pub async fn create(req: &mut Request, depot: &mut Depot) -> ApiResult<Created<CampaignView>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let input: CampaignDraft = json_body(req, JSON_LIMIT).await?;
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
    Ok(Created(campaign_json(&state, row.id).await?))
}

/// `GET /api/v1/campaigns`: one page of campaigns, each with its statistics.
#[endpoint(tags("campaigns"), parameters(PageQuery))]
pub async fn index(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<JsonBytes<Page<CampaignView>>> {
    let state = from_depot(depot)?;
    let key = pagination(req)?;
    // Dashboards poll this page: it is kept for API_CACHE_TTL_MS (see `crate::cache`).
    let miss = match state.cache.campaign_page(key) {
        Ok(page) => return Ok(JsonBytes::new(page)),
        Err(miss) => miss,
    };
    let (after, limit) = key;
    // One statement for the page, its ledger counts and its lists.
    let page = state.store.campaign_summaries(after, limit).await?;
    let page = JsonBytes::serialize(&Page {
        items: page
            .items
            .into_iter()
            .map(campaign_view)
            .collect::<ApiResult<Vec<_>>>()?,
        next: page.next,
    })?;
    state.cache.put_campaign_page(miss, key, page.bytes());
    Ok(page)
}

/// `GET /api/v1/campaigns/{id}`: the campaign with its statistics.
#[endpoint(tags("campaigns"), parameters(("id" = i64, Path, description = "The campaign")))]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<CampaignView>> {
    let state = from_depot(depot)?;
    Ok(Json(campaign_json(&state, path_id(req, "id")?).await?))
}

/// `PATCH /api/v1/campaigns/{id}`: changes the given settings of a `draft` or
/// `scheduled` campaign (editor), validated as on creation; 409 in any other status.
#[endpoint(
    tags("campaigns"),
    parameters(("id" = i64, Path, description = "The campaign")),
    request_body = CampaignChanges
)]
pub async fn update(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<CampaignView>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    let changes: CampaignChanges = json_body(req, JSON_LIMIT).await?;
    let row = state.store.campaign(id).await?;
    let status = row.status()?;
    if !matches!(status, CampaignStatus::Draft | CampaignStatus::Scheduled) {
        return Err(ApiError::Conflict(format!(
            "campaign {id} is {status}; only a draft or scheduled campaign can be changed"
        )));
    }
    if status == CampaignStatus::Scheduled && matches!(changes.send_at, Some(None)) {
        return Err(ApiError::field(
            "send_at",
            "a scheduled campaign needs a send time; cancel it to stop it",
        ));
    }
    let name = check(
        &state,
        Fields {
            name: changes.name.as_deref(),
            template_id: changes.template_id,
            list_ids: changes.list_ids.as_deref(),
            from: changes.from.as_deref(),
            reply_to: changes.reply_to.as_ref().and_then(Option::as_deref),
            provider: changes.provider.as_deref(),
            plugins: changes.plugins.as_deref(),
            send_at: changes.send_at.flatten(),
        },
    )
    .await?;
    let given = changes.given();
    let list_ids = match changes.list_ids {
        Some(ids) => ids,
        None => state.store.campaign_list_ids(id).await?,
    };
    let plugins = match changes.plugins {
        Some(p) => p,
        None => row.plugins()?,
    };
    let new = NewCampaign {
        name: name.unwrap_or(row.name),
        template_id: changes.template_id.unwrap_or(row.template_id),
        list_ids,
        from: changes.from.unwrap_or(row.from_addr),
        reply_to: changes.reply_to.unwrap_or(row.reply_to),
        provider: changes.provider.unwrap_or(row.provider),
        plugins,
        send_at: match changes.send_at {
            Some(at) => at.map(|t| t.timestamp_millis()),
            None => row.send_at,
        },
    };
    let row = state.store.update_campaign(id, &new).await?;
    state
        .store
        .audit(
            &who.username,
            "campaign.update",
            Some(&format!("campaign:{id}")),
            &serde_json::json!({ "fields": given }),
        )
        .await?;
    Ok(Json(campaign_json(&state, row.id).await?))
}

/// `DELETE /api/v1/campaigns/{id}`: deletes a campaign that is not sending (`draft`,
/// `scheduled`, `done`, `cancelled`, `failed`) with its delivery ledger (editor); 409
/// while it is `running` or `paused` (cancel it first).
#[endpoint(tags("campaigns"), parameters(("id" = i64, Path, description = "The campaign")))]
pub async fn delete(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    state.store.delete_campaign(id).await?;
    state
        .store
        .audit(
            &who.username,
            "campaign.delete",
            Some(&format!("campaign:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(NoContent)
}

fn accepted(id: i64, status: CampaignStatus) -> Accepted<CampaignStatusChange> {
    Accepted(CampaignStatusChange { id, status })
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

/// `POST /api/v1/campaigns/{id}/send`: sends a draft now (`running`), or schedules it
/// (`scheduled`) when its `send_at` is ahead.
#[endpoint(tags("campaigns"), parameters(("id" = i64, Path, description = "The campaign")))]
pub async fn send(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Accepted<CampaignStatusChange>> {
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
    Ok(accepted(row.id, next))
}

/// `POST /api/v1/campaigns/{id}/pause`: a running campaign stops taking new batches.
#[endpoint(tags("campaigns"), parameters(("id" = i64, Path, description = "The campaign")))]
pub async fn pause(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Accepted<CampaignStatusChange>> {
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
    Ok(accepted(row.id, CampaignStatus::Paused))
}

/// `POST /api/v1/campaigns/{id}/resume`: a paused campaign runs again.
#[endpoint(tags("campaigns"), parameters(("id" = i64, Path, description = "The campaign")))]
pub async fn resume(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Accepted<CampaignStatusChange>> {
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
    Ok(accepted(row.id, CampaignStatus::Running))
}

/// `POST /api/v1/campaigns/{id}/cancel`: pending recipients are marked skipped.
#[endpoint(tags("campaigns"), parameters(("id" = i64, Path, description = "The campaign")))]
pub async fn cancel(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Accepted<CampaignStatusChange>> {
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
    Ok(accepted(row.id, CampaignStatus::Cancelled))
}

/// `GET /api/v1/campaigns/{id}/deliveries?status=&email=&limit=&after=`: the ledger,
/// one row per recipient with its outcome, attempts and last error.
#[endpoint(
    tags("campaigns"),
    parameters(("id" = i64, Path, description = "The campaign"), DeliveryFilter, PageQuery)
)]
pub async fn deliveries(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Json<Page<DeliveryRow>>> {
    let state = from_depot(depot)?;
    let id = path_id(req, "id")?;
    state.store.campaign(id).await?;
    let (after, limit) = pagination(req)?;
    let status = match req.query::<String>("status") {
        None => None,
        Some(s) => Some(
            s.parse::<DeliveryStatus>()
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
    Ok(Json(
        state
            .store
            .deliveries(id, status, email.as_deref(), after, limit)
            .await?,
    ))
}

/// `POST /api/v1/campaigns/{id}/retry-failed`: failed recipients go back to pending with
/// fresh attempts; a finished campaign runs again for them.
#[endpoint(tags("campaigns"), parameters(("id" = i64, Path, description = "The campaign")))]
pub async fn retry_failed(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Accepted<RetryFailedReport>> {
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
    Ok(Accepted(RetryFailedReport {
        id: row.id,
        status,
        retried,
    }))
}
