//! The send stage: one batch of one campaign, rendered and delivered.
//!
//! 1. Claim the batch's pending recipients in the ledger (atomic; a recipient another
//!    worker holds is not returned).
//! 2. Render subject, HTML and text and build the MIME message for each, off the async
//!    executor (`spawn_blocking`): Liquid is CPU work.
//! 3. Hand the messages to the provider, a bounded number at once.
//! 4. Record every outcome in one transaction; finish the campaign when nothing is left.
//!
//! While the batch is out, its claims are renewed every third of the lease, so a slow
//! relay is not mistaken for a dead worker. Temporary failures put recipients back to
//! pending and the stage reports [`StageError::Retry`]; the job handler then re-enqueues
//! the batch after `RETRY_BACKOFF_SECS`, and only those recipients are sent again.

use std::sync::Arc;

use tracing::{Instrument, info, warn};

use super::personalize::{self, Plan};
use super::{PipelineContext, SendBatch, StageError, window};
use crate::message::{self, Envelope};
use crate::model::CampaignStatus;
use crate::model::DeliveryStatus;
use crate::provider::{Outgoing, Provider, ProviderError};
use crate::render::{CompiledTemplate, RenderContext, TemplateSource};
use crate::store::campaigns::CampaignRow;
use crate::store::deliveries::{Outcome, Recipient};

/// What one run of the send stage did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Recipients claimed.
    pub claimed: usize,
    /// Accepted by the provider.
    pub sent: usize,
    /// Failed for good.
    pub failed: usize,
    /// Put back for a retry.
    pub retried: usize,
    /// Left out (a plugin's verdict or policy).
    pub skipped: usize,
}

struct Prepared {
    delivery_id: i64,
    /// The message, or the outcome already decided (a render error, a plugin verdict).
    message: Result<Outgoing, Outcome>,
}

/// How every message of a batch is built beyond its rendered body.
struct MessageShape<'a> {
    /// `UNSUBSCRIBE_MAILTO`.
    mailto: Option<&'a str>,
    /// The DKIM signer, when configured.
    dkim: Option<&'a message::DkimSigner>,
    /// What the provider takes.
    form: message::MessageForm,
}

fn prepare(
    campaign: &CampaignRow,
    template: &CompiledTemplate,
    signer: &crate::unsubscribe::UnsubscribeSigner,
    shape: &MessageShape<'_>,
    recipients: Vec<Recipient>,
    plans: Vec<Plan>,
) -> Vec<Prepared> {
    let campaign_vars = serde_json::json!({ "id": campaign.id, "name": campaign.name });
    recipients
        .into_iter()
        .zip(
            plans
                .into_iter()
                .chain(std::iter::repeat_with(Plan::unchanged)),
        )
        .map(|(r, plan)| {
            let (extra, subject, from_name) = match plan {
                Plan::Send {
                    extra,
                    subject,
                    from_name,
                } => (extra, subject, from_name),
                Plan::Skip(reason) => {
                    return Prepared {
                        delivery_id: r.delivery_id,
                        message: Err(Outcome::Skipped { reason }),
                    };
                }
                Plan::Fail(error) => {
                    return Prepared {
                        delivery_id: r.delivery_id,
                        message: Err(Outcome::Failed { error }),
                    };
                }
                Plan::Retry(error) => {
                    return Prepared {
                        delivery_id: r.delivery_id,
                        message: Err(Outcome::Retry { error }),
                    };
                }
            };
            let unsubscribe_url = signer.url(campaign.id, r.subscriber_id);
            let ctx = RenderContext {
                email: r.email.clone(),
                name: r.name.clone(),
                attributes: serde_json::from_str(&r.attributes).unwrap_or_default(),
                campaign: campaign_vars.clone(),
                unsubscribe_url: unsubscribe_url.clone(),
                extra,
            };
            let from = match from_name.as_deref() {
                Some(name) => message::with_display_name(&campaign.from_addr, name)
                    .unwrap_or_else(|_| campaign.from_addr.clone()),
                None => campaign.from_addr.clone(),
            };
            let message = template
                .render(&ctx)
                .map_err(|e| e.to_string())
                .and_then(|mut body| {
                    if let Some(subject) = subject {
                        body.subject = subject;
                    }
                    let envelope = Envelope {
                        from: &from,
                        reply_to: campaign.reply_to.as_deref(),
                        to_email: &r.email,
                        to_name: r.name.as_deref(),
                        delivery_key: &r.delivery_key,
                        unsubscribe_url: Some(&unsubscribe_url),
                        unsubscribe_mailto: shape.mailto,
                    };
                    message::outgoing(&envelope, body, shape.dkim, shape.form)
                        .map_err(|e| e.to_string())
                })
                .map_err(|error| Outcome::Failed { error });
            Prepared {
                delivery_id: r.delivery_id,
                message,
            }
        })
        .collect()
}

