//! The send stage: one batch of one campaign, rendered and delivered.
//!
//! 1. Claim the batch's pending recipients in the ledger (atomic; a recipient another
//!    worker holds is not returned, unless its claim outlived the lease: that worker
//!    died mid-batch, and where resending is safe this job takes the claim over).
//! 2. Render subject, HTML and text and build the MIME message for each, off the async
//!    executor (`spawn_blocking`): Liquid is CPU work. Messages are handed on in parts
//!    of [`RENDER_PART`], and rendering runs at most one part ahead of the provider.
//! 3. Hand each part to the provider as it comes, in requests of the provider's size
//!    (a Resend batch request, one SMTP message), with at most `SEND_CONCURRENCY`
//!    messages in flight, rounded up to whole requests ([`requests_in_flight`]).
//!    Rendering and delivery overlap, so a batch holds the parts in flight, not every
//!    rendered message at once.
//! 4. Record every outcome in one transaction; finish the campaign when nothing is left.
//!    If rendering stops (a panic), what was already sent is recorded and the rest stays
//!    claimed until its lease runs out.
//!
//! Each step's time (claim, personalize, deliver, record, window) is recorded in
//! `mailing_batch_step_duration_seconds`, its waits for the database included.
//!
//! While the batch is out, its claims are renewed every third of the lease, so a slow
//! relay is not mistaken for a dead worker. Temporary failures put recipients back to
//! pending and the stage reports [`StageError::Retry`]; the job handler then re-enqueues
//! the batch after `RETRY_BACKOFF_SECS`, and only those recipients are sent again.

use std::sync::Arc;

use futures::StreamExt;
use tracing::{Instrument, info, warn};

use super::personalize::{self, Plan};
use super::{PipelineContext, SendBatch, StageError, window};
use crate::buffers::BufferPool;
use crate::message::{self, Envelope};
use crate::model::CampaignStatus;
use crate::model::DeliveryStatus;
use crate::provider::{Outgoing, Provider, ProviderError};
use crate::render::{CampaignVars, CompiledTemplate, RenderContext, TemplateSource};
use crate::store::campaigns::CampaignRow;
use crate::store::deliveries::{Outcome, Recipient};

/// Messages rendered per part handed to the provider (rounded up to whole requests).
const RENDER_PART: usize = 100;

/// How many of a batch's requests are out at once: `SEND_CONCURRENCY` messages, rounded
/// up to whole requests of `per_request` messages, and at least one. (Counting requests
/// instead let a batch hold 16 rendered requests of 100 messages whenever the provider
/// fell behind its renderer: the transient memory peaks that grew with a campaign's
/// length.)
fn requests_in_flight(send_concurrency: usize, per_request: usize) -> usize {
    send_concurrency.div_ceil(per_request.max(1)).max(1)
}

/// Times a send job's steps one after the other: each lap records the time since the
/// last one under its step's name.
struct StepClock(std::time::Instant);

impl StepClock {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    fn lap(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        crate::telemetry::BatchStepTimed {
            step,
            elapsed: now - self.0,
        }
        .emit();
        self.0 = now;
    }
}

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

/// Everything [`prepare`] needs besides the recipients, moved onto the blocking thread.
struct Preparation {
    campaign: Arc<CampaignRow>,
    template: Arc<CompiledTemplate>,
    signer: crate::unsubscribe::UnsubscribeSigner,
    /// `UNSUBSCRIBE_MAILTO`.
    mailto: Option<String>,
    /// The DKIM signer, when configured.
    dkim: Option<message::DkimSigner>,
    /// What the provider takes.
    form: message::MessageForm,
    /// Where the bodies are rendered; [`deliver`] gives them back once sent.
    buffers: Arc<BufferPool>,
}

