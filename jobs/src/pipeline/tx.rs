//! The tx stage: one transactional message, rendered and handed to its provider by its
//! own workers, so it never waits behind bulk batches. The message's row is its ledger
//! entry: claimed before sending, outcome recorded after; a temporary failure is retried
//! with the same backoff as batches.

use tracing::info;

use super::{PipelineContext, StageError, TxSend};
use crate::message::{self, Envelope};
use crate::provider::ProviderError;
use crate::render::{CampaignVars, RenderContext, TemplateSource};

/// Sends one transactional message. Returns `Retry` when it should be tried again.
pub async fn send_tx(ctx: &PipelineContext, job: &TxSend) -> Result<(), StageError> {
    let Some(tx) = ctx.store.claim_tx(job.tx_id).await? else {
        return Ok(()); // already sent, failed, or being sent by someone else
    };
    let fail = |error: String| async move {
        ctx.store
            .record_tx(tx.id, None, Some(&error), false, ctx.config.max_attempts)
            .await?;
        Ok::<(), StageError>(())
    };
    let provider = match ctx.providers.by_name(&tx.provider) {
        Ok(p) => p.clone(),
        Err(e) => return fail(e.to_string()).await,
    };
    let template = ctx.store.template(tx.template_id).await?;
    let compiled = match ctx.renderer.compiled(
        template.id,
        template.updated_at,
        TemplateSource {
            subject: &template.subject,
            html: &template.html,
            text: template.text.as_deref(),
        },
    ) {
        Ok(c) => c,
        Err(e) => return fail(format!("template {}: {e}", template.id)).await,
    };
    let render_ctx = RenderContext {
        email: tx.email.clone(),
        name: tx.name.clone(),
        attributes: serde_json::from_str(&tx.attributes).unwrap_or_default(),
        campaign: CampaignVars::default(),
        unsubscribe_url: String::new(),
        extra: serde_json::from_str(&tx.data).unwrap_or_default(),
    };
    let built = compiled
        .render(&render_ctx)
        .map_err(|e| e.to_string())
        .and_then(|body| {
            let envelope = Envelope {
                from: &tx.from_addr,
                reply_to: None,
                to_email: &tx.email,
                to_name: tx.name.as_deref(),
                delivery_key: &tx.delivery_key,
                unsubscribe_url: None,
                unsubscribe_mailto: None,
            };
            message::outgoing(&envelope, body, ctx.dkim.as_ref(), provider.message_form())
                .map_err(|e| e.to_string())
        });
    let message = match built {
        Ok(m) => m,
        Err(e) => return fail(e).await,
    };
    let result = provider
        .send_batch(std::slice::from_ref(&message), 1)
        .await
        .pop();
    match result {
        Some(Ok(id)) => {
            ctx.store
                .record_tx(tx.id, Some(id), None, false, ctx.config.max_attempts)
                .await?;
            crate::telemetry::DeliveryRecorded {
                provider: &tx.provider,
                outcome: "sent",
                count: 1,
            }
            .emit();
            info!(tx_id = tx.id, "Transactional message sent");
            Ok(())
        }
        Some(Err(ProviderError::Permanent(e))) => {
            crate::telemetry::DeliveryRecorded {
                provider: &tx.provider,
                outcome: "failed",
                count: 1,
            }
            .emit();
            fail(e).await
        }
        Some(Err(e)) => {
            let error = e.to_string();
            ctx.store
                .record_tx(tx.id, None, Some(&error), true, ctx.config.max_attempts)
                .await?;
            crate::telemetry::DeliveryRecorded {
                provider: &tx.provider,
                outcome: "retried",
                count: 1,
            }
            .emit();
            Err(StageError::Retry {
                failed: 1,
                last_error: error,
                attempts: tx.attempts,
            })
        }
        None => fail("the provider returned no result".into()).await,
    }
}
