//! The `scheduler` component: a one-second clock that starts scheduled campaigns whose
//! time has come and, every ten seconds, enqueues the batches of senders that died
//! mid-batch (claims older than the lease, which the batch's job takes over, or fails
//! where resending is unsafe), re-enqueues batches whose jobs were lost (pending rows
//! untouched for `STALL_RECOVERY_SECS`, e.g. a Redis without persistence restarted),
//! tops up each campaign's send window and finishes campaigns with nothing left to send.
//! Hourly it trims finished queue jobs and expired sessions. A failing tick is logged and retried on the next
//! one; it never crashes the component (only fault injection does).

use std::time::Duration;

use mailing_jobs::CampaignStatus;
use mailing_jobs::pipeline::{PipelineContext, PlanCampaign, SendBatch};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, info, warn};

use super::ComponentMsg;

/// The registered name of this component.
pub const NAME: &str = "scheduler";

/// Arguments of the scheduler.
#[derive(Clone)]
pub struct SchedulerArgs {
    /// What the pipeline uses.
    pub ctx: PipelineContext,
    /// Time between ticks.
    pub tick: Duration,
    /// Re-enqueue enqueued batches whose pending rows nobody touched for this long.
    pub stall_after: Duration,
    /// Scheduled backups, in processes that take them.
    pub backups: Option<BackupSchedule>,
    /// Component states, sampled into the metrics.
    pub health: mailing_jobs::health::HealthRegistry,
    /// The data directory (free space is sampled).
    pub data_dir: std::path::PathBuf,
    /// The backup directory (the newest backup is sampled).
    pub backup_dir: std::path::PathBuf,
}

/// Keeps the ledger scans behind the business gauges (`running_progress` every 5 s,
/// `ledger_rates` every 15 s) to a small share of the database's time: they count every
/// entry of the ledger's status index, which at millions of rows takes long enough to
/// slow the campaign being measured. After a scan that took `t`, the next one waits at least
/// `SCAN_SHARE_INVERSE × t`; those gauges then keep their last value a little longer.
#[derive(Debug, Default)]
pub(crate) struct ScanBudget {
    not_before: Option<std::time::Instant>,
}

/// One budget per gauge scan.
#[derive(Debug, Default)]
pub(crate) struct LedgerScans {
    progress: ScanBudget,
    rates: ScanBudget,
}

/// A scan that took `t` is followed by at least `t × SCAN_SHARE_INVERSE` without one:
/// at most 1/20 (5%) of the time goes to each gauge's scans.
const SCAN_SHARE_INVERSE: u32 = 20;

impl ScanBudget {
    /// Whether a scan may run now.
    pub(crate) fn allows(&self, now: std::time::Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// Records a scan that started at `started` and ended at `now`.
    pub(crate) fn spent(&mut self, started: std::time::Instant, now: std::time::Instant) {
        self.not_before = Some(now + now.saturating_duration_since(started) * SCAN_SHARE_INVERSE);
    }

    /// Runs `scan` if the budget allows it; None when skipped.
    async fn run<T>(&mut self, scan: impl std::future::Future<Output = T>) -> Option<T> {
        let started = std::time::Instant::now();
        if !self.allows(started) {
            return None;
        }
        let out = scan.await;
        self.spent(started, std::time::Instant::now());
        Some(out)
    }
}

/// Refreshes the sampled metrics. `ledger` also scans the ledger for the business rates.
async fn sample(
    args: &SchedulerArgs,
    system: &mut sysinfo::System,
    disks: &mut sysinfo::Disks,
    ledger: bool,
    budget: &mut LedgerScans,
) {
    use mailing_jobs::telemetry::set_gauges;
    let ctx = &args.ctx;
    if let Ok((plan, send)) = ctx.queue.depth().await {
        set_gauges(|g| {
            g.queue_depth.insert("plan", plan);
            g.queue_depth.insert("send", send);
        });
    }
    let started = std::time::Instant::now();
    let rtt = ctx
        .queue
        .ping()
        .await
        .ok()
        .map(|()| started.elapsed().as_secs_f64());
    let oldest = ctx.queue.oldest_due_age().await.unwrap_or_default();
    let progress = budget.progress.run(ctx.store.running_progress()).await;
    set_gauges(|g| {
        g.queue_roundtrip = rtt;
        g.queue_oldest_age = oldest.into_iter().collect();
        if let Some(progress) = progress {
            g.running_progress = progress.ok();
        }
    });
    let cache = ctx.renderer.stats();
    let pool = ctx.store.pool();
    let (size, idle) = (u64::from(pool.size()), pool.num_idle() as u64);
    let actors = args
        .health
        .snapshot()
        .into_iter()
        .map(|(name, c)| {
            (
                name,
                (
                    c.status == mailing_jobs::health::ComponentStatus::Running,
                    u64::from(c.restarts),
                ),
            )
        })
        .collect();
    let last_backup = mailing_jobs::backup::list(&args.backup_dir)
        .ok()
        .and_then(|l| l.into_iter().find(|m| m.verified))
        .map(|m| (m.created_at.timestamp(), m.size_bytes));
    set_gauges(|g| {
        g.template_cache = (cache.size, cache.hits, cache.misses, cache.evictions);
        g.db_pool = (size.saturating_sub(idle), idle);
        g.actors = actors;
        g.last_backup = last_backup;
    });
    mailing_jobs::telemetry::sample_process(system, disks, &args.data_dir);
    if !ledger {
        return;
    }
    let Some(scanned) = budget
        .rates
        .run(async {
            (
                ctx.store.ledger_rates().await,
                ctx.store.campaigns_by_status().await,
            )
        })
        .await
    else {
        return;
    };
    match scanned {
        (Ok(rates), Ok(campaigns)) => set_gauges(|g| {
            g.rates = rates;
            g.campaigns = campaigns.into_iter().collect();
        }),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "Sampling the ledger for metrics failed")
        }
    }
}