/// Renders the recipients' messages in order and hands them to `emit` in parts of
/// `part_size`, so the provider can take the first part while the next one renders.
/// Stops early when `emit` returns false (nobody takes parts any more). Returns how
/// many messages it prepared and the time spent rendering them (not waiting in `emit`).
fn prepare(
    job: &Preparation,
    recipients: Vec<Recipient>,
    plans: Vec<Plan>,
    part_size: usize,
    mut emit: impl FnMut(Vec<Prepared>) -> bool,
) -> (usize, std::time::Duration) {
    let campaign_vars =
        CampaignVars::new(&serde_json::json!({ "id": job.campaign.id, "name": job.campaign.name }));
    let part_size = part_size.max(1);
    let mut rendering = std::time::Duration::ZERO;
    let mut prepared = 0;
    let mut part = Vec::with_capacity(part_size.min(recipients.len()));
    let mut started = std::time::Instant::now();
    for (r, plan) in recipients.into_iter().zip(
        plans
            .into_iter()
            .chain(std::iter::repeat_with(Plan::unchanged)),
    ) {
        part.push(prepare_one(job, &campaign_vars, r, plan));
        prepared += 1;
        if part.len() == part_size {
            rendering += started.elapsed();
            if !emit(std::mem::replace(&mut part, Vec::with_capacity(part_size))) {
                return (prepared, rendering);
            }
            started = std::time::Instant::now();
        }
    }
    rendering += started.elapsed();
    if !part.is_empty() {
        emit(part);
    }
    (prepared, rendering)
}

/// Starts rendering on a blocking thread. Parts of `part_size` messages come out of the
/// receiver in recipient order, and the thread renders at most one part ahead of
/// whoever takes them; dropping the receiver stops it. The handle gives how many
/// messages were prepared and the time spent rendering them.
fn render_in_parts(
    preparation: Preparation,
    recipients: Vec<Recipient>,
    plans: Vec<Plan>,
    part_size: usize,
) -> (
    tokio::sync::mpsc::Receiver<Vec<Prepared>>,
    tokio::task::JoinHandle<(usize, std::time::Duration)>,
) {
    let (parts_tx, parts_rx) = tokio::sync::mpsc::channel::<Vec<Prepared>>(1);
    let span = tracing::info_span!("render", messages = recipients.len());
    let render = tokio::task::spawn_blocking(move || {
        let _render = span.enter();
        prepare(&preparation, recipients, plans, part_size, |part| {
            parts_tx.blocking_send(part).is_ok()
        })
    });
    (parts_rx, render)
}

/// One recipient's message, or the outcome its plan or its rendering decided.
fn prepare_one(
    job: &Preparation,
    campaign_vars: &CampaignVars,
    r: Recipient,
    plan: Plan,
) -> Prepared {
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
    let campaign = &*job.campaign;
    let unsubscribe_url = job.signer.url(campaign.id, r.subscriber_id);
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
    let message = job
        .template
        .render_with(&ctx, &job.buffers)
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
                unsubscribe_mailto: job.mailto.as_deref(),
            };
            message::outgoing(&envelope, body, job.dkim.as_ref(), job.form)
                .map_err(|e| e.to_string())
        })
        .map_err(|error| Outcome::Failed { error });
    Prepared {
        delivery_id: r.delivery_id,
        message,
    }
}

