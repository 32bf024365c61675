//! The `smtp` provider: lettre's pooled async SMTP transport, with no TLS, STARTTLS or
//! implicit TLS, and optional credentials. SMTP 5xx answers fail the recipient; 4xx and
//! network errors are retried.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{Outgoing, ProviderError};

/// How the connection to the relay is secured (`SMTP_TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a relay on loopback or a private network only).
    None,
    /// Upgrade with STARTTLS; refuse to send if the server does not offer it.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// SMTP settings.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `SMTP_HOST`.
    pub host: String,
    /// `SMTP_PORT`.
    pub port: u16,
    /// `SMTP_USERNAME`.
    pub username: Option<String>,
    /// `SMTP_PASSWORD`.
    pub password: Option<String>,
    /// `SMTP_TLS`.
    pub tls: SmtpTls,
    /// Pooled connections kept open.
    pub pool_size: u32,
    /// Per-command timeout.
    pub timeout: Duration,
}

/// Sends through an SMTP relay over pooled connections.
#[derive(Clone)]
pub struct SmtpProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    host: String,
    /// Bounds the connections open at once to the pool size: lettre's pool only caps
    /// idle connections, and a relay may refuse (or stall) extra ones.
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The SMTP settings cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid SMTP configuration: {0}")]
pub struct SmtpConfigError(String);

impl SmtpProvider {
    /// Builds the transport; connections open lazily on first send.
    pub fn new(config: &SmtpConfig) -> Result<Self, SmtpConfigError> {
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls | SmtpTls::Tls => {
                let params = TlsParameters::new(config.host.clone())
                    .map_err(|e| SmtpConfigError(e.to_string()))?;
                if config.tls == SmtpTls::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
                .port(config.port)
                .tls(tls)
                .timeout(Some(config.timeout))
                .pool_config(PoolConfig::new().max_size(config.pool_size));
        if let (Some(user), Some(pass)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        Ok(SmtpProvider {
            transport: builder.build(),
            host: config.host.clone(),
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(
                config.pool_size.max(1) as usize
            )),
        })
    }

    /// Sends one message.
    pub async fn send(&self, message: &Outgoing) -> Result<Option<String>, ProviderError> {
        let from = message.from.parse().map_err(|e| {
            ProviderError::Permanent(format!("invalid envelope sender '{}': {e}", message.from))
        })?;
        let to = message.to.parse().map_err(|e| {
            ProviderError::Permanent(format!("invalid envelope recipient '{}': {e}", message.to))
        })?;
        let envelope = Envelope::new(Some(from), vec![to])
            .map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ProviderError::Transient {
                message: "the SMTP provider is shutting down".into(),
                retry_after: None,
            })?;
        match self.transport.send_raw(&envelope, &message.raw).await {
            Ok(response) => Ok(response.message().next().map(str::to_owned)),
            Err(e) if e.is_permanent() => Err(ProviderError::Permanent(e.to_string())),
            Err(e) => Err(ProviderError::Transient {
                message: e.to_string(),
                retry_after: None,
            }),
        }
    }
}
