//! The send window: at most `batch_window` batches of one campaign are in the queue at
//! a time. Plan fills the window as it writes batches; every finished batch, and the
//! scheduler, top it up. This bounds the due jobs any number of campaigns put in the
//! queue (apalis-redis stops near 8,000 due jobs) and keeps memory flat.
//!
//! A batch is enqueued before the window counts it ([`Store::next_batch_to_enqueue`], the
//! push, then [`Store::mark_enqueued`]): a process that dies between the two leaves the
//! batch enqueued and the window behind, and the next caller enqueues it again. The
//! other order lost the batch (counted, never enqueued) until `STALL_RECOVERY_SECS`.
//! Two callers that top up at once may likewise enqueue one batch twice. A duplicate
//! send job is harmless: it claims only rows nobody holds.
//!
//! [`Store::next_batch_to_enqueue`]: crate::Store::next_batch_to_enqueue
//! [`Store::mark_enqueued`]: crate::Store::mark_enqueued

use super::{PipelineContext, SendBatch, StageError};

/// Enqueues batches until the campaign has `batch_window` outstanding or none is left
/// planned; returns how many it added to the window.
pub async fn fill(ctx: &PipelineContext, campaign_id: i64) -> Result<u32, StageError> {
    let mut pushed = 0;
    while ctx.store.outstanding_batches(campaign_id).await? < i64::from(ctx.config.batch_window) {
        let Some(batch_no) = ctx.store.next_batch_to_enqueue(campaign_id).await? else {
            break;
        };
        ctx.queue
            .push_batch(SendBatch::new(campaign_id, batch_no))
            .await?;
        if ctx.store.mark_enqueued(campaign_id, batch_no).await? {
            pushed += 1;
        }
    }
    Ok(pushed)
}
