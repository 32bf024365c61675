//! The pipeline stages. A campaign is sent in two stages:
//!
//! * [`plan`]: streams the audience in keyset pages, writes ledger rows in bulk and
//!   enqueues one [`SendBatch`] job per `batch_size` recipients;
//! * [`send`]: renders and delivers one batch: claims its pending recipients in the
//!   ledger, renders each with the cached compiled template, builds the MIME message,
//!   hands it to the campaign's provider and records every outcome.
//!
//! Render and deliver share a stage on purpose: a rendered batch is megabytes of HTML,
//! and passing it through the queue would cost more than rendering it again on a retry.
//! Jobs carry ids only; every stage is idempotent, because queues deliver at least once.

pub mod personalize;
pub mod plan;
pub mod send;
pub mod tx;
pub mod window;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::provider::Providers;
use crate::queue::Queue;
use crate::render::Renderer;
use crate::store::{Store, StoreError};
use crate::unsubscribe::UnsubscribeSigner;

/// Job: expand a campaign into batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCampaign {
    /// The campaign.
    pub campaign_id: i64,
    /// The trace context of whoever enqueued it (W3C `traceparent`), so one trace
    /// shows the request, the plan and every batch. Absent in older jobs.
    #[serde(default)]
    pub trace: crate::telemetry::TraceContext,
}

impl PlanCampaign {
    /// A plan job carrying the current span's trace context.
    pub fn new(campaign_id: i64) -> Self {
        PlanCampaign {
            campaign_id,
            trace: crate::telemetry::inject_current(),
        }
    }
}

/// Job: render and deliver one batch of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendBatch {
    /// The campaign.
    pub campaign_id: i64,
    /// The batch number within the campaign (0-based).
    pub batch_no: i64,
    /// The trace context of whoever enqueued it.
    #[serde(default)]
    pub trace: crate::telemetry::TraceContext,
}

impl SendBatch {
    /// A send job carrying the current span's trace context.
    pub fn new(campaign_id: i64, batch_no: i64) -> Self {
        SendBatch {
            campaign_id,
            batch_no,
            trace: crate::telemetry::inject_current(),
        }
    }
}

/// Job: send one transactional message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxSend {
    /// The message.
    pub tx_id: i64,
    /// The trace context of whoever enqueued it.
    #[serde(default)]
    pub trace: crate::telemetry::TraceContext,
}

impl TxSend {
    /// A tx job carrying the current span's trace context.
    pub fn new(tx_id: i64) -> Self {
        TxSend {
            tx_id,
            trace: crate::telemetry::inject_current(),
        }
    }
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Recipients per batch (`BATCH_SIZE`).
    pub batch_size: u32,
    /// Batches of one campaign in the queue at once (`BATCH_WINDOW`).
    pub batch_window: u32,
    /// Attempts per recipient before it is failed (`MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// The longest retry backoff (`RETRY_BACKOFF_MAX_SECS`).
    pub retry_backoff_max: Duration,
    /// Pause a campaign when more than this share of its finished recipients failed
    /// (`FAILURE_PAUSE_RATIO`; 0 disables), once `failure_pause_min` have finished.
    pub failure_pause_ratio: f64,
    /// See `failure_pause_ratio`.
    pub failure_pause_min: i64,
    /// Messages of one batch in flight at once.
    pub send_concurrency: usize,
    /// `mailto:` address for `List-Unsubscribe`, if any.
    pub unsubscribe_mailto: Option<String>,
    /// How long a claim may stay unanswered before its worker is presumed dead.
    pub claim_lease: Duration,
    /// How long a batch waits before recipients that failed temporarily are retried.
    pub retry_backoff: Duration,
}

/// Everything a stage needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PipelineContext {
    /// The store.
    pub store: Store,
    /// The queue, to enqueue follow-up jobs.
    pub queue: Queue,
    /// Compiled-template cache.
    pub renderer: Renderer,
    /// Configured providers.
    pub providers: Providers,
    /// Unsubscribe link signer.
    pub signer: UnsubscribeSigner,
    /// DKIM signer, when a key is configured.
    pub dkim: Option<crate::message::DkimSigner>,
    /// The plugin host and circuit breaker.
    pub plugins: personalize::PluginRuntime,
    /// Settings.
    pub config: PipelineConfig,
}

/// Why a stage did not finish its job. `Transient` errors are retried by the queue;
/// `Permanent` ones are not (the job goes to the dead set and the campaign says why).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The database failed; retry.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The queue failed; retry.
    #[error("queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    /// Some recipients of the batch failed temporarily; the job is retried for them.
    #[error("{failed} recipients failed temporarily; last error: {last_error}")]
    Retry {
        /// How many.
        failed: usize,
        /// One of the errors.
        last_error: String,
        /// The most attempts any of them has had (drives the backoff).
        attempts: i64,
    },
    /// Nothing will make this job succeed.
    #[error("{0}")]
    Permanent(String),
}

impl StageError {
    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StageError::Permanent(_))
    }
}
