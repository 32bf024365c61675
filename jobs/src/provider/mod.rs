//! Delivery providers. A provider takes one finished message and hands it on: to the
//! outbox directory (`file`), to an SMTP relay (`smtp`). A new provider is a new module
//! here plus one variant of [`Provider`]; nothing else in the pipeline changes.
//!
//! Errors say whether to retry: [`ProviderError::Permanent`] fails the recipient for
//! good, [`ProviderError::Transient`] puts it back for another attempt.

pub mod file;
pub mod smtp;

use std::time::Duration;

use crate::model::ProviderKind;

/// A message ready to hand to a provider.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Envelope sender (bare address).
    pub from: String,
    /// Envelope recipient (bare address).
    pub to: String,
    /// The delivery key: file name in the outbox, Idempotency-Key for HTTP APIs.
    pub delivery_key: String,
    /// The RFC 5322 message.
    pub raw: Vec<u8>,
}

/// Why a provider did not take a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the message for good (e.g. SMTP 5xx): do not retry.
    #[error("refused: {0}")]
    Permanent(String),
    /// A temporary failure (network, SMTP 4xx, throttling): retry later.
    #[error("temporary failure: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// How long the provider asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
}

/// A configured provider.
#[derive(Debug, Clone)]
pub enum Provider {
    /// `.eml` files in a directory.
    File(file::FileProvider),
    /// An SMTP relay.
    Smtp(smtp::SmtpProvider),
}

impl Provider {
    /// Which kind this is.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::File(_) => ProviderKind::File,
            Provider::Smtp(_) => ProviderKind::Smtp,
        }
    }

    /// Whether sending the same delivery key twice is harmless, so that a message whose
    /// outcome is unknown (its worker died mid-send) may be sent again.
    pub fn resend_safe(&self) -> bool {
        match self {
            Provider::File(_) => true,
            Provider::Smtp(_) => false,
        }
    }

    /// Hands a message on; returns the provider's message id, if it gives one.
    pub async fn send(&self, message: &Outgoing) -> Result<Option<String>, ProviderError> {
        match self {
            Provider::File(p) => p.send(message).await,
            Provider::Smtp(p) => p.send(message).await,
        }
    }
}

/// The providers this process has configured, by kind.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    /// The outbox directory provider.
    pub file: Option<Provider>,
    /// The SMTP provider.
    pub smtp: Option<Provider>,
}

/// A campaign names a provider this process does not have.
#[derive(Debug, Clone, thiserror::Error)]
#[error("provider '{0}' is not configured on this server")]
pub struct ProviderNotConfigured(pub String);

impl Providers {
    /// The provider of a kind, or an error naming it.
    pub fn get(&self, kind: ProviderKind) -> Result<&Provider, ProviderNotConfigured> {
        let found = match kind {
            ProviderKind::File => self.file.as_ref(),
            ProviderKind::Smtp => self.smtp.as_ref(),
            ProviderKind::Resend => None,
        };
        found.ok_or_else(|| ProviderNotConfigured(kind.to_string()))
    }

    /// The provider named by a campaign.
    pub fn by_name(&self, name: &str) -> Result<&Provider, ProviderNotConfigured> {
        let kind: ProviderKind = name
            .parse()
            .map_err(|_| ProviderNotConfigured(name.into()))?;
        self.get(kind)
    }

    /// Names of the configured providers.
    pub fn names(&self) -> Vec<&'static str> {
        [&self.file, &self.smtp]
            .into_iter()
            .flatten()
            .map(|p| p.kind().as_str())
            .collect()
    }
}
