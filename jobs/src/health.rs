//! The health registry: every supervised component reports its state here, and the API's
//! `/health` reads it. It holds no logic of its own; supervisors decide what to report.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// The state of one supervised component.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentStatus {
    /// Starting up.
    Starting,
    /// Running normally.
    Running,
    /// Failed and waiting to be restarted.
    Restarting,
    /// Failed too often; left stopped.
    Failed,
    /// Stopped on purpose (shutdown).
    Stopped,
}

/// What `/health` shows of one component.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct ComponentHealth {
    /// Current state.
    pub status: ComponentStatus,
    /// How often its supervisor restarted it since the process started.
    pub restarts: u32,
    /// The last failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the state last changed, epoch ms.
    pub since: i64,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct HealthRegistry {
    inner: Arc<RwLock<BTreeMap<String, ComponentHealth>>>,
}

impl HealthRegistry {
    /// Sets a component's state, keeping its restart count.
    pub fn set(&self, name: &str, status: ComponentStatus, error: Option<String>) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(name.to_owned()).or_insert(ComponentHealth {
            status,
            restarts: 0,
            last_error: None,
            since: crate::now_ms(),
        });
        entry.status = status;
        entry.since = crate::now_ms();
        if error.is_some() {
            entry.last_error = error;
        }
    }

    /// Counts one restart of a component.
    pub fn restarted(&self, name: &str) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(name) {
            entry.restarts += 1;
        }
    }

    /// A copy of every component's state.
    pub fn snapshot(&self) -> BTreeMap<String, ComponentHealth> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether every component is running (or deliberately stopped).
    pub fn all_running(&self) -> bool {
        self.snapshot().values().all(|c| {
            matches!(
                c.status,
                ComponentStatus::Running | ComponentStatus::Stopped
            )
        })
    }
}
