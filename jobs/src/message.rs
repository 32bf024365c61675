//! MIME building: one RFC 5322 message per recipient from a rendered body, with the
//! headers every campaign message carries (Message-ID from the delivery key,
//! `List-Unsubscribe` and `List-Unsubscribe-Post` per RFC 8058).

use lettre::Message;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::provider::Outgoing;
use crate::render::Rendered;

/// Errors of building a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MessageError {
    /// An address does not parse. The recipient cannot be sent to; do not retry.
    #[error("invalid {field} address '{value}': {reason}")]
    Address {
        /// `from`, `to` or `reply_to`.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why.
        reason: String,
    },
    /// lettre refused the message.
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// Everything a message is made of.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// `From`, e.g. `Shop <news@shop.example>`.
    pub from: &'a str,
    /// `Reply-To`.
    pub reply_to: Option<&'a str>,
    /// The recipient's address.
    pub to_email: &'a str,
    /// The recipient's display name.
    pub to_name: Option<&'a str>,
    /// The delivery key; the Message-ID is derived from it, so a retried send carries the
    /// same Message-ID.
    pub delivery_key: &'a str,
    /// The https one-click unsubscribe URL; None for transactional messages, which
    /// carry no unsubscribe headers.
    pub unsubscribe_url: Option<&'a str>,
    /// Optional `mailto:` unsubscribe address.
    pub unsubscribe_mailto: Option<&'a str>,
}

fn mailbox(field: &'static str, value: &str) -> Result<Mailbox, MessageError> {
    value.parse::<Mailbox>().map_err(|e| MessageError::Address {
        field,
        value: value.chars().take(254).collect(),
        reason: e.to_string(),
    })
}

/// The headers a DKIM signature covers: what a receiver shows, threads on, and the
/// one-click unsubscribe headers (RFC 8058 asks for them to be signed).
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
];

/// DKIM settings (`DKIM_DOMAIN`, `DKIM_SELECTOR`, `DKIM_PRIVATE_KEY_FILE`,
/// `DKIM_ALGORITHM`).
#[derive(Debug, Clone)]
pub struct DkimSettings {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The DNS selector (`s=`).
    pub selector: String,
    /// RSA: a PKCS#1 PEM key; Ed25519: the base64 of the 32-byte secret key.
    pub private_key: String,
    /// `rsa` or `ed25519`.
    pub ed25519: bool,
}

/// A ready DKIM signer.
#[derive(Clone)]
pub struct DkimSigner(std::sync::Arc<DkimConfig>);

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DkimSigner")
    }
}

impl DkimSigner {
    /// Parses the key; the error says what is wrong with it (never the key itself).
    pub fn new(settings: &DkimSettings) -> Result<Self, MessageError> {
        let algorithm = if settings.ed25519 {
            DkimSigningAlgorithm::Ed25519
        } else {
            DkimSigningAlgorithm::Rsa
        };
        let key = DkimSigningKey::new(settings.private_key.trim(), algorithm).map_err(|e| {
            MessageError::Build(format!(
                "the DKIM private key does not parse ({}): {e}",
                if settings.ed25519 {
                    "expected the base64 of a 32-byte Ed25519 key"
                } else {
                    "expected a PKCS#1 RSA PEM"
                }
            ))
        })?;
        let headers = SIGNED_HEADERS
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect();
        Ok(DkimSigner(std::sync::Arc::new(DkimConfig::new(
            settings.selector.clone(),
            settings.domain.clone(),
            key,
            headers,
            DkimCanonicalization {
                header: DkimCanonicalizationType::Relaxed,
                body: DkimCanonicalizationType::Relaxed,
            },
        ))))
    }

    /// Adds the `DKIM-Signature` header.
    pub fn sign(&self, message: &mut Message) {
        message.sign(&self.0);
    }
}

