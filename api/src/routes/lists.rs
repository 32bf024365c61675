//! `/api/v1/lists` and their subscribers (JSON array or CSV import).

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Deserialize;

use super::subscribers::SubscriberView;
use super::{
    JSON_LIMIT, PageQuery, json_body, nullable, pagination, path_id, present, required_text,
};
use crate::auth::principal;
use crate::openapi::{Created, NoContent};
use crate::problem::{ApiError, ApiResult, FieldError, parse_error};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::store::Page;
use mailing_jobs::store::lists::MailingList;
use mailing_jobs::store::subscribers::{ImportReport, NewSubscriber};

/// The largest subscriber import body (JSON or CSV).
pub const IMPORT_LIMIT: usize = 32 * 1024 * 1024;
/// The most rows one import request may carry.
pub const IMPORT_MAX_ROWS: usize = 200_000;

/// The most characters of a list's name.
const MAX_NAME: usize = 200;
/// The most characters of a list's description.
const MAX_DESCRIPTION: usize = 2000;

/// A list to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewList {
    /// 1 to 200 characters (surrounding spaces are trimmed).
    #[salvo(schema(min_length = 1, max_length = 200))]
    name: String,
    /// At most 2,000 characters (surrounding spaces are trimmed; blank means none).
    #[serde(default)]
    #[salvo(schema(max_length = 2000))]
    description: Option<String>,
}

/// The fields of a list to change; absent fields stay as they are. Each given field is
/// validated as on creation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ListChanges {
    /// 1 to 200 characters (surrounding spaces are trimmed).
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(nullable = false, min_length = 1, max_length = 200))]
    name: Option<String>,
    /// At most 2,000 characters (surrounding spaces are trimmed); `null` or a blank
    /// string clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[salvo(schema(max_length = 2000))]
    description: Option<Option<String>>,
}

/// A list's name: 1 to [`MAX_NAME`] characters once trimmed.
fn check_name(raw: &str) -> Result<String, FieldError> {
    required_text("name", raw, MAX_NAME)
}

/// A list's description: at most [`MAX_DESCRIPTION`] characters once trimmed; blank
/// (or absent) means none.
fn check_description(raw: Option<&str>) -> Result<Option<String>, FieldError> {
    match raw.map(str::trim) {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        )),
        Some("") | None => Ok(None),
        Some(d) => Ok(Some(d.to_owned())),
    }
}

/// Both fields' outcomes, or a 422 naming every refused one.
fn checked<N, D>(
    name: Result<N, FieldError>,
    description: Result<D, FieldError>,
) -> ApiResult<(N, D)> {
    match (name, description) {
        (Ok(name), Ok(description)) => Ok((name, description)),
        (name, description) => Err(ApiError::fields(
            [name.err(), description.err()]
                .into_iter()
                .flatten()
                .collect(),
        )),
    }
}

/// `POST /api/v1/lists`: creates a list (editor).
#[endpoint(tags("lists"), request_body = NewList)]
pub async fn create(req: &mut Request, depot: &mut Depot) -> ApiResult<Created<MailingList>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let body: NewList = json_body(req, JSON_LIMIT).await?;
    let (name, description) = checked(
        check_name(&body.name),
        check_description(body.description.as_deref()),
    )?;
    let list = state
        .store
        .create_list(&name, description.as_deref())
        .await?;
    state
        .store
        .audit(
            &who.username,
            "list.create",
            Some(&format!("list:{}", list.id)),
            &serde_json::json!({}),
        )
        .await?;
    Ok(Created(list))
}

/// `GET /api/v1/lists`: one page of lists.
#[endpoint(tags("lists"), parameters(PageQuery))]
pub async fn index(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<Page<MailingList>>> {
    let state = from_depot(depot)?;
    let (after, limit) = pagination(req)?;
    Ok(Json(state.store.lists(after, limit).await?))
}

/// `PATCH /api/v1/lists/{id}` with `{"name"?, "description"?}`: changes what is given
/// (editor), validated as on creation; `"description": null` clears the description.
#[endpoint(
    tags("lists"),
    parameters(("id" = i64, Path, description = "The list")),
    request_body = ListChanges
)]
pub async fn update(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<MailingList>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    let body: ListChanges = json_body(req, JSON_LIMIT).await?;
    let (name, description) = checked(
        body.name.as_deref().map(check_name).transpose(),
        body.description
            .as_ref()
            .map(|d| check_description(d.as_deref()))
            .transpose(),
    )?;
    let list = state
        .store
        .update_list(
            id,
            name.as_deref(),
            description.as_ref().map(Option::as_deref),
        )
        .await?;
    let given: Vec<&str> = [
        ("name", name.is_some()),
        ("description", description.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, given)| given.then_some(field))
    .collect();
    state
        .store
        .audit(
            &who.username,
            "list.update",
            Some(&format!("list:{id}")),
            &serde_json::json!({ "fields": given }),
        )
        .await?;
    Ok(Json(list))
}

