//! RFC 9457 problem details: the one error type of the HTTP layer and how it is written.
//! Every error a client sees is `application/problem+json` with a `title` a person can
//! read and, for validation errors, an `errors` array naming each field.

use salvo::http::header::{self, HeaderValue};
use salvo::http::{ParseError, StatusCode};
use salvo::prelude::*;
use serde::Serialize;

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, salvo::oapi::ToSchema)]
pub struct FieldError {
    /// The field, as a JSON path (`list_ids[0]`, `html`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (not JSON, wrong types).
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but its values are not acceptable.
    #[error("{detail}")]
    Validation {
        /// Summary.
        detail: String,
        /// Per-field reasons.
        errors: Vec<FieldError>,
    },
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. sending a running campaign).
    #[error("{0}")]
    Conflict(String),
    /// The body is over the route's size limit.
    #[error("the request body is larger than this route accepts ({0} bytes)")]
    PayloadTooLarge(usize),
    /// The content type is not one this route takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many attempts; retry after the given seconds.
    #[error("too many attempts; retry in {0} seconds")]
    TooManyRequests(u64),
    /// A dependency (database, queue) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details go to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A validation error on one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::fields(vec![FieldError::new(field, message)])
    }

    /// A validation error naming every refused field at once.
    pub fn fields(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::Validation { detail, errors }
    }

    fn status_and_title(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            ApiError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Validation failed"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")
            }
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        ApiError::fields(vec![err])
    }
}

impl From<mailing_jobs::StoreError> for ApiError {
    fn from(err: mailing_jobs::StoreError) -> Self {
        use mailing_jobs::StoreError as E;
        match err {
            E::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            E::Conflict(msg) => ApiError::Conflict(msg),
            E::Database(sqlx::Error::PoolTimedOut) => {
                ApiError::Unavailable("the database is busy; retry shortly".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<mailing_jobs::queue::QueueError> for ApiError {
    fn from(err: mailing_jobs::queue::QueueError) -> Self {
        ApiError::Unavailable(format!("the job queue is unavailable: {err}"))
    }
}

/// Maps a body parse failure to the matching problem.
pub fn parse_error(err: ParseError, limit: usize) -> ApiError {
    match err {
        ParseError::PayloadTooLarge => ApiError::PayloadTooLarge(limit),
        ParseError::InvalidContentType => {
            ApiError::UnsupportedMediaType("send the body as application/json".into())
        }
        ParseError::SerdeJson(e) => {
            ApiError::BadRequest(format!("the body is not valid JSON for this route: {e}"))
        }
        other => ApiError::BadRequest(format!("the body could not be read: {other}")),
    }
}

/// Writes a problem document.
pub fn write_problem(
    res: &mut Response,
    status: StatusCode,
    title: &str,
    detail: &str,
    errors: Option<&[FieldError]>,
) {
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(errors) = errors {
        body["errors"] = serde_json::json!(errors);
    }
    res.render_with_status(status, Json(body));
}

#[async_trait]
impl Writer for ApiError {
    async fn write(self, req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        let (status, title) = self.status_and_title();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = %cause, path = %req.uri().path(), "Request failed");
        }
        if let ApiError::TooManyRequests(secs) = &self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        let detail = self.to_string();
        let errors = match &self {
            ApiError::Validation { errors, .. } => Some(errors.as_slice()),
            _ => None,
        };
        write_problem(res, status, title, &detail, errors);
    }
}

/// Turns salvo's own error pages (unknown route, wrong method) into problem+json.
#[handler]
pub async fn problem_catcher(res: &mut Response, ctrl: &mut FlowCtrl) {
    let status = res.status_code.unwrap_or(StatusCode::NOT_FOUND);
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = match status {
        StatusCode::NOT_FOUND => "no route matches this path",
        StatusCode::METHOD_NOT_ALLOWED => "this route does not accept this method",
        _ => title,
    };
    write_problem(res, status, title, detail, None);
    ctrl.skip_rest();
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
