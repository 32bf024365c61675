//! Worker side of the queue: the apalis job handlers of each stage and the [`Monitor`]
//! that runs a stage's workers on either backend. Each worker is named
//! `{stage}-{instance}-{restarts}` (unique per process and per restart), polls every
//! `poll_interval`, runs its jobs on their own tokio tasks (`parallelize`), and is
//! restarted by the monitor after a backend error.

use std::time::Duration;

use apalis::prelude::*;
use tracing::{Instrument, error, warn};

use super::Queue;
use crate::pipeline::{
    PipelineContext, PlanCampaign, SendBatch, StageError, TxSend, plan, send, tx,
};

/// A pipeline stage, as workers and health name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Campaign → batches.
    Plan,
    /// Batch → rendered and delivered messages.
    Send,
    /// One transactional message.
    Tx,
}

impl Stage {
    /// The stage's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Plan => "plan",
            Stage::Send => "send",
            Stage::Tx => "tx",
        }
    }
}

/// Settings of one stage's workers.
#[derive(Debug, Clone)]
pub struct StageWorkers {
    /// Which stage.
    pub stage: Stage,
    /// Jobs of this stage run at once in this process.
    pub concurrency: usize,
    /// Unique per process: `{host}-{pid}-{random}`.
    pub instance: String,
}

fn into_job_result(
    stage: &'static str,
    started: std::time::Instant,
    result: Result<(), StageError>,
    what: String,
) -> Result<(), BoxDynError> {
    let event = match &result {
        Ok(()) => "succeeded",
        Err(e) if e.is_transient() => "failed",
        Err(_) => "dead",
    };
    crate::telemetry::JobEvent {
        stage,
        event,
        duration: Some(started.elapsed()),
    }
    .emit();
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.is_transient() => {
            warn!(job = %what, error = %e, "Job failed; the queue will retry it");
            Err(Box::new(e))
        }
        Err(e) => {
            error!(job = %what, error = %e, "Job failed for good");
            Err(Box::new(AbortError::new(e)))
        }
    }
}

/// The plan stage's job handler.
pub async fn plan_job(job: PlanCampaign, ctx: Data<PipelineContext>) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    crate::telemetry::JobEvent {
        stage: "plan",
        event: "started",
        duration: None,
    }
    .emit();
    let what = format!("plan campaign {}", job.campaign_id);
    let span = tracing::info_span!("plan", campaign_id = job.campaign_id);
    crate::telemetry::continue_trace(&span, &job.trace);
    let result = plan::plan(&ctx, &job).instrument(span).await.map(|_| ());
    if let Err(StageError::Permanent(reason)) = &result {
        let _ = ctx
            .store
            .transition_campaign(
                job.campaign_id,
                &[crate::CampaignStatus::Running],
                crate::CampaignStatus::Failed,
                Some(reason),
            )
            .await;
    }
    into_job_result("plan", started, result, what)
}

/// The tx stage's job handler: one transactional message; a temporary failure is
/// retried with the same backoff as batches.
pub async fn tx_job(job: TxSend, ctx: Data<PipelineContext>) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    crate::telemetry::JobEvent {
        stage: "tx",
        event: "started",
        duration: None,
    }
    .emit();
    let what = format!("transactional message {}", job.tx_id);
    let span = tracing::info_span!("tx", tx_id = job.tx_id);
    crate::telemetry::continue_trace(&span, &job.trace);
    let result = match tx::send_tx(&ctx, &job).instrument(span).await {
        Err(StageError::Retry {
            attempts,
            last_error,
            ..
        }) => {
            let delay = retry_delay(
                ctx.config.retry_backoff,
                ctx.config.retry_backoff_max,
                attempts,
            );
            warn!(tx_id = job.tx_id, error = %last_error, delay_ms = delay.as_millis() as u64, "Transactional retry scheduled");
            crate::telemetry::JobEvent {
                stage: "tx",
                event: "retried",
                duration: None,
            }
            .emit();
            ctx.queue
                .push_tx_after(job.clone(), delay)
                .await
                .map_err(StageError::from)
        }
        other => other,
    };
    into_job_result("tx", started, result, what)
}