/// Sends the prepared messages; recipients whose message could not be built fail.
async fn deliver(
    provider: &Provider,
    prepared: Vec<Prepared>,
    concurrency: usize,
) -> Vec<(i64, Outcome)> {
    let mut outcomes = Vec::with_capacity(prepared.len());
    let mut ids = Vec::with_capacity(prepared.len());
    let mut messages = Vec::with_capacity(prepared.len());
    for p in prepared {
        match p.message {
            Ok(m) => {
                ids.push(p.delivery_id);
                messages.push(m);
            }
            Err(outcome) => outcomes.push((p.delivery_id, outcome)),
        }
    }
    let results = provider.send_batch(&messages, concurrency).await;
    for (id, result) in ids.into_iter().zip(results) {
        let outcome = match result {
            Ok(provider_message_id) => Outcome::Sent {
                provider_message_id,
            },
            Err(ProviderError::Permanent(error)) => Outcome::Failed { error },
            Err(e @ ProviderError::Transient { .. }) => Outcome::Retry {
                error: e.to_string(),
            },
        };
        outcomes.push((id, outcome));
    }
    outcomes
}

/// Pauses a running campaign whose failure rate crossed the configured threshold, so a
/// broken template, sender or provider does not burn the whole list.
async fn pause_if_failing(ctx: &PipelineContext, campaign_id: i64) -> Result<(), StageError> {
    let ratio = ctx.config.failure_pause_ratio;
    if ratio <= 0.0 {
        return Ok(());
    }
    // Runs after every batch, so it must not count the whole ledger: failures are
    // counted (usually few), and sent rows only as far as could still matter. The
    // campaign pauses when failed > ratio × (sent + failed), that is when
    // sent < failed × (1 − ratio) / ratio; once `sent` reaches that bound (or the bound
    // that makes `finished` reach `failure_pause_min`, whichever is larger) the answer
    // is no, and counting further changes nothing.
    let failed = ctx
        .store
        .count_deliveries(campaign_id, DeliveryStatus::Failed)
        .await?;
    if failed == 0 {
        return Ok(());
    }
    let enough = sent_rows_that_decide(failed, ratio, ctx.config.failure_pause_min);
    let sent = ctx
        .store
        .count_deliveries_up_to(campaign_id, DeliveryStatus::Sent, enough)
        .await?;
    let finished = sent + failed;
    if finished >= ctx.config.failure_pause_min && (failed as f64) > ratio * finished as f64 {
        let reason = format!(
            "paused automatically: {failed} of {finished} finished recipients failed (threshold {:.0}%); \
             fix the cause and resume",
            ratio * 100.0
        );
        if ctx
            .store
            .transition_campaign(
                campaign_id,
                &[CampaignStatus::Running],
                CampaignStatus::Paused,
                Some(&reason),
            )
            .await?
        {
            warn!(
                campaign_id,
                failed, finished, "Campaign paused: failure rate over threshold"
            );
        }
    }
    Ok(())
}

/// How many sent rows [`pause_if_failing`] needs to count to decide, given `failed`:
/// with at least this many the campaign does not pause (the failure share is at most
/// `ratio`), with fewer the exact count decides.
fn sent_rows_that_decide(failed: i64, ratio: f64, min_finished: i64) -> i64 {
    let by_ratio = (failed as f64 * (1.0 - ratio) / ratio).ceil();
    let by_ratio = if by_ratio.is_finite() && by_ratio < i64::MAX as f64 {
        by_ratio as i64
    } else {
        i64::MAX - 1
    };
    by_ratio.max(min_finished - failed).max(0).saturating_add(1)
}

