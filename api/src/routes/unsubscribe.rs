//! `GET` and `POST /unsubscribe/{token}`: the link in every message. `POST` is the
//! RFC 8058 one-click request mail clients send; `GET` is a person following the link.
//! Both unsubscribe at once (the token is signed) and answer without revealing whom.

use salvo::prelude::*;

use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;

async fn unsubscribe(req: &mut Request, depot: &mut Depot) -> ApiResult<(i64, bool)> {
    let state = from_depot(depot)?;
    let token = req.param::<String>("token").unwrap_or_default();
    let (campaign_id, subscriber_id) = state
        .signer
        .verify(&token)
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    let changed = state.store.unsubscribe(subscriber_id, campaign_id).await?;
    Ok((campaign_id, changed))
}

/// `POST /unsubscribe/{token}` (one-click).
#[handler]
pub async fn one_click(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    unsubscribe(req, depot).await?;
    res.render(Json(serde_json::json!({ "unsubscribed": true })));
    Ok(())
}

/// `GET /unsubscribe/{token}`: a small confirmation page.
#[handler]
pub async fn page(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    unsubscribe(req, depot).await?;
    res.render(Text::Html(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>\
         <body><h1>You are unsubscribed</h1><p>You will not receive these emails any more.</p></body></html>",
    ));
    Ok(())
}
