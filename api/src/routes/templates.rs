//! `/api/v1/templates`: Liquid templates, validated at creation (a parse error is a 422
//! naming the part and line), and previews rendered on sample data.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use super::{PageQuery, has_body, json_body, pagination, path_id, required_text};
use crate::auth::principal;
use crate::openapi::{Created, NoContent};
use crate::problem::{ApiError, ApiResult, FieldError};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::render::{
    CampaignVars, MAX_TEMPLATE_BYTES, RenderContext, RenderError, Rendered, TemplateSource,
};
use mailing_jobs::store::Page;
use mailing_jobs::store::templates::Template;

const TEMPLATE_BODY_LIMIT: usize = 3 * MAX_TEMPLATE_BYTES + 4096;

/// A Liquid template to store (creation, or the whole replacement of one). Every part
/// must parse; a part that does not is a 422 naming the part and the line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TemplateDraft {
    /// 1 to 200 characters (surrounding spaces are trimmed).
    #[salvo(schema(min_length = 1, max_length = 200))]
    name: String,
    /// Liquid source of the subject line: not blank, at most 512 KiB.
    #[salvo(schema(min_length = 1, max_length = 524288))]
    subject: String,
    /// Liquid source of the HTML body: not blank, at most 512 KiB.
    #[salvo(schema(min_length = 1, max_length = 524288))]
    html: String,
    /// Liquid source of the plain-text body, at most 512 KiB.
    #[serde(default)]
    #[salvo(schema(max_length = 524288))]
    text: Option<String>,
}

fn render_problem(err: RenderError) -> ApiError {
    let field = match &err {
        RenderError::Parse { field, .. }
        | RenderError::TooLarge { field }
        | RenderError::Render { field, .. } => *field,
    };
    let message = err.to_string();
    let mut fe = FieldError::new(field, message.clone());
    if let RenderError::Parse {
        line,
        message: parser,
        ..
    } = &err
    {
        fe.message = format!("line {line}: {parser}");
    }
    ApiError::Validation {
        detail: if matches!(err, RenderError::Render { .. }) {
            format!("the template does not render for this subscriber: {message}")
        } else {
            format!("the template does not parse: {message}")
        },
        errors: vec![fe],
    }
}

/// `POST /api/v1/templates`: stores a template that parses (editor).
#[endpoint(tags("templates"), request_body = TemplateDraft)]
pub async fn create(req: &mut Request, depot: &mut Depot) -> ApiResult<Created<Template>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let body: TemplateDraft = json_body(req, TEMPLATE_BODY_LIMIT).await?;
    let name = required_text("name", &body.name, 200)?;
    if body.subject.trim().is_empty() {
        return Err(ApiError::field("subject", "must not be empty"));
    }
    if body.html.trim().is_empty() {
        return Err(ApiError::field("html", "must not be empty"));
    }
    state
        .renderer
        .compile(TemplateSource {
            subject: &body.subject,
            html: &body.html,
            text: body.text.as_deref(),
        })
        .map_err(render_problem)?;
    let template = state
        .store
        .create_template(&name, &body.subject, &body.html, body.text.as_deref())
        .await?;
    state
        .store
        .audit(
            &who.username,
            "template.create",
            Some(&format!("template:{}", template.id)),
            &serde_json::json!({}),
        )
        .await?;
    Ok(Created(template))
}