/// When and where scheduled backups go.
#[derive(Clone)]
pub struct BackupSchedule {
    /// Destinations and retention.
    pub config: mailing_jobs::backup::BackupConfig,
    /// UTC hours to back up at.
    pub hours: Vec<u32>,
    /// Set while a backup runs, so ticks do not start a second one.
    pub running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// When the last attempt started: a failed backup is retried after 15 minutes, not
    /// at every check.
    pub last_attempt: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Starts a backup when the hour is scheduled and none was taken since it began.
fn maybe_backup(schedule: &BackupSchedule, ctx: &PipelineContext) {
    use chrono::Timelike;
    use std::sync::atomic::Ordering;
    let now = chrono::Utc::now();
    if !schedule.hours.contains(&now.hour()) || schedule.running.load(Ordering::SeqCst) {
        return;
    }
    let hour_start = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .unwrap_or(now);
    let newest = mailing_jobs::backup::list(&schedule.config.dir)
        .ok()
        .and_then(|l| l.first().map(|m| m.created_at));
    if newest.is_some_and(|t| t >= hour_start) {
        return;
    }
    {
        let mut last = schedule
            .last_attempt
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(15 * 60)) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    schedule.running.store(true, Ordering::SeqCst);
    let (schedule, store) = (schedule.clone(), ctx.store.clone());
    tokio::spawn(async move {
        match mailing_jobs::backup::create(&store, &schedule.config).await {
            Ok(m) => info!(backup = %m.name, size_bytes = m.size_bytes, "Scheduled backup done"),
            Err(e) => warn!(error = %e, "Scheduled backup failed"),
        }
        match mailing_jobs::backup::prune(&schedule.config, chrono::Utc::now()) {
            Ok(removed) if !removed.is_empty() => {
                info!(removed = removed.len(), "Old backups pruned")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "Pruning backups failed"),
        }
        schedule.running.store(false, Ordering::SeqCst);
    });
}

/// State of the scheduler.
pub struct SchedulerState {
    args: SchedulerArgs,
    system: sysinfo::System,
    disks: sysinfo::Disks,
    ticks: u64,
    timer: tokio::task::JoinHandle<()>,
    scan_budget: LedgerScans,
}

/// The scheduler component.
#[derive(Debug, Clone, Copy)]
pub struct Scheduler;

async fn start_due(ctx: &PipelineContext) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let now = mailing_jobs::now_ms();
    for id in ctx.store.due_campaigns(now, 100).await? {
        if ctx.store.start_scheduled(id, now).await? {
            // A trace of its own per campaign, not the scheduler actor's.
            let job = tracing::info_span!(parent: None, "schedule", campaign_id = id)
                .in_scope(|| PlanCampaign::new(id));
            if let Err(e) = ctx.queue.push_plan(job).await {
                ctx.store
                    .revert_campaign(id, CampaignStatus::Running, CampaignStatus::Scheduled)
                    .await?;
                return Err(e.into());
            }
            info!(campaign_id = id, "Scheduled campaign started");
        }
    }
    Ok(())
}

async fn recover(
    ctx: &PipelineContext,
    stall_after: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let lease = ctx.config.claim_lease.as_millis() as i64;
    for id in ctx.store.running_campaigns().await? {
        recover_campaign(ctx, id, lease, stall_after)
            .instrument(tracing::info_span!(parent: None, "recover", campaign_id = id))
            .await?;
    }
    Ok(())
}

