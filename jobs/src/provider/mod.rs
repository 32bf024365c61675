//! Delivery providers. A provider hands finished messages on: to the outbox directory
//! (`file`), to an SMTP relay (`smtp`), or to a Resend-compatible HTTP API (`resend`).
//! A new provider is a new module here plus one variant of [`Transport`]; the pipeline
//! only calls [`Provider::send_batch`].
//!
//! Every provider runs under its [`Limits`] (messages/s and requests/s, in process or
//! fleet-wide through Redis). A throttled answer pauses the provider for everyone for
//! its `Retry-After` and the same messages are tried again, a bounded number of times;
//! nothing is dropped. Errors say whether to retry: [`ProviderError::Permanent`] fails
//! the recipient for good, [`ProviderError::Transient`] puts it back for another attempt.

pub mod file;
mod json;
pub mod resend;
pub mod smtp;

use std::time::Duration;

use futures::StreamExt;

use crate::model::ProviderKind;
use crate::ratelimit::RateLimiter;

/// A message ready to hand to a provider: the MIME form for SMTP and files, and its
/// parts for HTTP APIs.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// Envelope sender (bare address).
    pub from: String,
    /// Envelope recipient (bare address).
    pub to: String,
    /// `From` header, e.g. `Shop <news@shop.example>`.
    pub from_header: String,
    /// `To` header, e.g. `Ann <ann@example.com>`.
    pub to_header: String,
    /// `Reply-To`, if any.
    pub reply_to: Option<String>,
    /// Subject line.
    pub subject: String,
    /// HTML body.
    pub html: String,
    /// Text body.
    pub text: Option<String>,
    /// The `List-Unsubscribe` header value.
    pub list_unsubscribe: String,
    /// The delivery key: file name in the outbox, part of the Idempotency-Key for APIs.
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

/// The transports.
#[derive(Debug, Clone)]
pub enum Transport {
    /// `.eml` files in a directory.
    File(file::FileProvider),
    /// An SMTP relay.
    Smtp(smtp::SmtpProvider),
    /// A Resend-compatible HTTP API.
    Resend(resend::ResendProvider),
}

/// A provider's rate limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Messages per second.
    pub messages: RateLimiter,
    /// Requests (connections' sends, API calls) per second.
    pub requests: RateLimiter,
    /// How often a throttled request is tried again within one batch before its
    /// messages go back to pending.
    pub throttle_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            messages: RateLimiter::Unlimited,
            requests: RateLimiter::Unlimited,
            throttle_retries: 5,
        }
    }
}

/// A configured provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// How messages leave.
    pub transport: Transport,
    /// How fast.
    pub limits: Limits,
}