/// Checks a header address such as `Shop <news@shop.example>`; the error says why not.
pub fn check_mailbox(value: &str) -> Result<(), String> {
    value
        .parse::<Mailbox>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The `List-Unsubscribe` header value: the https URL, then the mailto when configured.
pub fn list_unsubscribe(url: &str, mailto: Option<&str>) -> String {
    match mailto {
        Some(mailto) => format!("<{url}>, <mailto:{mailto}>"),
        None => format!("<{url}>"),
    }
}

/// Which forms of a message a provider hands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageForm {
    /// The RFC 5322 bytes and the parts (SMTP, the outbox).
    Mime,
    /// The parts only (HTTP APIs, which build the MIME message themselves).
    Parts,
}

/// Builds a message in both forms a provider may need: the RFC 5322 bytes (DKIM-signed
/// when a signer is given) for SMTP and the outbox, and its parts for HTTP APIs. The one
/// place campaigns and transactional sends turn a rendered body into an [`Outgoing`].
///
/// With [`MessageForm::Parts`] (a provider that builds the MIME itself, such as an HTTP
/// API) the RFC 5322 bytes are not built (`raw` is empty): that saves a third of the
/// CPU a message costs after rendering. The addresses are checked the same way.
pub fn outgoing(
    envelope: &Envelope<'_>,
    body: Rendered,
    dkim: Option<&DkimSigner>,
    form: MessageForm,
) -> Result<Outgoing, MessageError> {
    let raw = match form {
        MessageForm::Mime => {
            let mut mime = build(envelope, &body)?;
            if let Some(dkim) = dkim {
                dkim.sign(&mut mime);
            }
            mime.formatted()
        }
        MessageForm::Parts => {
            if let Some(reply_to) = envelope.reply_to {
                mailbox("reply_to", reply_to)?;
            }
            Vec::new()
        }
    };
    let from = mailbox("from", envelope.from)?;
    let to_address: lettre::Address =
        envelope
            .to_email
            .parse()
            .map_err(|e: lettre::address::AddressError| MessageError::Address {
                field: "to",
                value: envelope.to_email.into(),
                reason: e.to_string(),
            })?;
    Ok(Outgoing {
        from: from.email.to_string(),
        to: envelope.to_email.to_owned(),
        from_header: envelope.from.to_owned(),
        to_header: Mailbox::new(envelope.to_name.map(str::to_owned), to_address).to_string(),
        reply_to: envelope.reply_to.map(str::to_owned),
        list_unsubscribe: envelope
            .unsubscribe_url
            .map(|url| list_unsubscribe(url, envelope.unsubscribe_mailto))
            .unwrap_or_default(),
        delivery_key: envelope.delivery_key.to_owned(),
        raw,
        subject: body.subject,
        html: body.html,
        text: body.text,
    })
}

/// `from` with its display name replaced by `name` (the address never changes).
pub fn with_display_name(from: &str, name: &str) -> Result<String, MessageError> {
    let mailbox = mailbox("from", from)?;
    Ok(Mailbox::new(Some(name.to_owned()), mailbox.email).to_string())
}

