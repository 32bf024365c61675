//! Route handlers, one module per resource, and the helpers they share (bodies,
//! pagination, ids). The router itself is assembled in `crate::router`.

pub mod api_keys;
pub mod campaigns;
pub mod lists;
pub mod ops;
pub mod plugins;
pub mod session;
pub mod subscribers;
pub mod suppressions;
pub mod templates;
pub mod tx;
pub mod unsubscribe;
pub mod users;
pub mod webhooks;

use salvo::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::problem::{ApiError, ApiResult, FieldError, parse_error};

/// `?limit=&after=` as the OpenAPI document shows it; [`pagination`] reads and checks it.
#[derive(Debug, serde::Deserialize, ToParameters)]
#[salvo(parameters(default_parameter_in = Query))]
pub struct PageQuery {
    /// How many items to return (1 to 500; 50 when absent).
    #[salvo(parameter(minimum = 1, maximum = 500))]
    pub limit: Option<u32>,
    /// The `next` value of the previous page; absent for the first page.
    pub after: Option<i64>,
}

/// The largest JSON body most routes accept.
pub const JSON_LIMIT: usize = 256 * 1024;
/// The largest page a collection returns.
pub const MAX_PAGE: u32 = 500;
/// The page size when the client names none.
pub const DEFAULT_PAGE: u32 = 50;

/// Reads a JSON body of at most `limit` bytes.
pub async fn json_body<T: DeserializeOwned>(req: &mut Request, limit: usize) -> ApiResult<T> {
    req.parse_json_with_max_size::<T>(limit)
        .await
        .map_err(|e| parse_error(e, limit))
}

/// For `#[serde(default, deserialize_with = "present")]`: a field that may be absent
/// (`None`) but not `null` (`null` is a type error, as on creation).
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// For `#[serde(default, deserialize_with = "nullable")]`: tells an absent field (`None`)
/// from an explicit `null` (`Some(None)`).
pub fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Whether the request carries a body (a non-zero length or a chunked one).
pub fn has_body(req: &Request) -> bool {
    let headers = req.headers();
    headers.contains_key(salvo::http::header::TRANSFER_ENCODING)
        || headers
            .get(salvo::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// The `{id}` path parameter.
pub fn path_id(req: &Request, name: &str) -> ApiResult<i64> {
    req.param::<String>(name)
        .and_then(|raw| raw.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("no resource has this {name}")))
}

/// `?limit=&after=` of a collection.
pub fn pagination(req: &Request) -> ApiResult<(i64, u32)> {
    let after = match req.query::<String>("after") {
        None => 0,
        Some(raw) => raw
            .parse::<i64>()
            .map_err(|_| ApiError::field("after", "must be the `next` value of a previous page"))?,
    };
    let limit = match req.query::<String>("limit") {
        None => DEFAULT_PAGE,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    format!("must be between 1 and {MAX_PAGE}"),
                ));
            }
        },
    };
    Ok((after, limit))
}

/// Checks a required text field: trimmed, non-empty, at most `max` characters.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, FieldError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(v.to_owned())
}