/// `PUT /api/v1/templates/{id}` with the same body as creation: replaces the template
/// (validated the same way). Campaigns render the new version from their next batch.
#[endpoint(
    tags("templates"),
    parameters(("id" = i64, Path, description = "The template")),
    request_body = TemplateDraft
)]
pub async fn replace(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Template>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    let body: TemplateDraft = json_body(req, TEMPLATE_BODY_LIMIT).await?;
    let name = required_text("name", &body.name, 200)?;
    if body.subject.trim().is_empty() {
        return Err(ApiError::field("subject", "must not be empty"));
    }
    if body.html.trim().is_empty() {
        return Err(ApiError::field("html", "must not be empty"));
    }
    state
        .renderer
        .compile(TemplateSource {
            subject: &body.subject,
            html: &body.html,
            text: body.text.as_deref(),
        })
        .map_err(render_problem)?;
    let template = state
        .store
        .update_template(id, &name, &body.subject, &body.html, body.text.as_deref())
        .await?;
    state
        .store
        .audit(
            &who.username,
            "template.update",
            Some(&format!("template:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(Json(template))
}

/// `DELETE /api/v1/templates/{id}`: 409 while a campaign uses it.
#[endpoint(tags("templates"), parameters(("id" = i64, Path, description = "The template")))]
pub async fn delete(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    state.store.delete_template(id).await?;
    state
        .store
        .audit(
            &who.username,
            "template.delete",
            Some(&format!("template:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(NoContent)
}

/// `GET /api/v1/templates`: one page of templates.
#[endpoint(tags("templates"), parameters(PageQuery))]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Page<Template>>> {
    let state = from_depot(depot)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(state.store.templates(after, limit).await?))
}

/// `GET /api/v1/templates/{id}`.
#[endpoint(tags("templates"), parameters(("id" = i64, Path, description = "The template")))]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Template>> {
    let state = from_depot(depot)?;
    Ok(Json(state.store.template(path_id(req, "id")?).await?))
}

/// What to render a template preview on; the body may be left out altogether.
#[derive(Deserialize, Default, ToSchema)]
struct PreviewRequest {
    /// The subscriber to render for; a sample one (Jane Doe) when absent.
    #[serde(default)]
    subscriber: Option<PreviewSubscriber>,
}

/// The subscriber a preview renders for; each field absent takes the sample's value.
#[derive(Deserialize, Default, ToSchema)]
struct PreviewSubscriber {
    /// The address (`jane.doe@example.com` when absent).
    #[serde(default)]
    email: Option<String>,
    /// The display name (`Jane Doe` when absent).
    #[serde(default)]
    name: Option<String>,
    /// The attributes the template reads (none when absent).
    #[serde(default)]
    attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A template rendered for one subscriber.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenderedPreview {
    /// Subject line.
    pub subject: String,
    /// HTML body.
    pub html: String,
    /// Plain-text body; `null` when the template has none.
    pub text: Option<String>,
}

impl From<Rendered> for RenderedPreview {
    fn from(r: Rendered) -> Self {
        RenderedPreview {
            subject: r.subject,
            html: r.html,
            text: r.text,
        }
    }
}

/// `POST /api/v1/templates/{id}/preview`: renders on the given or a sample subscriber.
#[endpoint(
    tags("templates"),
    parameters(("id" = i64, Path, description = "The template")),
    request_body = Option<PreviewRequest>
)]
pub async fn preview(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<RenderedPreview>> {
    let state = from_depot(depot)?;
    let id = path_id(req, "id")?;
    let template = state.store.template(id).await?;
    let body: PreviewRequest = if has_body(req) {
        json_body(req, 64 * 1024).await?
    } else {
        PreviewRequest::default()
    };
    let sub = body.subscriber.unwrap_or_default();
    let compiled = state
        .renderer
        .compiled(
            template.id,
            template.updated_at,
            TemplateSource {
                subject: &template.subject,
                html: &template.html,
                text: template.text.as_deref(),
            },
        )
        .map_err(render_problem)?;
    let ctx = RenderContext {
        email: sub.email.unwrap_or_else(|| "jane.doe@example.com".into()),
        name: Some(sub.name.unwrap_or_else(|| "Jane Doe".into())),
        attributes: sub.attributes.unwrap_or_default(),
        campaign: CampaignVars::new(&serde_json::json!({"id": 0, "name": "Preview"})),
        unsubscribe_url: state.signer.url(0, 0),
        extra: serde_json::Map::new(),
    };
    let rendered = compiled.render(&ctx).map_err(render_problem)?;
    Ok(Json(RenderedPreview::from(rendered)))
}
