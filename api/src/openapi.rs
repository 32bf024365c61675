//! The OpenAPI 3.1 document of the API, generated from the code: every handler is an
//! `#[endpoint]` whose parameters, body and answers are declared next to it, and every
//! body is a Rust type deriving `ToSchema`, so the document cannot drift from what the
//! handlers read and write. Served at `/openapi.json`, with Swagger UI (assets embedded
//! in the binary, nothing fetched from the internet) at `/docs`.
//!
//! Also here: the typed answers handlers return ([`Created`], [`Accepted`],
//! [`NoContent`], and [`JsonBytes`] for a body serialized once and served again) so their
//! status code and schema are part of the document, and the problem+json answers every
//! [`ApiError`] can produce.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Once;

use salvo::oapi::naming::{self, NameRule, Namer};
use salvo::oapi::schema::{BasicType, KnownFormat, Object, SchemaFormat};
use salvo::oapi::security::{Http, HttpAuthScheme, SecurityScheme};
use salvo::oapi::{
    Components, Content, EndpointOutRegister, OpenApi, Operation, PathItemType,
    Response as OapiResponse, ToSchema,
};
use salvo::prelude::*;
use serde::Serialize;

use crate::problem::{ApiError, FieldError};

/// The security scheme name handlers' routers refer to.
pub const BEARER: &str = "bearer";

/// An RFC 9457 problem document, as every error answer carries it.
#[derive(Debug, Serialize, ToSchema)]
#[salvo(schema(name = "Problem"))]
pub struct ProblemDoc {
    /// Always `about:blank`: the status and title say what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's short meaning.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for a person, and what to do about it.
    pub detail: String,
    /// For validation errors: each refused field and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// The statuses an [`ApiError`] can answer with, and what each means here.
const PROBLEMS: &[(&str, &str)] = &[
    ("400", "The request is malformed (not JSON, wrong types)"),
    ("401", "No credentials, or credentials that are not valid"),
    ("403", "The caller's role does not allow this"),
    ("404", "No such resource"),
    (
        "409",
        "The request conflicts with the resource's current state",
    ),
    ("413", "The body is larger than this route accepts"),
    ("415", "The body's content type is not one this route takes"),
    (
        "422",
        "A value is not acceptable; `errors` names each field",
    ),
    (
        "429",
        "Too many requests; retry after `Retry-After` seconds",
    ),
    (
        "500",
        "An unexpected failure; details are in the server log",
    ),
    (
        "503",
        "A dependency (database, queue) is unavailable; retry shortly",
    ),
];

impl EndpointOutRegister for ApiError {
    fn register(components: &mut Components, operation: &mut Operation) {
        let schema = ProblemDoc::to_schema(components);
        for (code, meaning) in PROBLEMS {
            operation.responses.insert(
                *code,
                OapiResponse::new(*meaning)
                    .add_content("application/problem+json", Content::new(schema.clone())),
            );
        }
    }
}

fn json_response<T: ToSchema>(
    components: &mut Components,
    operation: &mut Operation,
    code: &str,
    meaning: &str,
) {
    let schema = T::to_schema(components);
    operation.responses.insert(
        code,
        OapiResponse::new(meaning).add_content("application/json", Content::new(schema)),
    );
}

/// `201 Created` with the new resource as JSON.
#[derive(Debug)]
pub struct Created<T>(pub T);

#[async_trait]
impl<T: Serialize + Send> Writer for Created<T> {
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        res.status_code(StatusCode::CREATED);
        res.render(Json(self.0));
    }
}

impl<T: ToSchema> EndpointOutRegister for Created<T> {
    fn register(components: &mut Components, operation: &mut Operation) {
        json_response::<T>(components, operation, "201", "Created");
    }
}

/// `202 Accepted`: the work is queued; the JSON says what to follow.
#[derive(Debug)]
pub struct Accepted<T>(pub T);

#[async_trait]
impl<T: Serialize + Send> Writer for Accepted<T> {
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        res.status_code(StatusCode::ACCEPTED);
        res.render(Json(self.0));
    }
}

impl<T: ToSchema> EndpointOutRegister for Accepted<T> {
    fn register(components: &mut Components, operation: &mut Operation) {
        json_response::<T>(components, operation, "202", "Accepted");
    }
}

/// `200 OK` with a JSON body of type `T` already serialized, so that a cached answer is
/// served without serializing it again; documented as `T`.
#[derive(Debug)]
pub struct JsonBytes<T> {
    body: bytes::Bytes,
    of: PhantomData<fn() -> T>,
}

impl<T: Serialize> JsonBytes<T> {
    /// Serializes `value`.
    pub fn serialize(value: &T) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| ApiError::Internal(format!("serializing the answer failed: {e}")))?;
        Ok(Self::new(body.into()))
    }
}

impl<T> JsonBytes<T> {
    /// A body serialized earlier from a `T`.
    pub fn new(body: bytes::Bytes) -> Self {
        JsonBytes {
            body,
            of: PhantomData,
        }
    }

    /// The serialized body (cheap to clone).
    pub fn bytes(&self) -> bytes::Bytes {
        self.body.clone()
    }
}

#[async_trait]
impl<T: Send> Writer for JsonBytes<T> {
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        res.headers_mut().insert(
            salvo::http::header::CONTENT_TYPE,
            salvo::http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        res.body(self.body);
    }
}

impl<T: ToSchema> EndpointOutRegister for JsonBytes<T> {
    fn register(components: &mut Components, operation: &mut Operation) {
        <Json<T> as EndpointOutRegister>::register(components, operation);
    }
}