/// Recovery of one running campaign (in its own trace).
async fn recover_campaign(
    ctx: &PipelineContext,
    id: i64,
    lease: i64,
    stall_after: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let campaign = ctx.store.campaign(id).await?;
    let resend_safe = ctx
        .providers
        .by_name(&campaign.provider)
        .map(|p| p.resend_safe())
        .unwrap_or(false);
    let batches = ctx
        .store
        .recover_stale_claims(id, lease, resend_safe)
        .await?;
    for batch_no in &batches {
        ctx.queue.push_batch(SendBatch::new(id, *batch_no)).await?;
    }
    if !batches.is_empty() {
        warn!(
            campaign_id = id,
            batches = batches.len(),
            "Enqueued the batches of a sender that stopped mid-batch, to take its claims over"
        );
    }
    if campaign.planned == 0
        && campaign.updated_at < mailing_jobs::now_ms() - stall_after.as_millis() as i64
    {
        // The plan job was lost (plan touches the campaign on every page, so this is
        // not a slow plan): plan is idempotent, so enqueue it again.
        ctx.store.touch_campaign(id).await?;
        ctx.queue
            .push_plan(mailing_jobs::pipeline::PlanCampaign::new(id))
            .await?;
        warn!(
            campaign_id = id,
            "Re-enqueued the plan of a campaign whose planning stalled"
        );
    }
    let stalled = ctx
        .store
        .stalled_batches(id, stall_after.as_millis() as i64)
        .await?;
    for batch_no in &stalled {
        ctx.queue.push_batch(SendBatch::new(id, *batch_no)).await?;
    }
    if !stalled.is_empty() {
        warn!(
            campaign_id = id,
            batches = stalled.len(),
            "Re-enqueued batches whose jobs were lost"
        );
    }
    mailing_jobs::pipeline::window::fill(ctx, id).await?;
    ctx.store.finish_campaign_if_complete(id).await?;
    Ok(())
}

async fn housekeeping(
    ctx: &PipelineContext,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let jobs = ctx.queue.vacuum(Duration::from_secs(7 * 24 * 3600)).await?;
    let tokens = ctx.store.purge_expired_tokens().await?;
    let events = ctx
        .store
        .purge_webhook_events(30 * 24 * 3600 * 1000)
        .await?;
    info!(jobs, tokens, events, "Housekeeping done");
    Ok(())
}

impl Actor for Scheduler {
    type Msg = ComponentMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ComponentMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let timer = me.send_interval(args.tick, || ComponentMsg::Tick);
        let mut state = SchedulerState {
            args,
            system: sysinfo::System::new()?,
            disks: sysinfo::Disks::new_with_refreshed_list()?,
            ticks: 0,
            timer,
            scan_budget: LedgerScans::default(),
        };
        sample(
            &state.args,
            &mut state.system,
            &mut state.disks,
            true,
            &mut state.scan_budget,
        )
        .await;
        Ok(state)
    }

    async fn handle(
        &self,
        _me: ActorRef<ComponentMsg>,
        msg: ComponentMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ComponentMsg::Crash => {
                panic!("fault injection: the scheduler component was told to crash")
            }
            ComponentMsg::Exited(reason) => return Err(reason.into()),
            ComponentMsg::Tick => {
                state.ticks += 1;
                if state.ticks.is_multiple_of(5) {
                    let ledger = state.ticks.is_multiple_of(15);
                    sample(
                        &state.args,
                        &mut state.system,
                        &mut state.disks,
                        ledger,
                        &mut state.scan_budget,
                    )
                    .await;
                }
                let ctx = &state.args.ctx;
                if let Err(e) = start_due(ctx).await {
                    warn!(error = %e, "Starting scheduled campaigns failed; retrying next tick");
                }
                if state.ticks.is_multiple_of(10)
                    && let Err(e) = recover(ctx, state.args.stall_after).await
                {
                    warn!(error = %e, "Recovering stalled recipients failed; retrying later");
                }
                if state.ticks.is_multiple_of(3600)
                    && let Err(e) = housekeeping(ctx).await
                {
                    warn!(error = %e, "Housekeeping failed; retrying later");
                }
                if state.ticks.is_multiple_of(30)
                    && let Some(schedule) = &state.args.backups
                {
                    maybe_backup(schedule, ctx);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ComponentMsg>,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{SCAN_SHARE_INVERSE, ScanBudget};
    use std::time::{Duration, Instant};

    #[test]
    fn a_scan_waits_twenty_times_as_long_as_the_last_one_took() {
        let mut budget = ScanBudget::default();
        let t0 = Instant::now();
        assert!(budget.allows(t0));
        let took = Duration::from_millis(300);
        budget.spent(t0, t0 + took);
        let pause = took * SCAN_SHARE_INVERSE;
        assert!(!budget.allows(t0 + took));
        assert!(!budget.allows(t0 + took + pause - Duration::from_millis(1)));
        assert!(budget.allows(t0 + took + pause));
    }

    #[test]
    fn quick_scans_are_not_held_back() {
        let mut budget = ScanBudget::default();
        let t0 = Instant::now();
        budget.spent(t0, t0 + Duration::from_micros(200));
        assert!(budget.allows(t0 + Duration::from_secs(5)));
    }
}
