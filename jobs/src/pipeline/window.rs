//! The send window: at most `batch_window` batches of one campaign are in the queue at
//! a time. Plan fills the window as it writes batches; every finished batch, and the
//! scheduler, top it up. This bounds the due jobs any number of campaigns put in the
//! queue (apalis-redis stops near 8,000 due jobs) and keeps memory flat.
//!
//! Two callers may top up at once and overshoot by one batch each; the window is a
//! bound on the order of the worker count, not an exact figure.

use super::{PipelineContext, SendBatch, StageError};

/// Enqueues batches until the campaign has `batch_window` outstanding or none is left
/// planned; returns how many it enqueued.
pub async fn fill(ctx: &PipelineContext, campaign_id: i64) -> Result<u32, StageError> {
    let mut pushed = 0;
    while ctx.store.outstanding_batches(campaign_id).await? < i64::from(ctx.config.batch_window) {
        let Some(batch_no) = ctx.store.advance_window(campaign_id).await? else {
            break;
        };
        ctx.queue
            .push_batch(SendBatch::new(campaign_id, batch_no))
            .await?;
        pushed += 1;
    }
    Ok(pushed)
}