/// The send stage's job handler. Temporary failures of some recipients are retried by
/// re-enqueueing the batch after an exponential backoff with jitter (the ledger counts
/// the attempts and fails a recipient after `max_attempts`), so the job itself succeeds.
pub async fn send_job(job: SendBatch, ctx: Data<PipelineContext>) -> Result<(), BoxDynError> {
    let started = std::time::Instant::now();
    crate::telemetry::JobEvent {
        stage: "send",
        event: "started",
        duration: None,
    }
    .emit();
    let what = format!("send campaign {} batch {}", job.campaign_id, job.batch_no);
    let span = tracing::info_span!(
        "send_batch",
        campaign_id = job.campaign_id,
        batch_no = job.batch_no
    );
    crate::telemetry::continue_trace(&span, &job.trace);

    let result = match send::send_batch(&ctx, &job).instrument(span).await {
        Err(StageError::Retry {
            failed,
            last_error,
            attempts,
        }) => {
            let delay = retry_delay(
                ctx.config.retry_backoff,
                ctx.config.retry_backoff_max,
                attempts,
            );
            warn!(campaign_id = job.campaign_id, batch_no = job.batch_no, failed, attempts, error = %last_error,
                  delay_ms = delay.as_millis() as u64, "Batch retry scheduled");
            crate::telemetry::JobEvent {
                stage: "send",
                event: "retried",
                duration: None,
            }
            .emit();
            ctx.queue
                .push_batch_after(job.clone(), delay)
                .await
                .map_err(StageError::from)
        }
        Err(StageError::Permanent(reason)) => {
            let _ = ctx
                .store
                .transition_campaign(
                    job.campaign_id,
                    &[crate::CampaignStatus::Running],
                    crate::CampaignStatus::Failed,
                    Some(&reason),
                )
                .await;
            Err(StageError::Permanent(reason))
        }
        other => other.map(|_| ()),
    };
    into_job_result("send", started, result, what)
}

/// Exponential backoff with jitter: `base × 2^(attempts-1)`, capped, then scaled by a
/// random factor in [0.5, 1) so retries of many batches spread out.
pub fn retry_delay(base: Duration, max: Duration, attempts: i64) -> Duration {
    let exponent = attempts.clamp(1, 20) as u32 - 1;
    let raw = base.saturating_mul(1 << exponent).min(max);
    raw.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

macro_rules! stage_worker {
    ($monitor:expr, $backend:expr, $ctx:expr, $workers:expr, $poll:expr, $handler:path) => {{
        let backend = $backend;
        let ctx = $ctx;
        let workers = $workers;
        let poll = $poll;
        $monitor.register(move |restarts| {
            WorkerBuilder::new(format!(
                "{}-{}-{}",
                workers.stage.as_str(),
                workers.instance,
                restarts
            ))
            .backend(backend.clone().poll_with_interval(poll))
            .data(ctx.clone())
            .concurrency(workers.concurrency.max(1))
            .catch_panic()
            .parallelize(tokio::spawn)
            .build($handler)
        })
    }};
}

/// A monitor running one stage's workers. Workers that fail on a backend error are
/// restarted (up to `max_restarts` each); the caller runs the monitor with a shutdown
/// signal and a shutdown timeout.
pub fn stage_monitor(
    queue: &Queue,
    ctx: PipelineContext,
    workers: StageWorkers,
    max_restarts: usize,
    shutdown_timeout: Duration,
) -> Monitor {
    let poll = queue.config().poll_interval;
    let monitor = Monitor::new()
        .should_restart(move |worker, err| {
            warn!(worker = worker.name(), error = %err, restarts = worker.restarts(), "Queue worker stopped; restarting");
            worker.restarts() < max_restarts
        })
        .shutdown_timeout(shutdown_timeout);
    match (queue, workers.stage) {
        (Queue::Sqlite { plan, .. }, Stage::Plan) => {
            stage_worker!(monitor, plan.clone(), ctx, workers, poll, plan_job)
        }
        (Queue::Sqlite { send, .. }, Stage::Send) => {
            stage_worker!(monitor, send.clone(), ctx, workers, poll, send_job)
        }
        (Queue::Redis { plan, .. }, Stage::Plan) => {
            stage_worker!(monitor, plan.clone(), ctx, workers, poll, plan_job)
        }
        (Queue::Redis { send, .. }, Stage::Send) => {
            stage_worker!(monitor, send.clone(), ctx, workers, poll, send_job)
        }
        (Queue::Sqlite { tx, .. }, Stage::Tx) => {
            stage_worker!(monitor, tx.clone(), ctx, workers, poll, tx_job)
        }
        (Queue::Redis { tx, .. }, Stage::Tx) => {
            stage_worker!(monitor, tx.clone(), ctx, workers, poll, tx_job)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_is_capped_and_jittered() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(60);
        for _ in 0..100 {
            let first = retry_delay(base, max, 1);
            assert!(
                first >= Duration::from_secs(5) && first < Duration::from_secs(10),
                "{first:?}"
            );
            let third = retry_delay(base, max, 3);
            assert!(
                third >= Duration::from_secs(20) && third < Duration::from_secs(40),
                "{third:?}"
            );
            let late = retry_delay(base, max, 12);
            assert!(late >= Duration::from_secs(30) && late < max, "{late:?}");
        }
    }
}