impl Provider {
    /// A provider without rate limits.
    pub fn unlimited(transport: Transport) -> Self {
        Provider {
            transport,
            limits: Limits::default(),
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> ProviderKind {
        match self.transport {
            Transport::File(_) => ProviderKind::File,
            Transport::Smtp(_) => ProviderKind::Smtp,
            Transport::Resend(_) => ProviderKind::Resend,
        }
    }

    /// Which forms of a message this provider sends: an HTTP API takes the parts and
    /// builds the MIME itself, so building it here would be wasted work.
    pub fn message_form(&self) -> crate::message::MessageForm {
        match self.transport {
            Transport::File(_) | Transport::Smtp(_) => crate::message::MessageForm::Mime,
            Transport::Resend(_) => crate::message::MessageForm::Parts,
        }
    }

    /// Whether sending the same delivery key twice is harmless, so that a message whose
    /// outcome is unknown (its worker died mid-send) may be sent again: the file provider
    /// replaces the same file, Resend honours the Idempotency-Key. SMTP has no such key.
    pub fn resend_safe(&self) -> bool {
        match self.transport {
            Transport::File(_) | Transport::Resend(_) => true,
            Transport::Smtp(_) => false,
        }
    }

    async fn throttled(&self, error: &ProviderError) {
        if let ProviderError::Transient {
            retry_after: Some(wait),
            ..
        } = error
        {
            crate::telemetry::ProviderThrottled {
                provider: self.kind().as_str(),
                wait: *wait,
            }
            .emit();
            self.limits.messages.pause(*wait).await;
            self.limits.requests.pause(*wait).await;
            if self.limits.messages.is_unlimited() && self.limits.requests.is_unlimited() {
                // No limiter to hold the pause: wait here, so the retry honours it.
                tokio::time::sleep((*wait).min(std::time::Duration::from_secs(60))).await;
            }
        }
    }

    async fn wait_for_limits(&self, messages: u32) {
        let waited =
            self.limits.messages.acquire(messages).await + self.limits.requests.acquire(1).await;
        crate::telemetry::RateLimitWaited {
            provider: self.kind().as_str(),
            waited,
        }
        .emit();
    }

    /// Runs one provider call under the rate limits. A throttled answer pauses the
    /// provider and the same call is tried again, up to `throttle_retries` times.
    async fn call<T, F, Fut>(&self, cells: u32, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut attempt = 0;
        loop {
            self.wait_for_limits(cells).await;
            let started = std::time::Instant::now();
            let result = call().await;
            crate::telemetry::ProviderCall {
                provider: self.kind().as_str(),
                elapsed: started.elapsed(),
            }
            .emit();
            match result {
                Err(
                    e @ ProviderError::Transient {
                        retry_after: Some(_),
                        ..
                    },
                ) if attempt < self.limits.throttle_retries => {
                    self.throttled(&e).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn send_one(&self, message: &Outgoing) -> Result<Option<String>, ProviderError> {
        self.call(1, || async {
            match &self.transport {
                Transport::File(p) => p.send(message).await,
                Transport::Smtp(p) => p.send(message).await,
                Transport::Resend(p) => p
                    .send_request(&[message])
                    .await
                    .map(|mut ids| ids.pop().flatten()),
            }
        })
        .await
    }

    /// How many messages one request to this provider carries: a Resend batch request
    /// takes up to [`resend::MAX_PER_REQUEST`], the others send one message per call.
    pub fn messages_per_request(&self) -> usize {
        match &self.transport {
            Transport::Resend(_) => resend::MAX_PER_REQUEST,
            Transport::File(_) | Transport::Smtp(_) => 1,
        }
    }

    /// Sends up to [`Provider::messages_per_request`] messages as one request; the
    /// results are in the order of `messages`. A longer slice is sent one message per
    /// request.
    ///
    /// The future is boxed: it names concrete lifetimes here, which keeps the job
    /// handlers' futures provably `Send`.
    pub fn send_request<'a>(
        &'a self,
        messages: &'a [Outgoing],
    ) -> futures::future::BoxFuture<'a, Vec<Result<Option<String>, ProviderError>>> {
        use futures::FutureExt;
        async move {
            if let Transport::Resend(resend) = &self.transport
                && messages.len() > 1
                && messages.len() <= resend::MAX_PER_REQUEST
            {
                let chunk: Vec<&Outgoing> = messages.iter().collect();
                match self
                    .call(chunk.len() as u32, || resend.send_request(&chunk))
                    .await
                {
                    Ok(ids) => return ids.into_iter().map(Ok).collect(),
                    // The API refuses a whole request for one bad message: send them
                    // one by one below, so only that one fails.
                    Err(ProviderError::Permanent(_)) => {}
                    Err(e) => return vec![Err(e); chunk.len()],
                }
            }
            let mut results = Vec::with_capacity(messages.len());
            for m in messages {
                results.push(self.send_one(m).await);
            }
            results
        }
        .boxed()
    }

    /// Sends messages, at most `concurrency` requests at once; the results are in the
    /// order of `messages`.
    ///
    /// The future is boxed: it names concrete lifetimes here, which keeps the job
    /// handlers' futures provably `Send`.
    pub fn send_batch<'a>(
        &'a self,
        messages: &'a [Outgoing],
        concurrency: usize,
    ) -> futures::future::BoxFuture<'a, Vec<Result<Option<String>, ProviderError>>> {
        use futures::FutureExt;
        let size = self.messages_per_request();
        async move {
            let results: Vec<Vec<Result<Option<String>, ProviderError>>> =
                // Stream over indices, not references: closures taking references trip
                // rustc's higher-ranked lifetime inference in async stream pipelines.
                futures::stream::iter(0..messages.len().div_ceil(size))
                    .map(|i| {
                        self.send_request(&messages[i * size..((i + 1) * size).min(messages.len())])
                    })
                    .buffered(concurrency.max(1))
                    .collect()
                    .await;
            results.into_iter().flatten().collect()
        }
        .boxed()
    }
}

/// The providers this process has configured, by kind.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    /// The outbox directory provider.
    pub file: Option<Provider>,
    /// The SMTP provider.
    pub smtp: Option<Provider>,
    /// The Resend provider.
    pub resend: Option<Provider>,
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
            ProviderKind::Resend => self.resend.as_ref(),
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
        [&self.file, &self.smtp, &self.resend]
            .into_iter()
            .flatten()
            .map(|p| p.kind().as_str())
            .collect()
    }
}
