//! The state every handler shares, injected once into the depot as `Arc<AppState>`.

use std::sync::Arc;

use mailing_jobs::Store;
use mailing_jobs::health::HealthRegistry;
use mailing_jobs::provider::Providers;
use mailing_jobs::queue::Queue;
use mailing_jobs::render::Renderer;
use mailing_jobs::unsubscribe::UnsubscribeSigner;
use salvo::Depot;

use crate::auth::{AuthConfig, LoginThrottle};
use crate::problem::ApiError;

/// Asks the supervision tree to crash a named component (fault injection for tests and
/// drills). Returns false when no such component exists.
pub type FaultInjector = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The job queue.
    pub queue: Queue,
    /// Template parsing and cache.
    pub renderer: Renderer,
    /// Configured providers (names are validated against it).
    pub providers: Providers,
    /// Session settings.
    pub auth: AuthConfig,
    /// Failed-login counters.
    pub throttle: Arc<LoginThrottle>,
    /// Token standings and campaign pages kept for `API_CACHE_TTL_MS`.
    pub cache: Arc<crate::cache::ApiCache>,
    /// What the supervision tree reports.
    pub health: HealthRegistry,
    /// Unsubscribe tokens.
    pub signer: UnsubscribeSigner,
    /// Present only when fault injection is enabled (never in production).
    pub fault_injector: Option<FaultInjector>,
    /// HSTS, the plain-HTTP redirect and CORS.
    pub transport: crate::transport::TransportPolicy,
    /// The registry `/metrics` encodes (None: `/metrics` is not served).
    pub metrics: Option<prometheus::Registry>,
    /// Backup destinations (for `/admin/backup/*`).
    pub backup: mailing_jobs::backup::BackupConfig,
    /// Provider webhook secrets.
    pub webhooks: crate::routes::webhooks::WebhookSecrets,
    /// Request rate limits per address and per caller.
    pub limits: crate::limits::ApiLimits,
    /// The plugin host, to validate uploads.
    pub plugins: mailing_plugins::PluginHost,
    /// Asks the process to restart (to restore a backup before reopening the database).
    pub restart: std::sync::Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The state from the depot.
pub fn from_depot(depot: &Depot) -> Result<Arc<AppState>, ApiError> {
    depot
        .get_typed::<Arc<AppState>>()
        .cloned()
        .map_err(|_| ApiError::Internal("application state missing from the depot".into()))
}
