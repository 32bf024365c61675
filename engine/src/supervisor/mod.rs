//! The supervision tree. A root supervisor owns one child per component: the HTTP
//! server (`http`), one supervisor per pipeline stage (`plan`, `send`) and the
//! `scheduler`. A child that fails (an error or a panic in a handler) is restarted with
//! exponential backoff, at most `max_restarts` times within `restart_window`; past that
//! it is left stopped and `/health` reports it `failed`. Every state change goes to the
//! [`HealthRegistry`] that `/health` reads.
//!
//! Shutdown stops the children in order: HTTP first (no new work), then the scheduler,
//! then the stages, each given `shutdown_timeout` to finish in-flight batches.

pub mod http;
pub mod scheduler;
pub mod stage;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailing_jobs::health::{ComponentStatus, HealthRegistry};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tracing::{error, info, warn};

/// The message every component actor understands, besides its own timers.
#[derive(Debug)]
pub enum ComponentMsg {
    /// Fail on purpose (fault injection): the handler panics.
    Crash,
    /// A periodic tick (the scheduler's clock; stages check their monitor).
    Tick,
    /// The component's background task ended unexpectedly; fail so it is restarted.
    Exited(String),
}

/// Starts one child, linked to the supervisor.
pub type SpawnFn = Arc<
    dyn Fn(
            ActorCell,
        )
            -> Pin<Box<dyn Future<Output = Result<ActorRef<ComponentMsg>, SpawnErr>> + Send>>
        + Send
        + Sync,
>;

/// A child the root supervises.
#[derive(Clone)]
pub struct ChildSpec {
    /// Registered actor name and health key.
    pub name: &'static str,
    /// How to start it.
    pub spawn: SpawnFn,
}

/// Restart policy.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Most restarts within `window` before the child is given up.
    pub max_restarts: u32,
    /// The window restarts are counted in.
    pub window: Duration,
    /// First backoff; doubles per restart within the window.
    pub base_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// How long each child gets to stop at shutdown.
    pub shutdown_timeout: Duration,
}

/// Messages of the root.
#[derive(Debug)]
pub enum RootMsg {
    /// Start (or restart) the named child.
    Start(&'static str),
}

/// Arguments of the root.
pub struct RootArgs {
    /// Children, in start order (stopped in the same order).
    pub children: Vec<ChildSpec>,
    /// Restart policy.
    pub policy: RestartPolicy,
    /// Where states are reported.
    pub health: HealthRegistry,
}

struct ChildState {
    spec: ChildSpec,
    actor: Option<ActorRef<ComponentMsg>>,
    restarts: Vec<Instant>,
}

/// State of the root.
pub struct RootState {
    children: BTreeMap<&'static str, ChildState>,
    order: Vec<&'static str>,
    policy: RestartPolicy,
    health: HealthRegistry,
}

/// The root supervisor.
#[derive(Debug, Clone, Copy)]
pub struct Root;

impl Root {
    async fn start(me: &ActorRef<RootMsg>, state: &mut RootState, name: &'static str) {
        let Some(child) = state.children.get_mut(name) else {
            return;
        };
        match (child.spec.spawn)(me.get_cell()).await {
            Ok(actor) => {
                child.actor = Some(actor);
                state.health.set(name, ComponentStatus::Running, None);
                info!(component = name, "Component started");
            }
            Err(e) => {
                let reason = format!("start failed: {e}");
                Self::failed(me, state, name, reason);
            }
        }
    }

    fn failed(me: &ActorRef<RootMsg>, state: &mut RootState, name: &'static str, reason: String) {
        let policy = state.policy.clone();
        let Some(child) = state.children.get_mut(name) else {
            return;
        };
        child.actor = None;
        let now = Instant::now();
        child
            .restarts
            .retain(|t| now.duration_since(*t) < policy.window);
        if child.restarts.len() as u32 >= policy.max_restarts {
            error!(component = name, error = %reason, max_restarts = policy.max_restarts,
                   "Component failed too often; leaving it stopped");
            state
                .health
                .set(name, ComponentStatus::Failed, Some(reason));
            return;
        }
        let exponent = child.restarts.len().min(16) as u32;
        let delay = policy
            .base_backoff
            .saturating_mul(1 << exponent)
            .min(policy.max_backoff);
        child.restarts.push(now);
        warn!(component = name, error = %reason, delay_ms = delay.as_millis() as u64, "Component failed; restarting");
        state
            .health
            .set(name, ComponentStatus::Restarting, Some(reason));
        state.health.restarted(name);
        me.send_after(delay, move || RootMsg::Start(name));
    }

    fn child_of(state: &RootState, cell: &ActorCell) -> Option<&'static str> {
        state
            .children
            .iter()
            .find(|(_, c)| {
                c.actor
                    .as_ref()
                    .is_some_and(|a| a.get_id() == cell.get_id())
            })
            .map(|(name, _)| *name)
    }
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        me: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let order: Vec<&'static str> = args.children.iter().map(|c| c.name).collect();
        let mut state = RootState {
            children: args
                .children
                .into_iter()
                .map(|spec| {
                    (
                        spec.name,
                        ChildState {
                            spec,
                            actor: None,
                            restarts: Vec::new(),
                        },
                    )
                })
                .collect(),
            order: order.clone(),
            policy: args.policy,
            health: args.health,
        };
        for name in order {
            state.health.set(name, ComponentStatus::Starting, None);
            Self::start(&me, &mut state, name).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        me: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Start(name) => Self::start(&me, state, name).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(name) = Self::child_of(state, &cell) {
                    Self::failed(&me, state, name, err.to_string());
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(name) = Self::child_of(state, &cell) {
                    let reason = reason.unwrap_or_else(|| "stopped".into());
                    Self::failed(
                        &me,
                        state,
                        name,
                        format!("terminated unexpectedly: {reason}"),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        for name in state.order.clone() {
            let Some(child) = state.children.get_mut(name) else {
                continue;
            };
            if let Some(actor) = child.actor.take() {
                info!(component = name, "Stopping component");
                if actor
                    .stop_and_wait(Some("shutdown".into()), Some(state.policy.shutdown_timeout))
                    .await
                    .is_err()
                {
                    warn!(
                        component = name,
                        "Component did not stop in time; killing it"
                    );
                    actor.kill();
                }
            }
            state.health.set(name, ComponentStatus::Stopped, None);
        }
        Ok(())
    }
}

/// Handle of a running tree.
pub struct Tree {
    root: ActorRef<RootMsg>,
    join: tokio::task::JoinHandle<()>,
}

impl Tree {
    /// Starts the root and its children.
    pub async fn start(args: RootArgs) -> Result<Self, SpawnErr> {
        let (root, join) = Actor::spawn(Some("root".into()), Root, args).await?;
        Ok(Tree { root, join })
    }

    /// A function that crashes a named child (for fault injection). Children are
    /// registered under their component name; the root is not a component.
    pub fn crasher(&self) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
        Arc::new(|name: &str| {
            name != "root"
                && ractor::registry::where_is(name)
                    .is_some_and(|cell| cell.send_message(ComponentMsg::Crash).is_ok())
        })
    }

    /// Stops every child in order and waits for the root.
    pub async fn shutdown(self) {
        self.root.stop(Some("shutdown".into()));
        let _ = self.join.await;
    }
}