/// Builds the message. The domain of the Message-ID is the sender's domain.
pub fn build(envelope: &Envelope<'_>, body: &Rendered) -> Result<Message, MessageError> {
    let from = mailbox("from", envelope.from)?;
    let to_address = envelope
        .to_email
        .parse()
        .map_err(|e: lettre::address::AddressError| MessageError::Address {
            field: "to",
            value: envelope.to_email.into(),
            reason: e.to_string(),
        })?;
    let to = Mailbox::new(envelope.to_name.map(str::to_owned), to_address);
    let domain = from.email.domain().to_owned();
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(body.subject.clone())
        .date_now()
        .message_id(Some(format!("<{}@{}>", envelope.delivery_key, domain)));
    if let Some(reply_to) = envelope.reply_to {
        builder = builder.reply_to(mailbox("reply_to", reply_to)?);
    }
    if let Some(url) = envelope.unsubscribe_url {
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                list_unsubscribe(url, envelope.unsubscribe_mailto),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    let html = SinglePart::builder()
        .header(ContentType::TEXT_HTML)
        .body(body.html.clone());
    let message = match &body.text {
        Some(text) => builder.multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text.clone()),
                )
                .singlepart(html),
        ),
        None => builder.singlepart(html),
    };
    message.map_err(|e| MessageError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope<'static> {
        Envelope {
            from: "Shop <news@shop.example>",
            reply_to: None,
            to_email: "ann@example.com",
            to_name: Some("Ann Lee"),
            delivery_key: "abc123",
            unsubscribe_url: Some("https://m.example/unsubscribe/tok"),
            unsubscribe_mailto: Some("unsub@shop.example"),
        }
    }

    fn body() -> Rendered {
        Rendered {
            subject: "Hello Ann".into(),
            html: "<p>Hi</p>".into(),
            text: Some("Hi".into()),
        }
    }

    #[test]
    fn parts_form_skips_the_mime_bytes_and_checks_the_same_addresses() {
        let mime = outgoing(&envelope(), body(), None, MessageForm::Mime).expect("mime");
        let parts = outgoing(&envelope(), body(), None, MessageForm::Parts).expect("parts");
        assert!(!mime.raw.is_empty());
        assert!(parts.raw.is_empty());
        assert_eq!(
            (
                &parts.to_header,
                &parts.subject,
                &parts.html,
                &parts.list_unsubscribe
            ),
            (
                &mime.to_header,
                &mime.subject,
                &mime.html,
                &mime.list_unsubscribe
            )
        );
        for form in [MessageForm::Mime, MessageForm::Parts] {
            let bad = Envelope {
                reply_to: Some("not an address"),
                ..envelope()
            };
            let err = outgoing(&bad, body(), None, form).expect_err("bad reply-to");
            assert!(
                matches!(
                    err,
                    MessageError::Address {
                        field: "reply_to",
                        ..
                    }
                ),
                "{form:?}: {err}"
            );
        }
    }

    #[test]
    fn message_carries_one_click_unsubscribe_and_a_stable_message_id() {
        let raw = String::from_utf8(build(&envelope(), &body()).unwrap().formatted()).unwrap();
        let raw = raw.replace("\r\n ", " ");
        assert!(raw.contains("Message-ID: <abc123@shop.example>"), "{raw}");
        assert!(raw.contains(
            "List-Unsubscribe: <https://m.example/unsubscribe/tok>, <mailto:unsub@shop.example>"
        ));
        assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(raw.contains("multipart/alternative"));
    }

    #[test]
    fn dkim_signature_covers_the_one_click_unsubscribe_headers() {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode([7_u8; 32]);
        let signer = DkimSigner::new(&DkimSettings {
            domain: "shop.example".into(),
            selector: "mail".into(),
            private_key: key,
            ed25519: true,
        })
        .unwrap();
        let mut message = build(&envelope(), &body()).unwrap();
        signer.sign(&mut message);
        let raw = String::from_utf8(message.formatted())
            .unwrap()
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        let header = raw
            .lines()
            .find(|l| l.starts_with("DKIM-Signature:"))
            .expect("a DKIM-Signature header");
        assert!(
            header.contains("d=shop.example") && header.contains("s=mail"),
            "{header}"
        );
        let signed: String = header
            .split("h=")
            .nth(1)
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        for h in [
            "from",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "message-id",
        ] {
            assert!(
                signed.split(':').any(|x| x.trim() == h),
                "{h} is signed: {signed}"
            );
        }
    }

    #[test]
    fn a_dkim_key_that_does_not_parse_is_refused_without_echoing_it() {
        let err = DkimSigner::new(&DkimSettings {
            domain: "shop.example".into(),
            selector: "mail".into(),
            private_key: "not-a-secret-key-material".into(),
            ed25519: false,
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("PKCS#1") && !err.contains("not-a-secret"),
            "{err}"
        );
    }

    #[test]
    fn bad_sender_address_is_a_clear_error() {
        let mut e = envelope();
        e.from = "nobody";
        let err = build(&e, &body()).unwrap_err().to_string();
        assert!(err.starts_with("invalid from address 'nobody'"), "{err}");
    }
}