/// Runs the send stage for one batch.
pub async fn send_batch(ctx: &PipelineContext, job: &SendBatch) -> Result<BatchReport, StageError> {
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
    if campaign.status()? != CampaignStatus::Running {
        info!(campaign_id = campaign.id, batch_no = job.batch_no, status = %campaign.status,
              "Batch left for later: campaign is not running");
        return Ok(BatchReport::default());
    }
    let provider = ctx
        .providers
        .by_name(&campaign.provider)
        .map_err(|e| StageError::Permanent(e.to_string()))?
        .clone();
    let template = ctx.store.template(campaign.template_id).await?;
    let compiled = ctx
        .renderer
        .compiled(
            template.id,
            template.updated_at,
            TemplateSource {
                subject: &template.subject,
                html: &template.html,
                text: template.text.as_deref(),
            },
        )
        .map_err(|e| StageError::Permanent(format!("template {}: {e}", template.id)))?;

    let chain = if campaign.plugins == "[]" {
        Vec::new()
    } else {
        personalize::load_chain(&ctx.store, &ctx.plugins, &campaign).await?
    };

    let recipients = ctx.store.claim_batch(campaign.id, job.batch_no).await?;
    let mut report = BatchReport {
        claimed: recipients.len(),
        ..BatchReport::default()
    };
    if recipients.is_empty() {
        window::fill(ctx, campaign.id).await?;
        ctx.store.finish_campaign_if_complete(campaign.id).await?;
        return Ok(report);
    }

    let max_attempts_seen = recipients.iter().map(|r| r.attempts).max().unwrap_or(1);
    let signer = ctx.signer.clone();
    let mailto = ctx.config.unsubscribe_mailto.clone();
    let dkim = ctx.dkim.clone();
    let campaign = Arc::new(campaign);
    let (recipients, plans) = if chain.is_empty() {
        (recipients, Vec::new())
    } else {
        let runtime = ctx.plugins.clone();
        let for_plugins = campaign.clone();
        let span = tracing::info_span!(
            "personalize",
            plugins = chain.len(),
            recipients = recipients.len()
        );
        tokio::task::spawn_blocking(move || {
            let _personalize = span.enter();
            let plans = personalize::run_chain(&runtime, &chain, &for_plugins, &recipients);
            (recipients, plans)
        })
        .await
        .map_err(|e| StageError::Permanent(format!("plugin task failed: {e}")))?
    };
    let for_render = campaign.clone();
    let form = provider.message_form();
    let render_started = std::time::Instant::now();
    let render_span = tracing::info_span!("render", messages = recipients.len());
    let prepared = tokio::task::spawn_blocking(move || {
        let _render = render_span.enter();
        prepare(
            &for_render,
            &compiled,
            &signer,
            &MessageShape {
                mailto: mailto.as_deref(),
                dkim: dkim.as_ref(),
                form,
            },
            recipients,
            plans,
        )
    })
    .await
    .map_err(|e| StageError::Permanent(format!("rendering task failed: {e}")))?;
    crate::telemetry::BatchRendered {
        messages: prepared.len(),
        elapsed: render_started.elapsed(),
    }
    .emit();

    let renewer = {
        let store = ctx.store.clone();
        let every = (ctx.config.claim_lease / 3).max(std::time::Duration::from_secs(1));
        let (campaign_id, batch_no) = (campaign.id, job.batch_no);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = store.renew_claims(campaign_id, batch_no).await {
                    warn!(campaign_id, batch_no, error = %e, "Renewing the batch's claims failed");
                }
            }
        })
    };
    let outcomes = deliver(&provider, prepared, ctx.config.send_concurrency)
        .instrument(tracing::info_span!("deliver", provider = %campaign.provider))
        .await;
    renewer.abort();

    let mut last_error = String::new();
    for (_, outcome) in &outcomes {
        match outcome {
            Outcome::Sent { .. } => report.sent += 1,
            Outcome::Failed { error } => {
                report.failed += 1;
                last_error.clone_from(error);
            }
            Outcome::Retry { error } => {
                report.retried += 1;
                last_error.clone_from(error);
            }
            Outcome::Skipped { .. } => report.skipped += 1,
        }
    }
    ctx.store
        .record_outcomes(&outcomes, ctx.config.max_attempts)
        .await?;
    for (outcome, count) in [
        ("sent", report.sent),
        ("failed", report.failed),
        ("retried", report.retried),
        ("skipped", report.skipped),
    ] {
        crate::telemetry::DeliveryRecorded {
            provider: &campaign.provider,
            outcome,
            count: count as u64,
        }
        .emit();
    }
    info!(
        campaign_id = campaign.id,
        batch_no = job.batch_no,
        sent = report.sent,
        failed = report.failed,
        retried = report.retried,
        skipped = report.skipped,
        "Batch delivered"
    );
    pause_if_failing(ctx, campaign.id).await?;
    if report.retried > 0 {
        warn!(campaign_id = campaign.id, batch_no = job.batch_no, error = %last_error, "Batch will be retried");
        return Err(StageError::Retry {
            failed: report.retried,
            last_error,
            attempts: max_attempts_seen,
        });
    }
    window::fill(ctx, campaign.id).await?;
    ctx.store.finish_campaign_if_complete(campaign.id).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::sent_rows_that_decide;

    /// The rule `pause_if_failing` applies to exact counts.
    fn pauses(failed: i64, sent: i64, ratio: f64, min: i64) -> bool {
        let finished = sent + failed;
        finished >= min && (failed as f64) > ratio * finished as f64
    }

    #[test]
    fn counting_sent_rows_up_to_the_bound_decides_as_the_exact_count_does() {
        for ratio in [0.01, 0.1, 0.25, 0.5, 0.9, 1.0] {
            for min in [1, 10, 100] {
                for failed in 1..60 {
                    let enough = sent_rows_that_decide(failed, ratio, min);
                    for sent in 0..400 {
                        let counted = sent.min(enough);
                        assert_eq!(
                            pauses(failed, counted, ratio, min),
                            pauses(failed, sent, ratio, min),
                            "ratio {ratio}, min {min}, failed {failed}, sent {sent}, bound {enough}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_bound_saturates_instead_of_overflowing() {
        assert_eq!(sent_rows_that_decide(i64::MAX / 2, 1e-300, 10), i64::MAX);
        assert_eq!(sent_rows_that_decide(3, 1e-300, 10), i64::MAX);
        assert_eq!(sent_rows_that_decide(10, 0.5, 100), 91);
        assert_eq!(sent_rows_that_decide(5, 1.0, 1), 1);
    }
}
