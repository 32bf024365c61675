//! MIME building: one RFC 5322 message per recipient from a rendered body, with the
//! headers every campaign message carries (Message-ID from the delivery key,
//! `List-Unsubscribe` and `List-Unsubscribe-Post` per RFC 8058).

use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

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
    /// The https one-click unsubscribe URL.
    pub unsubscribe_url: &'a str,
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
    let list_unsubscribe = list_unsubscribe(envelope.unsubscribe_url, envelope.unsubscribe_mailto);
    builder = builder
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe"),
            list_unsubscribe,
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
            "List-Unsubscribe=One-Click".into(),
        ));
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
            unsubscribe_url: "https://m.example/unsubscribe/tok",
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
    fn bad_sender_address_is_a_clear_error() {
        let mut e = envelope();
        e.from = "nobody";
        let err = build(&e, &body()).unwrap_err().to_string();
        assert!(err.starts_with("invalid from address 'nobody'"), "{err}");
    }
}
