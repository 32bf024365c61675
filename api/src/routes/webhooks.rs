//! Provider webhooks. `POST /webhooks/resend` checks the Svix signature (`svix-id`,
//! `svix-timestamp`, `svix-signature` with one or more `v1,` entries so keys can rotate,
//! a 5-minute tolerance, constant-time comparison) and maps delivered, bounced,
//! complained and delivery_delayed events onto the ledger and the suppression list;
//! an event id is applied once. `POST /webhooks/bounce` is a generic bounce and
//! complaint hook for other senders, authenticated by a shared secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::problem::{ApiError, ApiResult, parse_error};
use crate::state::from_depot;
use mailing_jobs::store::suppressions::ProviderEvent;

/// The largest webhook body accepted.
pub const WEBHOOK_LIMIT: usize = 256 * 1024;
/// How far a webhook's timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;

/// Webhook secrets.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    /// `RESEND_WEBHOOK_SECRET` (`whsec_…`), decoded.
    pub resend: Option<Vec<u8>>,
    /// `BOUNCE_WEBHOOK_SECRET`.
    pub bounce: Option<String>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets")
            .field("resend", &self.resend.as_ref().map(|_| "***"))
            .field("bounce", &self.bounce.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Decodes a Svix secret (`whsec_` + base64).
pub fn decode_svix_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(b64)
        .map_err(|e| format!("not a Svix secret (whsec_ + base64): {e}"))
}

/// Checks a Svix signature; the error says what is wrong (for the 401 answer).
pub fn verify_svix(
    key: &[u8],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| "svix-timestamp is not a number".to_owned())?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(format!(
            "the webhook timestamp is {}s away from now (tolerance {TOLERANCE_SECS}s)",
            now - ts
        ));
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    // verify_slice compares in constant time; every `v1,` entry is tried (key rotation).
    let matched = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .any(|sig| mac.clone().verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err("no signature matches (wrong secret or altered body)".into())
    }
}

fn header(req: &Request, name: &str) -> ApiResult<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Unauthorized(format!("the {name} header is missing")))
}

/// The answer to a Resend event.
#[derive(Debug, Serialize, ToSchema)]
struct ResendAnswer {
    /// `ok`, or `duplicate` for an event id already applied (nothing was done again).
    status: String,
    /// The event id (`svix-id`), for a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The event's type, when it was processed.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Whether a delivery record changed, when it was processed (false for event types
    /// that are not mapped and for messages this server did not send).
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<bool>,
}