/// `DELETE /api/v1/lists/{id}`: the list and its memberships (not the subscribers);
/// 409 while a campaign targets it.
#[endpoint(tags("lists"), parameters(("id" = i64, Path, description = "The list")))]
pub async fn delete(req: &mut Request, depot: &mut Depot) -> ApiResult<NoContent> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    state.store.delete_list(id).await?;
    state
        .store
        .audit(
            &who.username,
            "list.delete",
            Some(&format!("list:{id}")),
            &serde_json::json!({}),
        )
        .await?;
    Ok(NoContent)
}

/// `GET /api/v1/lists/{id}`.
#[endpoint(tags("lists"), parameters(("id" = i64, Path, description = "The list")))]
pub async fn show(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<MailingList>> {
    let state = from_depot(depot)?;
    Ok(Json(state.store.list(path_id(req, "id")?).await?))
}

/// `GET /api/v1/lists/{id}/subscribers`: one page of the list's members.
#[endpoint(tags("lists"), parameters(("id" = i64, Path, description = "The list"), PageQuery))]
pub async fn subscribers(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Json<Page<SubscriberView>>> {
    let state = from_depot(depot)?;
    let id = path_id(req, "id")?;
    state.store.list(id).await?;
    let (after, limit) = pagination(req)?;
    let page = state.store.list_subscribers(id, after, limit).await?;
    Ok(Json(Page {
        items: page.items.iter().map(SubscriberView::from).collect(),
        next: page.next,
    }))
}

/// A JSON import body: 1 to 200,000 subscribers.
#[derive(Deserialize, ToSchema)]
#[salvo(schema(min_items = 1, max_items = 200000))]
struct SubscriberRows(Vec<NewSubscriber>);

/// Parses a CSV body with a header row: `email` (required), `name`, and any other
/// column becomes an attribute.
fn parse_csv(bytes: &[u8]) -> ApiResult<Vec<NewSubscriber>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| ApiError::BadRequest(format!("the CSV header row cannot be read: {e}")))?
        .clone();
    let email_col = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case("email"))
        .ok_or_else(|| {
            ApiError::field("email", "the CSV header row must have an `email` column")
        })?;
    let name_col = headers.iter().position(|h| h.eq_ignore_ascii_case("name"));
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| ApiError::BadRequest(format!("CSV data row {i}: {e}")))?;
        if rows.len() >= IMPORT_MAX_ROWS {
            return Err(ApiError::field(
                "body",
                format!("send at most {IMPORT_MAX_ROWS} subscribers per request"),
            ));
        }
        let mut attributes = serde_json::Map::new();
        for (col, value) in record.iter().enumerate() {
            if col != email_col && Some(col) != name_col && !value.is_empty() {
                attributes.insert(headers[col].to_owned(), value.into());
            }
        }
        rows.push(NewSubscriber {
            email: record.get(email_col).unwrap_or_default().to_owned(),
            name: name_col.and_then(|c| record.get(c)).map(str::to_owned),
            attributes: Some(attributes),
        });
    }
    Ok(rows)
}

/// `POST /api/v1/lists/{id}/subscribers`: a JSON array of subscribers, or `text/csv`.
/// Valid rows are written in one transaction; invalid ones are reported per row. (The
/// document's `text/csv` alternative is added in [`crate::openapi::document`].)
#[endpoint(
    tags("lists"),
    parameters(("id" = i64, Path, description = "The list")),
    request_body = SubscriberRows,
)]
pub async fn add_subscribers(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Json<ImportReport>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Editor)?;
    let id = path_id(req, "id")?;
    let is_csv = req
        .content_type()
        .is_some_and(|m| m.type_() == "text" && m.subtype() == "csv");
    let rows: Vec<NewSubscriber> = if is_csv {
        let bytes = req
            .payload_with_max_size(IMPORT_LIMIT)
            .await
            .map_err(|e| parse_error(e, IMPORT_LIMIT))?;
        parse_csv(bytes)?
    } else {
        json_body::<SubscriberRows>(req, IMPORT_LIMIT).await?.0
    };
    if rows.is_empty() {
        return Err(ApiError::field("body", "send at least one subscriber"));
    }
    if rows.len() > IMPORT_MAX_ROWS {
        return Err(ApiError::field(
            "body",
            format!("send at most {IMPORT_MAX_ROWS} subscribers per request"),
        ));
    }
    let report = state.store.add_subscribers(id, &rows).await?;
    state
        .store
        .audit(
            &who.username,
            "list.import",
            Some(&format!("list:{id}")),
            &serde_json::json!({"inserted": report.inserted, "updated": report.updated, "rejected": report.rejected.len()}),
        )
        .await?;
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns_other_than_email_and_name_become_attributes() {
        let rows = parse_csv(b"email,name,city\nann@example.com,Ann,Oslo\n").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name.as_deref(), Some("Ann"));
        assert_eq!(rows[0].attributes.as_ref().unwrap()["city"], "Oslo");
    }

    #[test]
    fn csv_without_email_column_is_refused() {
        assert!(matches!(
            parse_csv(b"name\nAnn\n"),
            Err(ApiError::Validation { .. })
        ));
    }
}
