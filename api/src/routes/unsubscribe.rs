//! `GET` and `POST /unsubscribe/{token}`: the link in every message. `POST` is the
//! RFC 8058 one-click request mail clients send (and the confirmation form's submit);
//! `GET` only shows that form, because mail scanners follow links and must not
//! unsubscribe anyone. Answers never reveal whom a token names.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Serialize;

use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;

fn token(req: &Request) -> String {
    req.param::<String>("token").unwrap_or_default()
}

fn page(title: &str, body: &str) -> Text<String> {
    Text::Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1>{body}</body></html>"
    ))
}

/// The JSON answer of a one-click unsubscribe.
#[derive(Debug, Serialize, ToSchema)]
struct OneClickAnswer {
    /// Always true: the address is unsubscribed (or already was).
    unsubscribed: bool,
}

/// `GET /unsubscribe/{token}`: a confirmation page whose button POSTs. 404 (problem+json)
/// for a token that is not valid.
#[endpoint(
    tags("unsubscribe"),
    parameters(("token" = String, Path, description = "The signed token of the message's unsubscribe link")),
    responses((status_code = 200, description = "An HTML page asking to confirm, whose button POSTs to the same address", content_type = "text/html", body = String)),
    status_codes(200, 404, 429, 500)
)]
pub async fn confirm(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let token = token(req);
    state
        .signer
        .verify(&token)
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    res.render(page(
        "Unsubscribe",
        &format!(
            "<p>Stop receiving these emails?</p><form method=\"post\" action=\"/unsubscribe/{token}\">\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">Unsubscribe</button></form>"
        ),
    ));
    Ok(())
}

/// `POST /unsubscribe/{token}`: unsubscribes at once (RFC 8058 one-click: mail clients
/// send `List-Unsubscribe=One-Click` as a form, which is not read). Answers an HTML page
/// when the client accepts `text/html`, JSON otherwise; 404 for a token that is not
/// valid.
#[endpoint(
    tags("unsubscribe"),
    parameters(("token" = String, Path, description = "The signed token of the message's unsubscribe link")),
    responses((
        status_code = 200,
        description = "Unsubscribed: an HTML page when `Accept` includes `text/html`, else JSON",
        content(("application/json" = OneClickAnswer), ("text/html" = String))
    )),
    status_codes(200, 404, 429, 500, 503)
)]
pub async fn one_click(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let (campaign_id, subscriber_id) = state
        .signer
        .verify(&token(req))
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    if state.store.unsubscribe(subscriber_id, campaign_id).await? {
        mailing_jobs::telemetry::Unsubscribed.emit();
    }
    let wants_html = req
        .headers()
        .get(salvo::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        res.render(page(
            "You are unsubscribed",
            "<p>You will not receive these emails any more.</p>",
        ));
    } else {
        res.render(Json(OneClickAnswer { unsubscribed: true }));
    }
    Ok(())
}
