//! The `resend` provider: Resend's (or a compatible service's) HTTP API. Messages go in
//! `POST {RESEND_API_URL}/emails/batch` requests of up to 100, each with an
//! `Idempotency-Key` derived from its messages' delivery keys: a retried request with
//! the same recipients carries the same key, so the service accepts it once.
//!
//! Answers: 2xx sent; 429 throttled (honours `Retry-After`); 408, 409, 5xx, 401 and 403
//! temporary (a bad key must not burn recipients); other 4xx refused for good.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Outgoing, ProviderError, json};
use crate::buffers::BufferPool;

/// The most messages one batch request may carry (Resend's limit).
pub const MAX_PER_REQUEST: usize = 100;

/// Resend settings.
#[derive(Clone)]
pub struct ResendConfig {
    /// `RESEND_API_KEY`.
    pub api_key: String,
    /// `RESEND_API_URL`, without a trailing slash.
    pub base_url: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for ResendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResendConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"***")
            .finish()
    }
}

/// Sends through the Resend batch API.
#[derive(Debug, Clone)]
pub struct ResendProvider {
    client: reqwest::Client,
    config: ResendConfig,
    bodies: BodyBuffers,
}

/// The provider's request bodies, kept for the next requests ([`crate::buffers`]). A
/// body is ~1.3 MB per 100 messages of the bench's template; those in flight at once
/// (`WORKER_CONCURRENCY` batches, each with a request or two out) fit in the budget.
#[derive(Debug, Clone)]
struct BodyBuffers(Arc<BufferPool>);

impl BodyBuffers {
    /// The bytes of bodies kept between requests.
    const BUDGET: usize = 16 << 20;
    /// A body larger than this (unusually large messages) is freed rather than kept.
    const MAX_KEPT_BYTES: usize = 4 << 20;

    fn new() -> Self {
        BodyBuffers(Arc::new(BufferPool::new(
            Self::BUDGET,
            Self::MAX_KEPT_BYTES,
        )))
    }

    /// The batch body of `messages` in a kept buffer, given back when the HTTP client
    /// drops the last reference to the request body.
    fn body(&self, messages: &[&Outgoing]) -> bytes::Bytes {
        let mut buffer = self.0.take();
        write_batch_body(&mut buffer, messages);
        bytes::Bytes::from_owner(KeptBody {
            buffer,
            home: self.0.clone(),
        })
    }
}

/// A request body whose buffer goes back to its pool when dropped.
struct KeptBody {
    buffer: Vec<u8>,
    home: Arc<BufferPool>,
}

impl AsRef<[u8]> for KeptBody {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for KeptBody {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.buffer));
    }
}

/// The provider cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid Resend configuration: {0}")]
pub struct ResendConfigError(String);

/// The idempotency key of a request: a digest of its delivery keys, in order.
pub fn idempotency_key(messages: &[&Outgoing]) -> String {
    let mut hash = Sha256::new();
    for m in messages {
        hash.update(m.delivery_key.as_bytes());
        hash.update(b"\n");
    }
    format!("mailing-{}", hex::encode(hash.finalize()))
}

/// A batch request's JSON: the API's email objects (`from`, `to`, `subject`, `html`,
/// `text` and `reply_to` when present, `headers` with the one-click unsubscribe pair),
/// written by hand into one buffer sized from the messages. The strings go through
/// [`json::push_str`], which writes what serde_json writes, faster (the tests compare
/// the whole body with serde_json's encoding of the same objects).
pub fn batch_body(messages: &[&Outgoing]) -> Vec<u8> {
    let mut out = Vec::new();
    write_batch_body(&mut out, messages);
    out
}

/// [`batch_body`] into `out` (cleared first), reserving the body's size up front.
fn write_batch_body(out: &mut Vec<u8>, messages: &[&Outgoing]) {
    out.clear();
    // The strings' bytes, a sixteenth for JSON escapes (quotes in HTML attributes,
    // newlines) and the field names and punctuation of each email: one allocation of
    // about the body's size instead of a doubling chain up to twice it (the bodies are
    // the largest blocks the send stage allocates, ~1.3 MB per 100 messages).
    let text: usize = messages
        .iter()
        .map(|m| {
            m.from_header.len()
                + m.to_header.len()
                + m.subject.len()
                + m.html.len()
                + m.text.as_ref().map_or(0, String::len)
                + m.reply_to.as_ref().map_or(0, String::len)
                + m.list_unsubscribe.len()
        })
        .sum();
    out.reserve(text + text / 16 + 256 * messages.len() + 2);
    out.push(b'[');
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut field = |name: &[u8], value: &str| {
            out.extend_from_slice(name);
            json::push_str(out, value);
        };
        field(b"{\"from\":", &m.from_header);
        field(b",\"to\":[", &m.to_header);
        field(b"],\"subject\":", &m.subject);
        field(b",\"html\":", &m.html);
        if let Some(text) = &m.text {
            field(b",\"text\":", text);
        }
        if let Some(reply_to) = &m.reply_to {
            field(b",\"reply_to\":", reply_to);
        }
        field(b",\"headers\":{\"List-Unsubscribe\":", &m.list_unsubscribe);
        out.extend_from_slice(b",\"List-Unsubscribe-Post\":\"List-Unsubscribe=One-Click\"}}");
    }
    out.push(b']');
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