/// `POST /webhooks/resend`: a Resend event, signed the Svix way. `email.delivered`,
/// `email.delivery_delayed`, `email.bounced` and `email.complained` update the delivery
/// record (the message `data.email_id` among those sent to the first `data.to` address,
/// or without an id the newest one sent to it); hard bounces and complaints suppress the
/// address. Other types are acknowledged and ignored.
/// 401 for a missing header or a signature that does not match; 404 when
/// `RESEND_WEBHOOK_SECRET` is not set.
#[endpoint(
    tags("webhooks"),
    parameters(
        ("svix-id" = String, Header, description = "The event id; an id already applied is answered `duplicate`"),
        ("svix-timestamp" = String, Header, description = "When it was sent, epoch seconds; at most 5 minutes from now"),
        ("svix-signature" = String, Header, description = "One or more space-separated `v1,<base64 HMAC-SHA256>` signatures of `id.timestamp.body`"),
    ),
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "The event as Resend sends it (at most 256 KiB): `type`, and `data` with `email_id`, `to` and, for bounces, `bounce.type` and `bounce.message`"
    )
)]
pub async fn resend(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<ResendAnswer>> {
    let state = from_depot(depot)?;
    let key = state.webhooks.resend.clone().ok_or_else(|| {
        ApiError::NotFound("the Resend webhook is not configured (RESEND_WEBHOOK_SECRET)".into())
    })?;
    let id = header(req, "svix-id")?;
    let timestamp = header(req, "svix-timestamp")?;
    let signatures = header(req, "svix-signature")?;
    let body = req
        .payload_with_max_size(WEBHOOK_LIMIT)
        .await
        .map_err(|e| parse_error(e, WEBHOOK_LIMIT))?
        .clone();
    verify_svix(
        &key,
        &id,
        &timestamp,
        &signatures,
        &body,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|reason| ApiError::Unauthorized(format!("webhook signature refused: {reason}")))?;
    let event: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the event is not JSON: {e}")))?;
    let kind = event["type"].as_str().unwrap_or_default();
    let data = &event["data"];
    let email_id = data["email_id"].as_str();
    let to = data["to"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|v| v.as_str());
    let mapped = match kind {
        "email.delivered" => Some(ProviderEvent::Delivered),
        "email.delivery_delayed" => Some(ProviderEvent::Delayed),
        "email.complained" => Some(ProviderEvent::Complained),
        "email.bounced" => {
            let kind = data["bounce"]["type"].as_str().unwrap_or("Permanent");
            Some(ProviderEvent::Bounced {
                permanent: !kind.eq_ignore_ascii_case("transient"),
            })
        }
        _ => None,
    };
    // Applied first and recorded after, so an event whose application failed is applied
    // when the provider retries it; applying twice is harmless (statuses only move
    // forward, suppressions are idempotent).
    if state.store.event_seen(&id).await? {
        return Ok(Json(ResendAnswer {
            status: "duplicate".into(),
            id: Some(id),
            kind: None,
            applied: None,
        }));
    }
    let applied = match mapped {
        Some(ev) => {
            let detail = data["bounce"]["message"]
                .as_str()
                .unwrap_or(kind)
                .chars()
                .take(500)
                .collect::<String>();
            let to = to.and_then(|t| mailing_jobs::store::subscribers::normalize_email(t).ok());
            let applied = state
                .store
                .apply_provider_event(email_id, to.as_deref(), ev, &detail)
                .await?;
            if applied {
                event_emitted(ev);
            }
            applied
        }
        None => false,
    };
    state.store.first_time_event(&id, "resend").await?;
    Ok(Json(ResendAnswer {
        status: "ok".into(),
        id: None,
        kind: Some(kind.to_owned()),
        applied: Some(applied),
    }))
}

/// A bounce or complaint reported by another sender.
#[derive(Deserialize, ToSchema)]
struct BounceReport {
    /// The recipient's address.
    #[salvo(schema(format = Email, max_length = 254))]
    email: String,
    /// `bounce` or `complaint`.
    #[serde(rename = "type")]
    #[salvo(schema(pattern = "^(bounce|complaint)$"))]
    kind: String,
    /// For a bounce: whether it is permanent (a hard bounce suppresses the address);
    /// true when absent.
    #[serde(default)]
    permanent: Option<bool>,
    /// The provider's message id, to find the delivery record among the messages sent to
    /// `email`; without it, the newest sent message to the address.
    #[serde(default)]
    message_id: Option<String>,
    /// The provider's explanation, kept on the delivery record.
    #[serde(default)]
    reason: Option<String>,
}

/// The answer to a bounce report.
#[derive(Debug, Serialize, ToSchema)]
struct BounceAnswer {
    /// Always `ok`.
    status: String,
    /// Whether a delivery record changed.
    applied: bool,
}

/// `POST /webhooks/bounce` with `X-Mailing-Webhook-Secret` and
/// `{"email","type":"bounce"|"complaint","permanent"?,"message_id"?,"reason"?}`: marks
/// the delivery and, for hard bounces and complaints, suppresses the address. 401 for a
/// wrong secret; 404 when `BOUNCE_WEBHOOK_SECRET` is not set.
#[endpoint(
    tags("webhooks"),
    parameters(("x-mailing-webhook-secret" = String, Header, description = "The shared secret, `BOUNCE_WEBHOOK_SECRET`")),
    request_body = BounceReport
)]
pub async fn bounce(req: &mut Request, depot: &mut Depot) -> ApiResult<Json<BounceAnswer>> {
    let state = from_depot(depot)?;
    let secret = state.webhooks.bounce.clone().ok_or_else(|| {
        ApiError::NotFound("the bounce webhook is not configured (BOUNCE_WEBHOOK_SECRET)".into())
    })?;
    let given = header(req, "x-mailing-webhook-secret")?;
    let same = given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(ApiError::Unauthorized("wrong webhook secret".into()));
    }
    let body: BounceReport = super::json_body(req, WEBHOOK_LIMIT).await?;
    let email = mailing_jobs::store::subscribers::normalize_email(&body.email)
        .map_err(|m| ApiError::field("email", m))?;
    let event = match body.kind.as_str() {
        "bounce" => ProviderEvent::Bounced {
            permanent: body.permanent.unwrap_or(true),
        },
        "complaint" => ProviderEvent::Complained,
        other => {
            return Err(ApiError::field(
                "type",
                format!("'{other}' is not bounce or complaint"),
            ));
        }
    };
    let detail = body.reason.unwrap_or_else(|| body.kind.clone());
    event_emitted(event);
    let applied = state
        .store
        .apply_provider_event(body.message_id.as_deref(), Some(&email), event, &detail)
        .await?;
    Ok(Json(BounceAnswer {
        status: "ok".into(),
        applied,
    }))
}

/// Records an applied provider event.
fn event_emitted(event: ProviderEvent) {
    let event = match event {
        ProviderEvent::Delivered => "delivered",
        ProviderEvent::Delayed => "delayed",
        ProviderEvent::Bounced { .. } => "bounced",
        ProviderEvent::Complained => "complained",
    };
    mailing_jobs::telemetry::ProviderEventApplied { event }.emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn valid_signature_passes_and_rotated_keys_are_accepted() {
        let key = b"0123456789abcdef0123456789abcdef";
        let good = sign(key, "msg_1", "1000", b"{}");
        assert!(verify_svix(key, "msg_1", "1000", &good, b"{}", 1010).is_ok());
        let rotated = format!("v1,AAAA {good}");
        assert!(verify_svix(key, "msg_1", "1000", &rotated, b"{}", 1010).is_ok());
    }

    #[test]
    fn stale_tampered_and_wrong_secret_payloads_are_refused() {
        let key = b"0123456789abcdef0123456789abcdef";
        let good = sign(key, "msg_1", "1000", b"{}");
        assert!(
            verify_svix(key, "msg_1", "1000", &good, b"{}", 1000 + 301)
                .unwrap_err()
                .contains("tolerance")
        );
        assert!(verify_svix(key, "msg_1", "1000", &good, b"{\"x\":1}", 1000).is_err());
        assert!(
            verify_svix(
                b"another-secret-another-secret!!!",
                "msg_1",
                "1000",
                &good,
                b"{}",
                1000
            )
            .is_err()
        );
        assert!(verify_svix(key, "msg_2", "1000", &good, b"{}", 1000).is_err());
    }

    #[test]
    fn svix_secrets_decode_with_or_without_prefix() {
        assert_eq!(decode_svix_secret("whsec_AAEC").unwrap(), vec![0, 1, 2]);
        assert!(decode_svix_secret("whsec_!!").is_err());
    }
}