/// `204 No Content`: done, nothing to say.
#[derive(Debug, Clone, Copy)]
pub struct NoContent;

#[async_trait]
impl Writer for NoContent {
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        res.status_code(StatusCode::NO_CONTENT);
    }
}

impl EndpointOutRegister for NoContent {
    fn register(_components: &mut Components, operation: &mut Operation) {
        operation
            .responses
            .insert("204", OapiResponse::new("Done; no body"));
    }
}

/// Names schemas and operations for people and generators: a handler in
/// `routes::lists` named `create` is the operation `lists_create`; a schema is its type's
/// own name, generics joined by `_` (`Page_MailingList`), never a module path.
struct DomainNamer;

impl Namer for DomainNamer {
    fn assign_name(&self, type_id: TypeId, type_name: &'static str, rule: NameRule) -> String {
        let base = match rule {
            NameRule::Force(name) => name.to_owned(),
            NameRule::Auto => match type_name.split_once("::routes::") {
                // Handlers are snake_case functions; schemas are CamelCase types.
                Some((_, handler))
                    if handler
                        .rsplit("::")
                        .next()
                        .is_some_and(|f| f.starts_with(|c: char| c.is_ascii_lowercase())) =>
                {
                    handler.replace("::", "_")
                }
                _ => short_type_name(&naming::resolve_generic_names(type_name)),
            },
        };
        let mut name = base.clone();
        let mut count = 1;
        while let Some((existing, _)) = naming::type_info_by_name(&name) {
            if existing == type_id {
                break;
            }
            count += 1;
            name = format!("{base}{count}");
        }
        naming::set_name_type_info(name.clone(), type_id, type_name);
        name
    }
}

/// `a::b::Page<c::List, d::X>` → `Page_List_X`.
fn short_type_name(type_name: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let last = word.rsplit("::").next().unwrap_or_default();
        out.push_str(last);
        word.clear();
    };
    for c in type_name.chars() {
        match c {
            '<' | ',' => {
                flush(&mut word, &mut out);
                out.push('_');
            }
            '>' | ' ' => flush(&mut word, &mut out),
            _ => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The document for `router`: every `#[endpoint]` it reaches, the bearer scheme, and
/// the server's version.
pub fn document(router: &Router) -> OpenApi {
    static NAMER: Once = Once::new();
    NAMER.call_once(|| naming::set_namer(DomainNamer));
    let mut doc = OpenApi::new("Mailing", env!("CARGO_PKG_VERSION"))
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::new(HttpAuthScheme::Bearer)
                    .bearer_format("JWT access token, or an API key (mk_…)"),
            ),
        )
        .merge_router(router);
    // Bodies the `#[endpoint]` macro cannot declare beside the first one (it takes one
    // content type per operation): the CSV import.
    let text = Object::with_type(BasicType::String);
    add_request_content(
        &mut doc,
        "/api/v1/lists/{id}/subscribers",
        PathItemType::Post,
        "text/csv",
        text.description(
            "A header row with an `email` column; `name` and any other column become attributes",
        ),
    );
    // The plugin upload: the same bytes as octet-stream, or a multipart form.
    let binary = || {
        Object::with_type(BasicType::String).format(SchemaFormat::KnownFormat(KnownFormat::Binary))
    };
    add_request_content(
        &mut doc,
        "/api/v1/plugins",
        PathItemType::Post,
        "application/octet-stream",
        binary(),
    );
    add_request_content(
        &mut doc,
        "/api/v1/plugins",
        PathItemType::Post,
        "multipart/form-data",
        Object::new()
            .property("component", binary().description("The component's bytes"))
            .required("component")
            .property(
                "name",
                Object::with_type(BasicType::String).description("When not in the query"),
            )
            .property(
                "version",
                Object::with_type(BasicType::String).description("When not in the query"),
            ),
    );
    doc
}

/// Adds `content_type` as another accepted body of an operation already in `doc`.
fn add_request_content(
    doc: &mut OpenApi,
    path: &str,
    method: PathItemType,
    content_type: &str,
    schema: Object,
) {
    let body = doc
        .paths
        .get_mut(path)
        .and_then(|item| item.operations.get_mut(&method))
        .and_then(|op| op.request_body.as_mut());
    match body {
        Some(body) => {
            body.contents
                .insert(content_type.to_owned(), Content::new(schema));
        }
        None => tracing::error!(
            path,
            content_type,
            "OpenAPI: no such operation body to extend"
        ),
    }
}

/// `/openapi.json` and `/docs` for a document rendered once at startup.
pub fn routes(doc: &OpenApi) -> Result<Router, serde_json::Error> {
    let json = doc.to_json()?;
    Ok(Router::new()
        .push(Router::with_path("openapi.json").get(SpecDocument { json }))
        .push(salvo_oapi::swagger_ui::SwaggerUi::new("/openapi.json").into_router("docs")))
}

/// Serves the rendered document.
struct SpecDocument {
    json: String,
}

#[async_trait]
impl Handler for SpecDocument {
    async fn handle(
        &self,
        _req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        res.headers_mut().insert(
            salvo::http::header::CONTENT_TYPE,
            salvo::http::HeaderValue::from_static("application/json"),
        );
        res.write_body(self.json.clone()).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn schema_names_drop_module_paths_and_flatten_generics() {
        assert_eq!(
            short_type_name("mailing_jobs::store::Page<mailing_jobs::store::lists::MailingList>"),
            "Page_MailingList"
        );
        assert_eq!(short_type_name("a::Pair<b::X, c::Y>"), "Pair_X_Y");
        assert_eq!(short_type_name("Problem"), "Problem");
    }
}