impl ResendProvider {
    /// Builds the HTTP client.
    pub fn new(config: ResendConfig) -> Result<Self, ResendConfigError> {
        if config.api_key.trim().is_empty() {
            return Err(ResendConfigError("RESEND_API_KEY is empty".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("mailing/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ResendConfigError(e.to_string()))?;
        Ok(ResendProvider {
            client,
            config,
            bodies: BodyBuffers::new(),
        })
    }

    /// Sends up to [`MAX_PER_REQUEST`] messages in one request; returns their ids in order.
    pub async fn send_request(
        &self,
        messages: &[&Outgoing],
    ) -> Result<Vec<Option<String>>, ProviderError> {
        let response = self
            .client
            .post(format!("{}/emails/batch", self.config.base_url))
            .bearer_auth(&self.config.api_key)
            .header("Idempotency-Key", idempotency_key(messages))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.bodies.body(messages))
            .send()
            .await
            .map_err(|e| ProviderError::Transient {
                message: format!("Resend request failed: {}", e.without_url()),
                retry_after: None,
            })?;
        let status = response.status();
        let wait = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let detail: String = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(300).collect());
        match status.as_u16() {
            200..=299 => {
                let ids = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("data").and_then(|d| d.as_array()).cloned())
                    .unwrap_or_default();
                Ok((0..messages.len())
                    .map(|i| {
                        ids.get(i)
                            .and_then(|d| d.get("id"))
                            .and_then(|id| id.as_str())
                            .map(str::to_owned)
                    })
                    .collect())
            }
            429 => Err(ProviderError::Transient {
                message: format!("Resend throttled the request (429): {detail}"),
                retry_after: Some(wait.unwrap_or(Duration::from_secs(1))),
            }),
            401 | 403 => Err(ProviderError::Transient {
                message: format!(
                    "Resend refused the API key ({status}): {detail}; check RESEND_API_KEY"
                ),
                retry_after: None,
            }),
            408 | 409 | 500..=599 => Err(ProviderError::Transient {
                message: format!("Resend answered {status}: {detail}"),
                retry_after: wait,
            }),
            _ => Err(ProviderError::Permanent(format!(
                "Resend refused the messages ({status}): {detail}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The email object as the API documents it, encoded by serde: the reference the
    /// hand-written body is compared with.
    #[derive(serde::Serialize)]
    struct Email<'a> {
        from: &'a str,
        to: [&'a str; 1],
        subject: &'a str,
        html: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reply_to: Option<&'a str>,
        headers: std::collections::BTreeMap<&'static str, &'a str>,
    }

    /// One message as the batch API takes it.
    fn email(m: &Outgoing) -> Email<'_> {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("List-Unsubscribe", m.list_unsubscribe.as_str());
        headers.insert("List-Unsubscribe-Post", "List-Unsubscribe=One-Click");
        Email {
            from: &m.from_header,
            to: [&m.to_header],
            subject: &m.subject,
            html: &m.html,
            text: m.text.as_deref(),
            reply_to: m.reply_to.as_deref(),
            headers,
        }
    }

    fn outgoing(key: &str) -> Outgoing {
        Outgoing {
            delivery_key: key.into(),
            ..Outgoing::default()
        }
    }

    fn message(html: String) -> Outgoing {
        Outgoing {
            from_header: "Shop <news@shop.example>".into(),
            to_header: "Ann <ann@example.com>".into(),
            subject: "Hi".into(),
            html,
            text: Some("Hi\nthere".into()),
            list_unsubscribe: "<https://m.example/u/1>".into(),
            ..Outgoing::default()
        }
    }

    /// `copies` of `m` as one request body, and that body read back as JSON, after
    /// checking that it is byte for byte serde_json's encoding of the email objects.
    fn encoded(m: &Outgoing, copies: usize) -> (Vec<u8>, serde_json::Value) {
        let messages: Vec<&Outgoing> = std::iter::repeat_n(m, copies).collect();
        let body = batch_body(&messages);
        let emails: Vec<Email<'_>> = messages.iter().copied().map(email).collect();
        assert_eq!(
            String::from_utf8_lossy(&body),
            serde_json::to_string(&emails).unwrap()
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (body, parsed)
    }

    #[test]
    fn the_request_body_is_the_emails_json_in_one_buffer_of_about_its_size() {
        let m = message("<p>Hello there, a line of text.</p>\n".repeat(300));
        let (body, parsed) = encoded(&m, 3);
        assert_eq!(parsed[2]["html"], m.html.as_str());
        assert_eq!(
            parsed[0]["headers"]["List-Unsubscribe-Post"],
            "List-Unsubscribe=One-Click"
        );
        // Sized up front: a buffer grown by doubling would be a power of two (64 KiB
        // for these ~34 KB).
        assert!(
            body.capacity() <= body.len() + body.len() / 8,
            "{} bytes of capacity for {}",
            body.capacity(),
            body.len()
        );
    }

    #[test]
    fn a_body_with_more_escapes_than_the_estimate_is_still_whole() {
        // A fifth of this HTML is quotes and newlines, each escaped with a backslash.
        let m = message("<p class=\"x\">\"quoted\"\n</p>".repeat(200));
        let (_, parsed) = encoded(&m, 2);
        assert_eq!(parsed[1]["html"], m.html.as_str());
    }

    #[test]
    fn every_field_is_escaped_and_optional_fields_come_and_go() {
        let mut m = message("<p>\u{1}\"tab\t\" \\ é 😀</p>".into());
        m.from_header = "\"Shop \\ Co\" <news@shop.example>".into();
        m.to_header = "\"O'Neil, Ann\" <ann@example.com>".into();
        m.subject = "Line\r\nbreak \u{2028} \u{7f}".into();
        m.list_unsubscribe = "<https://m.example/u/\"1\">".into();
        for (text, reply_to) in [(None, None), (Some("a\nb"), Some("r@example.com"))] {
            m.text = text.map(str::to_owned);
            m.reply_to = reply_to.map(str::to_owned);
            let (_, parsed) = encoded(&m, 2);
            assert_eq!(parsed[1]["subject"], m.subject.as_str());
            assert_eq!(parsed[0].get("reply_to").is_some(), reply_to.is_some());
        }
        let (body, _) = encoded(&m, 0);
        assert_eq!(body, b"[]");
    }

    #[test]
    fn a_request_body_reuses_the_buffer_of_one_sent_before() {
        let bodies = BodyBuffers::new();
        let long = message("<p>x</p>".repeat(500));
        let short = message("<p>y</p>".into());
        let first = bodies.body(&[&long, &long]);
        assert_eq!(&first[..], batch_body(&[&long, &long]).as_slice());
        let first_at = first.as_ptr();
        // A body still in flight keeps its buffer: the next one gets another.
        let second = bodies.body(&[&short]);
        assert_ne!(second.as_ptr(), first_at);
        drop(second);
        drop(first);
        // Both buffers are kept; the last one given back is taken first and holds
        // exactly the new body, nothing of the old one.
        assert_eq!(bodies.0.kept_buffers(), 2);
        let third = bodies.body(&[&short]);
        assert_eq!(third.as_ptr(), first_at);
        assert_eq!(&third[..], batch_body(&[&short]).as_slice());
        // A clone of the body (the HTTP client may hold one) keeps the buffer until the
        // last clone goes.
        let clone = third.clone();
        drop(third);
        assert_eq!(bodies.0.kept_buffers(), 1);
        drop(clone);
        assert_eq!(bodies.0.kept_buffers(), 2);
    }

    #[test]
    fn a_request_body_too_large_to_keep_is_freed() {
        let bodies = BodyBuffers::new();
        let huge = message("x".repeat(BodyBuffers::MAX_KEPT_BYTES + 1));
        let body = bodies.body(&[&huge]);
        assert_eq!(body.len(), batch_body(&[&huge]).len());
        drop(body);
        assert_eq!(bodies.0.kept_buffers(), 0);
        let m = message("<p>x</p>".into());
        let in_flight: Vec<bytes::Bytes> = (0..3).map(|_| bodies.body(&[&m])).collect();
        drop(in_flight);
        assert_eq!(bodies.0.kept_buffers(), 3);
        assert!(bodies.0.kept_bytes() <= BodyBuffers::BUDGET);
    }

    #[test]
    fn idempotency_key_is_stable_and_depends_on_every_recipient() {
        let (a, b, c) = (outgoing("a"), outgoing("b"), outgoing("c"));
        assert_eq!(idempotency_key(&[&a, &b]), idempotency_key(&[&a, &b]));
        assert_ne!(idempotency_key(&[&a, &b]), idempotency_key(&[&a, &c]));
        assert!(idempotency_key(&[&a]).len() <= 256);
        // A retried request after an upgrade must carry the key it was first sent with.
        assert_eq!(
            idempotency_key(&[&a, &b]),
            "mailing-911169ddaaf146aff539f58c26c489af3b892dff0fe283c1c264c65ae5aa59a2"
        );
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }
}
