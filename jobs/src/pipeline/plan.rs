//! The plan stage: campaign → ledger rows → batch jobs, in keyset pages of whole batches
//! (about [`PLAN_PAGE_RECIPIENTS`]) so memory does not grow with the audience. Batches are enqueued through the send window
//! ([`window`]), so a campaign never has more than `BATCH_WINDOW` in the queue.
//!
//! Re-running it (a resume, a crash mid-plan, a lost job re-enqueued by the scheduler)
//! resumes after the last planned subscriber and re-enqueues the window's batches that
//! still have pending recipients; a duplicate batch job is harmless, because the send
//! stage only takes unclaimed rows.

use tracing::info;

use super::{PipelineContext, PlanCampaign, SendBatch, StageError, window};
use crate::model::CampaignStatus;

/// Recipients the plan reads and writes per round (whole batches, at least one): each
/// round costs a handful of statements and one write transaction whatever its size, and
/// with one batch per round those round trips, not the rows, bounded how fast a large
/// campaign was planned (it fell behind sending at 300,000 recipients on SQLite).
const PLAN_PAGE_RECIPIENTS: u32 = 5_000;

/// What the plan stage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanReport {
    /// Batches enqueued by this run (the window bounds them).
    pub batches: i64,
    /// Recipients planned by this run.
    pub recipients: u64,
}

async fn still_running(ctx: &PipelineContext, campaign_id: i64) -> Result<bool, StageError> {
    let status = ctx.store.campaign(campaign_id).await?.status()?;
    if status == CampaignStatus::Cancelled {
        ctx.store
            .skip_pending(campaign_id, "campaign cancelled")
            .await?;
    }
    Ok(status == CampaignStatus::Running)
}

/// Runs the plan stage for one campaign.
pub async fn plan(ctx: &PipelineContext, job: &PlanCampaign) -> Result<PlanReport, StageError> {
    let campaign = match ctx.store.campaign(job.campaign_id).await {
        Ok(c) => c,
        Err(crate::StoreError::NotFound(_)) => {
            return Err(StageError::Permanent(format!(
                "campaign {} does not exist",
                job.campaign_id
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let mut report = PlanReport {
        batches: 0,
        recipients: 0,
    };
    if campaign.status()? != CampaignStatus::Running {
        info!(campaign_id = campaign.id, status = %campaign.status, "Plan skipped: campaign is not running");
        return Ok(report);
    }
    let (mut after, last_batch) = ctx.store.plan_progress(campaign.id).await?;
    if last_batch >= 0 {
        for batch_no in ctx.store.pending_batches(campaign.id).await? {
            if batch_no <= campaign.enqueued_through {
                ctx.queue
                    .push_batch(SendBatch::new(campaign.id, batch_no))
                    .await?;
                report.batches += 1;
            }
        }
    }
    let mut batch_no = last_batch + 1;
    let batch_size = ctx.config.batch_size.max(1);
    let page_size = batch_size * (PLAN_PAGE_RECIPIENTS / batch_size).max(1);
    if campaign.planned == 0 {
        loop {
            if !still_running(ctx, campaign.id).await? {
                info!(
                    campaign_id = campaign.id,
                    "Planning stopped: the campaign is no longer running"
                );
                return Ok(report);
            }
            let page = ctx
                .store
                .plan_page(campaign.id, after, batch_no, batch_size, page_size)
                .await?;
            let Some(last) = page.last_subscriber else {
                break;
            };
            after = last;
            batch_no += page.batches;
            report.batches += i64::from(window::fill(ctx, campaign.id).await?);
            report.recipients += page.recipients;
        }
        ctx.store.mark_campaign_planned(campaign.id).await?;
    }
    report.batches += i64::from(window::fill(ctx, campaign.id).await?);
    ctx.store.finish_campaign_if_complete(campaign.id).await?;
    info!(
        campaign_id = campaign.id,
        batches = report.batches,
        recipients = report.recipients,
        "Campaign planned"
    );
    Ok(report)
}
