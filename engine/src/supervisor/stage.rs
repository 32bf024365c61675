//! The `plan` and `send` components: each supervises the apalis monitor that runs its
//! stage's workers. The monitor runs on its own task; if it ends while the component
//! is not stopping (every worker gave up), the component fails and is restarted. A
//! restarted component first stops the previous monitor (crash leftovers), so two
//! monitors never run the same stage in one process; worker names carry an incarnation
//! number, because apalis refuses a recently seen name.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use mailing_jobs::pipeline::PipelineContext;
use mailing_jobs::queue::Queue;
use mailing_jobs::queue::workers::{Stage, StageWorkers, stage_monitor};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{Mutex, oneshot};
use tracing::{info, warn};

use super::ComponentMsg;

/// A monitor that is running.
pub struct RunningMonitor {
    stop: oneshot::Sender<()>,
    join: tokio::task::JoinHandle<()>,
    stopping: Arc<AtomicBool>,
}

/// Shared across restarts of the component.
pub type MonitorSlot = Arc<Mutex<Option<RunningMonitor>>>;

/// Arguments of a stage component.
#[derive(Clone)]
pub struct StageArgs {
    /// Which stage.
    pub stage: Stage,
    /// The queue.
    pub queue: Queue,
    /// What jobs need.
    pub ctx: PipelineContext,
    /// Jobs at once.
    pub concurrency: usize,
    /// `{host}-{pid}-{random}`.
    pub instance: String,
    /// Starts of this component so far.
    pub incarnation: Arc<AtomicU32>,
    /// The running monitor.
    pub slot: MonitorSlot,
    /// How long in-flight jobs get at stop.
    pub shutdown_timeout: Duration,
}

/// A stage component.
#[derive(Debug, Clone, Copy)]
pub struct StageSupervisor;

async fn stop_monitor(running: RunningMonitor, timeout: Duration) {
    running.stopping.store(true, Ordering::SeqCst);
    let _ = running.stop.send(());
    let mut join = running.join;
    if tokio::time::timeout(timeout + Duration::from_secs(1), &mut join)
        .await
        .is_err()
    {
        warn!("Stage monitor did not stop in time; aborting it");
        join.abort();
    }
}

impl Actor for StageSupervisor {
    type Msg = ComponentMsg;
    type State = StageArgs;
    type Arguments = StageArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ComponentMsg>,
        args: StageArgs,
    ) -> Result<StageArgs, ActorProcessingErr> {
        let mut slot = args.slot.lock().await;
        if let Some(old) = slot.take() {
            stop_monitor(old, args.shutdown_timeout).await;
        }
        let incarnation = args.incarnation.fetch_add(1, Ordering::SeqCst);
        let monitor = stage_monitor(
            &args.queue,
            args.ctx.clone(),
            StageWorkers {
                stage: args.stage,
                concurrency: args.concurrency,
                instance: format!("{}-{incarnation}", args.instance),
            },
            10,
            args.shutdown_timeout,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        let name = args.stage.as_str();
        let join = tokio::spawn(async move {
            let result = monitor
                .run_with_signal(async move {
                    let _ = stopped.await;
                    Ok(())
                })
                .await;
            if !flag.load(Ordering::SeqCst)
                && let Some(cell) = ractor::registry::where_is(name)
            {
                let reason = match result {
                    Ok(()) => "every queue worker of the stage stopped".to_owned(),
                    Err(e) => format!("the stage's queue monitor failed: {e}"),
                };
                let _ = cell.send_message(ComponentMsg::Exited(reason));
            }
        });
        *slot = Some(RunningMonitor {
            stop,
            join,
            stopping,
        });
        drop(slot);
        info!(
            stage = name,
            concurrency = args.concurrency,
            queue = args.queue.backend(),
            "Stage workers started"
        );
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<ComponentMsg>,
        msg: ComponentMsg,
        args: &mut StageArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ComponentMsg::Crash => panic!(
                "fault injection: the {} component was told to crash",
                args.stage.as_str()
            ),
            ComponentMsg::Exited(reason) => Err(reason.into()),
            ComponentMsg::Tick => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ComponentMsg>,
        args: &mut StageArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(running) = args.slot.lock().await.take() {
            stop_monitor(running, args.shutdown_timeout).await;
            info!(stage = args.stage.as_str(), "Stage workers stopped");
        }
        Ok(())
    }
}
