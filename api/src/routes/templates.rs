//! `/api/v1/templates`: Liquid templates, validated at creation (a parse error is a 422
//! naming the part and line), and previews rendered on sample data.

use salvo::prelude::*;
use serde::Deserialize;

use super::{has_body, json_body, pagination, path_id, required_text};
use crate::auth::principal;
use crate::problem::{ApiError, ApiResult, FieldError};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::render::{MAX_TEMPLATE_BYTES, RenderContext, RenderError, TemplateSource};

const TEMPLATE_BODY_LIMIT: usize = 3 * MAX_TEMPLATE_BYTES + 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTemplate {
    name: String,
    subject: String,
    html: String,
    #[serde(default)]
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

/// `POST /api/v1/templates`.
#[handler]
pub async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let body: NewTemplate = json_body(req, TEMPLATE_BODY_LIMIT).await?;
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
    res.status_code(StatusCode::CREATED).render(Json(template));
    Ok(())
}

/// `PUT /api/v1/templates/{id}` with the same body as creation: replaces the template
/// (validated the same way). Campaigns render the new version from their next batch.
#[handler]
pub async fn replace(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    let body: NewTemplate = json_body(req, TEMPLATE_BODY_LIMIT).await?;
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
    Ok(Json(serde_json::json!(template)))
}

/// `DELETE /api/v1/templates/{id}`: 409 while a campaign uses it.
#[handler]
pub async fn delete(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
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
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/v1/templates`.
#[handler]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(serde_json::json!(
        state.store.templates(after, limit).await?
    )))
}

/// `GET /api/v1/templates/{id}`.
#[handler]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    Ok(Json(serde_json::json!(
        state.store.template(path_id(req, "id")?).await?
    )))
}

#[derive(Deserialize, Default)]
struct Preview {
    #[serde(default)]
    subscriber: Option<PreviewSubscriber>,
}

#[derive(Deserialize, Default)]
struct PreviewSubscriber {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /api/v1/templates/{id}/preview`: renders on the given or a sample subscriber.
#[handler]
pub async fn preview(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let id = path_id(req, "id")?;
    let template = state.store.template(id).await?;
    let body: Preview = if has_body(req) {
        json_body(req, 64 * 1024).await?
    } else {
        Preview::default()
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
        campaign: serde_json::json!({"id": 0, "name": "Preview"}),
        unsubscribe_url: state.signer.url(0, 0),
        extra: serde_json::Map::new(),
    };
    let rendered = compiled.render(&ctx).map_err(render_problem)?;
    Ok(Json(serde_json::json!(rendered)))
}
