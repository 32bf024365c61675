//! `/api/v1/plugins`: the plugin registry. An upload is validated before anything is
//! stored: it must be a WebAssembly component implementing `world personalizer` of
//! `wit/mailing-plugin.wit`; anything else is refused with the reason. Components are
//! stored content-addressed (sha256) under a name and a version.
//!
//! Uploading and deleting run or remove code in the send path, so they need the admin
//! role; editors and viewers may list plugins and use them in campaigns.

use salvo::oapi::{
    BasicType, Components, KnownFormat, Object, RefOr, Schema, SchemaFormat, ToSchema,
};
use salvo::prelude::*;
use serde::Deserialize;

use super::{PageQuery, pagination, path_id};
use crate::auth::principal;
use crate::openapi::{Created, NoContent};
use crate::problem::{ApiError, ApiResult, FieldError, parse_error};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::Page;
use mailing_jobs::store::plugins::PluginRow;
use mailing_plugins::PluginError;

/// The component's bytes as an upload body: a binary string in the document (never
/// built; the handler reads the bytes itself).
enum WasmComponent {}

impl ToSchema for WasmComponent {
    fn to_schema(_components: &mut Components) -> RefOr<Schema> {
        Object::with_type(BasicType::String)
            .format(SchemaFormat::KnownFormat(KnownFormat::Binary))
            .content_media_type("application/wasm")
            .into()
    }
}

/// `?name=&version=` of an upload (with multipart they may be form fields instead).
#[derive(Debug, Deserialize, ToParameters)]
#[salvo(parameters(default_parameter_in = Query))]
pub struct PluginUpload {
    /// The plugin's name: 1 to 64 letters, digits, `-` or `_` (surrounding spaces are
    /// trimmed).
    #[salvo(parameter(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$"))]
    pub name: Option<String>,
    /// Its version: 1 to 32 letters, digits, `-`, `_`, `.` or `+` (surrounding spaces
    /// are trimmed). A name and version are registered once.
    #[salvo(parameter(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9_.+-]+$"))]
    pub version: Option<String>,
}

fn check_name(field: &str, value: Option<String>, max: usize, extra: &str) -> ApiResult<String> {
    let value = value.unwrap_or_default();
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::field(
            field,
            "is required: POST /api/v1/plugins?name=NAME&version=VERSION",
        ));
    }
    if value.len() > max
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(c))
    {
        return Err(ApiError::field(
            field,
            format!(
                "must be 1 to {max} characters of letters, digits, '-', '_'{extra_note}",
                extra_note = if extra.is_empty() {
                    String::new()
                } else {
                    format!(" or any of \"{extra}\"")
                }
            ),
        ));
    }
    Ok(value.to_owned())
}

fn refusal(e: PluginError) -> ApiError {
    match e {
        PluginError::TooLarge { max, .. } => ApiError::PayloadTooLarge(max),
        PluginError::Host(m) => ApiError::Internal(m),
        other => ApiError::Validation {
            detail: format!("not a valid plugin: {other}"),
            errors: vec![FieldError::new("component", other.to_string())],
        },
    }
}

/// `POST /api/v1/plugins?name=&version=` with the component's bytes as the body
/// (`application/wasm`, or `application/octet-stream`), or `multipart/form-data` with
/// the component in a file part named `component` (`name` and `version` may then be
/// form fields instead of query parameters). Admin only. (The document's
/// `application/octet-stream` and `multipart/form-data` alternatives are added in
/// [`crate::openapi::document`].)
#[endpoint(
    tags("plugins"),
    parameters(PluginUpload),
    request_body(
        content = WasmComponent,
        content_type = "application/wasm",
        description = "The WebAssembly component's bytes (a component implementing `world personalizer`)"
    )
)]
pub async fn create(req: &mut Request, depot: &mut Depot) -> ApiResult<Created<PluginRow>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let mut name = req.query::<String>("name");
    let mut version = req.query::<String>("version");
    let media = req
        .content_type()
        .map(|m| m.essence_str().to_ascii_lowercase())
        .unwrap_or_default();
    let limit = state.plugins.limits().max_component_bytes;
    let bytes = match media.as_str() {
        // The body is read (bounded) before the names are checked, so a refused request
        // never leaves unread bytes on a kept-alive connection.
        "application/wasm" | "application/octet-stream" => req
            .payload_with_max_size(limit)
            .await
            .map_err(|e| parse_error(e, limit))?
            .to_vec(),
        "multipart/form-data" => {
            let form = req
                .form_data_max_size(limit + (64 << 10))
                .await
                .map_err(|e| parse_error(e, limit))?;
            name = name.or_else(|| form.fields.get("name").cloned());
            version = version.or_else(|| form.fields.get("version").cloned());
            let part = form.files.get("component").ok_or_else(|| {
                ApiError::field(
                    "component",
                    "send the component as a file part named `component`",
                )
            })?;
            if part.size() > limit as u64 {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            tokio::fs::read(part.path())
                .await
                .map_err(|e| ApiError::Internal(format!("reading the uploaded part: {e}")))?
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "send the component's bytes with Content-Type: application/wasm, or as the \
                 `component` part of multipart/form-data (got {})",
                if other.is_empty() { "none" } else { other }
            )));
        }
    };
    let name = check_name("name", name, 64, "")?;
    let version = check_name("version", version, 32, ".+")?;
    let host = state.plugins.clone();
    let (info, bytes) =
        tokio::task::spawn_blocking(move || host.validate(&bytes).map(|(info, _)| (info, bytes)))
            .await
            .map_err(|e| ApiError::Internal(format!("plugin validation task: {e}")))?
            .map_err(refusal)?;
    let row = state
        .store
        .create_plugin(&name, &version, &info.sha256, &bytes)
        .await?;
    state
        .store
        .audit(
            &who.username,
            "plugin.create",
            Some(&format!("plugin:{}", row.id)),
            &serde_json::json!({ "name": name, "version": version, "sha256": info.sha256 }),
        )
        .await?;
    Ok(Created(row))
}

/// `GET /api/v1/plugins`: a page of registered plugins.
#[endpoint(tags("plugins"), parameters(PageQuery))]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Page<PluginRow>>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Viewer)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(state.store.plugins(after, limit).await?))
}

/// `GET /api/v1/plugins/{id}`.
#[endpoint(tags("plugins"), parameters(("id" = i64, Path, description = "The plugin")))]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<PluginRow>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Viewer)?;
    let id = path_id(req, "id")?;
    Ok(Json(state.store.plugin(id).await?))
}

/// `DELETE /api/v1/plugins/{id}`: 409 while an unfinished campaign uses it (admin).
#[endpoint(tags("plugins"), parameters(("id" = i64, Path, description = "The plugin")))]
pub async fn delete(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let id = path_id(req, "id")?;
    state.store.delete_plugin(id).await?;
    state
        .store
        .audit(
            &who.username,
            "plugin.delete",
            Some(&format!("plugin:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(NoContent)
}