/// Sends one provider request's worth of prepared messages; recipients whose message
/// could not be built keep the outcome already decided. The rendered bodies go back to
/// `buffers` once the provider has answered.
async fn deliver(
    provider: &Provider,
    prepared: Vec<Prepared>,
    buffers: &BufferPool,
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
    if messages.is_empty() {
        return outcomes;
    }
    let results = provider.send_request(&messages).await;
    buffers.give_all(
        messages
            .into_iter()
            .flat_map(|m| [Some(m.html), m.text])
            .flatten()
            .map(String::into_bytes),
    );
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

/// Splits a rendered part into provider requests of at most `size` messages each.
fn requests(part: Vec<Prepared>, size: usize) -> Vec<Vec<Prepared>> {
    let size = size.max(1);
    let mut requests = Vec::with_capacity(part.len().div_ceil(size));
    let mut rest = part.into_iter().peekable();
    while rest.peek().is_some() {
        requests.push(rest.by_ref().take(size).collect());
    }
    requests
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

/// Renews a batch's claims every `every` for as long as it is polled, so a slow batch
/// is not mistaken for a dead sender's.
async fn renew_claims(
    ctx: &PipelineContext,
    every: std::time::Duration,
    campaign_id: i64,
    batch_no: i64,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = ctx.store.renew_claims(campaign_id, batch_no).await {
            warn!(campaign_id, batch_no, error = %e, "Renewing the batch's claims failed");
        }
    }
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

    // Claims older than the lease belong to a sender that died mid-batch (a live one
    // renews them); take them over where resending is safe (idempotency keys).
    let mut clock = StepClock::start();
    let take_over_before = provider
        .resend_safe()
        .then(|| crate::now_ms() - ctx.config.claim_lease.as_millis() as i64);
    let recipients = ctx
        .store
        .claim_batch(campaign.id, job.batch_no, take_over_before)
        .await?;
    clock.lap("claim");
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
        let personalized = tokio::task::spawn_blocking(move || {
            let _personalize = span.enter();
            let plans = personalize::run_chain(&runtime, &chain, &for_plugins, &recipients);
            (recipients, plans)
        })
        .await
        .map_err(|e| StageError::Permanent(format!("plugin task failed: {e}")))?;
        clock.lap("personalize");
        personalized
    };
    // Rendering runs ahead of the provider by at most one part: a batch's memory is the
    // parts in flight, not the whole batch rendered at once.
    let per_request = provider.messages_per_request();
    let part_size = RENDER_PART.div_ceil(per_request) * per_request;
    let preparation = Preparation {
        campaign: campaign.clone(),
        template: compiled,
        signer,
        mailto,
        dkim,
        form: provider.message_form(),
        buffers: ctx.renderer.buffers().clone(),
    };
    let (mut parts_rx, render) = render_in_parts(preparation, recipients, plans, part_size);
    let parts = futures::stream::poll_fn(move |cx| parts_rx.poll_recv(cx));
    let delivery = parts
        .flat_map(|part| futures::stream::iter(requests(part, per_request)))
        .map(|request| deliver(&provider, request, ctx.renderer.buffers()))
        .buffered(requests_in_flight(ctx.config.send_concurrency, per_request))
        .collect::<Vec<Vec<(i64, Outcome)>>>()
        .instrument(tracing::info_span!("deliver", provider = %campaign.provider));
    // The claims are renewed while rendering and delivery run, in this task: the
    // renewal ends with them, also when this future is dropped midway (claims renewed
    // forever would never be taken over).
    let every = (ctx.config.claim_lease / 3).max(std::time::Duration::from_secs(1));
    let outcomes: Vec<(i64, Outcome)> = tokio::select! {
        outcomes = delivery => outcomes.into_iter().flatten().collect(),
        never = renew_claims(ctx, every, campaign.id, job.batch_no) => match never {},
    };
    let rendered = match render.await {
        Ok(rendered) => rendered,
        Err(e) => {
            // What was sent before rendering stopped is recorded; the rest stays
            // claimed until its lease runs out and is sent then.
            ctx.store
                .record_outcomes(&outcomes, ctx.config.max_attempts)
                .await?;
            return Err(StageError::Permanent(format!("rendering task failed: {e}")));
        }
    };
    crate::telemetry::BatchRendered {
        messages: rendered.0,
        elapsed: rendered.1,
    }
    .emit();
    clock.lap("deliver");

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
    clock.lap("record");
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
        clock.lap("window");
        warn!(campaign_id = campaign.id, batch_no = job.batch_no, error = %last_error, "Batch will be retried");
        return Err(StageError::Retry {
            failed: report.retried,
            last_error,
            attempts: max_attempts_seen,
        });
    }
    window::fill(ctx, campaign.id).await?;
    ctx.store.finish_campaign_if_complete(campaign.id).await?;
    clock.lap("window");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{
        Plan, Preparation, Prepared, deliver, render_in_parts, requests, requests_in_flight,
        sent_rows_that_decide,
    };
    use crate::message::MessageForm;
    use crate::provider::{Provider, Transport};
    use crate::render::{CacheConfig, Renderer, TemplateSource};
    use crate::store::campaigns::CampaignRow;
    use crate::store::deliveries::{Outcome, Recipient};
    use crate::unsubscribe::UnsubscribeSigner;

    fn preparation() -> Preparation {
        let renderer = Renderer::new(CacheConfig {
            enabled: false,
            ttl: Duration::from_secs(60),
            capacity: 1,
        });
        let template = renderer
            .compile(TemplateSource {
                subject: "Hello {{ subscriber.name }}",
                html: "<p>{{ subscriber.email }} in {{ subscriber.attributes.city }}</p>",
                text: Some("{{ subscriber.email }}"),
            })
            .unwrap();
        Preparation {
            campaign: Arc::new(CampaignRow {
                id: 7,
                name: "Parts".into(),
                template_id: 1,
                from_addr: "Shop <news@shop.example>".into(),
                reply_to: None,
                provider: "resend".into(),
                plugins: "[]".into(),
                status: "running".into(),
                send_at: None,
                planned: 1,
                last_error: None,
                created_at: 0,
                updated_at: 0,
                started_at: None,
                finished_at: None,
                enqueued_through: 0,
            }),
            template: Arc::new(template),
            signer: UnsubscribeSigner::new(
                "a-test-secret-of-enough-length-0123",
                "http://127.0.0.1",
            ),
            mailto: None,
            dkim: None,
            form: MessageForm::Parts,
            buffers: renderer.buffers().clone(),
        }
    }

    fn recipients(n: i64) -> Vec<Recipient> {
        (1..=n)
            .map(|i| Recipient {
                delivery_id: i,
                subscriber_id: i,
                email: format!("r{i}@example.com"),
                name: Some(format!("R {i}")),
                attributes: r#"{"city":"Lyon"}"#.into(),
                delivery_key: format!("key-{i}"),
                attempts: 1,
            })
            .collect()
    }

    fn ids(part: &[Prepared]) -> Vec<i64> {
        part.iter().map(|p| p.delivery_id).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rendering_runs_one_part_ahead_of_delivery_and_yields_every_recipient_in_order() {
        let (mut parts, render) = render_in_parts(preparation(), recipients(1000), Vec::new(), 100);
        let first = parts.recv().await.expect("a first part");
        assert_eq!(ids(&first), (1..=100).collect::<Vec<_>>());
        // Nobody takes the next parts for a while: rendering must wait, with at most one
        // part ready, instead of rendering the other 800 messages.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(parts.len() <= 1, "{} parts rendered ahead", parts.len());
        assert!(!render.is_finished(), "rendering did not wait for delivery");
        let mut seen = ids(&first);
        while let Some(part) = parts.recv().await {
            assert!(part.len() <= 100);
            seen.extend(ids(&part));
        }
        assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
        let (prepared, _) = render.await.unwrap();
        assert_eq!(prepared, 1000);
        assert!(first.iter().all(|p| p.message.is_ok()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rendering_stops_when_nobody_takes_the_parts_any_more() {
        let (mut parts, render) = render_in_parts(preparation(), recipients(1000), Vec::new(), 100);
        assert!(parts.recv().await.is_some());
        drop(parts);
        let (prepared, _) = render.await.unwrap();
        assert!(prepared <= 300, "{prepared} messages rendered for nobody");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plan_s_verdict_travels_in_its_part_in_place_of_a_message() {
        let plans = vec![
            Plan::unchanged(),
            Plan::Skip("opted out".into()),
            Plan::Fail("no address".into()),
        ];
        let (mut parts, render) = render_in_parts(preparation(), recipients(5), plans, 2);
        let mut all = Vec::new();
        while let Some(part) = parts.recv().await {
            all.push(part.len());
            for p in part {
                match (p.delivery_id, p.message) {
                    (1 | 4 | 5, Ok(_)) => {}
                    (2, Err(Outcome::Skipped { reason })) => assert_eq!(reason, "opted out"),
                    (3, Err(Outcome::Failed { error })) => assert_eq!(error, "no address"),
                    (id, other) => panic!("recipient {id}: {:?}", other.err()),
                }
            }
        }
        assert_eq!(all, vec![2, 2, 1]);
        assert_eq!(render.await.unwrap().0, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivered_bodies_go_back_to_the_renderer_s_buffers() {
        let outbox = std::env::temp_dir().join(format!(
            "mailing-send-buffers-{}-{}",
            std::process::id(),
            crate::now_ms()
        ));
        let provider = Provider::unlimited(Transport::File(
            crate::provider::file::FileProvider::new(&outbox),
        ));
        let mut job = preparation();
        job.form = provider.message_form();
        let buffers = job.buffers.clone();
        let (mut parts, render) = render_in_parts(job, recipients(3), Vec::new(), 3);
        let part = parts.recv().await.expect("a part");
        assert_eq!(buffers.kept_buffers(), 0);
        let outcomes = deliver(&provider, part, &buffers).await;
        assert!(
            outcomes
                .iter()
                .all(|(_, o)| matches!(o, Outcome::Sent { .. })),
            "{outcomes:?}"
        );
        // Each message's HTML and text, kept for the next messages.
        assert_eq!(buffers.kept_buffers(), 6);
        render.await.unwrap();
        // The next part is written into them.
        let mut job = preparation();
        job.buffers = buffers.clone();
        let (mut parts, render) = render_in_parts(job, recipients(3), Vec::new(), 3);
        let part = parts.recv().await.expect("a part");
        assert_eq!(buffers.kept_buffers(), 0);
        let html = &part[0].message.as_ref().expect("rendered").html;
        assert_eq!(html, "<p>r1@example.com in Lyon</p>");
        render.await.unwrap();
        let _ = std::fs::remove_dir_all(&outbox);
    }

    #[test]
    fn a_part_splits_into_requests_of_the_provider_s_size() {
        let part = |n: i64| {
            (1..=n)
                .map(|i| Prepared {
                    delivery_id: i,
                    message: Err(Outcome::Skipped {
                        reason: String::new(),
                    }),
                })
                .collect::<Vec<_>>()
        };
        let sizes = |rs: Vec<Vec<Prepared>>| rs.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(requests(part(250), 100)), vec![100, 100, 50]);
        assert_eq!(sizes(requests(part(3), 1)), vec![1, 1, 1]);
        assert_eq!(sizes(requests(part(0), 100)), Vec::<usize>::new());
        let order: Vec<i64> = requests(part(7), 3).iter().flat_map(|r| ids(r)).collect();
        assert_eq!(order, (1..=7).collect::<Vec<_>>());
    }

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

    #[test]
    fn send_concurrency_counts_messages_in_whole_requests() {
        // One message per request (SMTP, the outbox): SEND_CONCURRENCY requests.
        assert_eq!(requests_in_flight(16, 1), 16);
        // Resend's 100-message requests: 16 messages round up to one request.
        assert_eq!(requests_in_flight(16, 100), 1);
        assert_eq!(requests_in_flight(150, 100), 2);
        assert_eq!(requests_in_flight(200, 100), 2);
        // Never none.
        assert_eq!(requests_in_flight(0, 100), 1);
        assert_eq!(requests_in_flight(1, 0), 1);
    }
}
