//! The send window: at most `batch_window` batches of one campaign are in the queue at
//! a time. Plan fills the window as it writes batches; every finished batch, and the
//! scheduler, top it up. This bounds the due jobs any number of campaigns put in the
//! queue (apalis-redis stops near 8,000 due jobs) and keeps memory flat.
//!
//! A batch is enqueued while the window's move to it is held open, and the move is
//! committed after ([`Store::begin_window_advance`]): concurrent top-ups wait for each
//! other instead of enqueueing the same batch, and a process that dies in between
//! leaves the batch enqueued and uncounted, so it is enqueued again (a duplicate send
//! job is harmless: it claims only rows nobody holds). Counting first and enqueueing
//! after lost the batch until `STALL_RECOVERY_SECS`.
//!
//! [`Store::begin_window_advance`]: crate::Store::begin_window_advance

use super::{PipelineContext, SendBatch, StageError};

/// Enqueues batches until the campaign has `batch_window` outstanding or none is left
/// planned; returns how many it enqueued.
pub async fn fill(ctx: &PipelineContext, campaign_id: i64) -> Result<u32, StageError> {
    let mut pushed = 0;
    while ctx.store.outstanding_batches(campaign_id).await? < i64::from(ctx.config.batch_window) {
        let Some(advance) = ctx.store.begin_window_advance(campaign_id).await? else {
            break;
        };
        ctx.queue
            .push_batch(SendBatch::new(campaign_id, advance.batch_no()))
            .await?;
        advance.commit().await?;
        pushed += 1;
    }
    Ok(pushed)
}
