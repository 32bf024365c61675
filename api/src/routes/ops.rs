//! Operational routes: `/health` (cheap liveness plus the supervision tree's state),
//! `/health/ready` (dependencies with latency), `/metrics` (Prometheus text),
//! `/admin/stats`, `/admin/cache/stats`, `/admin/cache/clear`, the backups, and the
//! fault-injection route used by drills and tests (absent unless enabled, never in
//! production).

use std::collections::BTreeMap;
use std::time::Instant;

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::{Deserialize, Serialize};

use crate::auth::principal;
use crate::openapi::{Accepted, Created};
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::backup::Manifest;
use mailing_jobs::health::{ComponentHealth, ComponentStatus};
use mailing_jobs::render::CacheStats;

/// Every supervised component's state, by name.
type Components = BTreeMap<String, ComponentHealth>;

/// What `/health` answers.
#[derive(Debug, Serialize, ToSchema)]
struct HealthReport {
    /// `ok` (every component runs), `degraded` (one is being restarted) or `failed`
    /// (one exceeded its restart limit and was given up).
    status: String,
    /// Every supervised component, by name.
    components: Components,
}

/// How one dependency answered a readiness check.
#[derive(Debug, Serialize, ToSchema)]
struct DependencyCheck {
    /// `up` or `down`.
    status: String,
    /// How long the check took, in milliseconds.
    latency_ms: f64,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl DependencyCheck {
    fn of(result: Result<(), String>, latency_ms: f64) -> Self {
        match result {
            Ok(()) => DependencyCheck {
                status: "up".into(),
                latency_ms,
                error: None,
            },
            Err(e) => DependencyCheck {
                status: "down".into(),
                latency_ms,
                error: Some(e),
            },
        }
    }
}

/// Jobs waiting (due or scheduled) in each queue.
#[derive(Debug, Serialize, ToSchema)]
struct QueueDepth {
    /// Campaigns to plan.
    plan: u64,
    /// Batches of messages to send.
    send: u64,
}

impl QueueDepth {
    fn of(depth: Option<(u64, u64)>) -> Option<Self> {
        depth.map(|(plan, send)| QueueDepth { plan, send })
    }
}

/// The job queue, as `/health/ready` sees it.
#[derive(Debug, Serialize, ToSchema)]
struct QueueReadiness {
    /// `sqlite` or `redis`.
    backend: String,
    /// Whether it answers.
    check: DependencyCheck,
    /// Jobs waiting; null when the queue could not be asked.
    depth: Option<QueueDepth>,
}

/// What `/health/ready` answers.
#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// `ready`, or `not_ready` when the database or the queue is down.
    status: String,
    /// The database.
    database: DependencyCheck,
    /// The job queue.
    queue: QueueReadiness,
    /// Every supervised component, by name.
    components: Components,
}

/// The job queue, as `/admin/stats` shows it.
#[derive(Debug, Serialize, ToSchema)]
struct QueueStats {
    /// `sqlite` or `redis`.
    backend: String,
    /// Jobs waiting; null when the queue could not be asked.
    depth: Option<QueueDepth>,
}

/// What `/admin/stats` answers.
#[derive(Debug, Serialize, ToSchema)]
struct AdminStats {
    /// Workspace-wide counts: `subscribers`, `lists`, `campaigns`, `deliveries`, and
    /// `sent` (deliveries sent).
    totals: serde_json::Value,
    /// The job queue.
    queue: QueueStats,
    /// The template cache.
    template_cache: CacheStats,
    /// Every supervised component, by name.
    components: Components,
}

/// What `/admin/cache/clear` answers.
#[derive(Debug, Serialize, ToSchema)]
struct CacheCleared {
    /// How many compiled templates were dropped.
    cleared: u64,
}

/// What `/admin/backup/list` answers.
#[derive(Debug, Serialize, ToSchema)]
struct BackupList {
    /// The backups, newest first.
    items: Vec<Manifest>,
}

/// A backup to restore.
#[derive(Deserialize, ToSchema)]
struct BackupRestoreRequest {
    /// The backup's name, as `/admin/backup/list` shows it (the body is at most 4 KiB).
    name: String,
}

/// What `/admin/backup/restore` answers.
#[derive(Debug, Serialize, ToSchema)]
struct RestoreStarted {
    /// The backup being restored.
    restoring: String,
    /// What happens next.
    detail: String,
}

/// What `/admin/debug/crash/{component}` answers.
#[derive(Debug, Serialize, ToSchema)]
struct CrashInjected {
    /// The component that was made to fail.
    crashed: String,
}

/// `GET /health`: cheap liveness. 200 with `status: ok` when every supervised
/// component runs, `degraded` (still 200) while one is being restarted, and 503
/// `failed` when a component exceeded its restart limit and was given up.
#[endpoint(
    tags("operations"),
    responses((status_code = 503, description = "A component failed too often and was given up", body = HealthReport))
)]
pub async fn health(depot: &mut Depot, res: &mut Response) -> ApiResult<Json<HealthReport>> {
    let state = from_depot(depot)?;
    let components = state.health.snapshot();
    let failed = components
        .values()
        .any(|c| c.status == ComponentStatus::Failed);
    let status = if failed {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
        "failed"
    } else if state.health.all_running() {
        "ok"
    } else {
        "degraded"
    };
    Ok(Json(HealthReport {
        status: status.into(),
        components,
    }))
}

/// `GET /health/ready`: checks the database and the queue; 503 when either fails.
#[endpoint(
    tags("operations"),
    responses((status_code = 503, description = "The database or the queue is down", body = Readiness))
)]
pub async fn ready(depot: &mut Depot, res: &mut Response) -> ApiResult<Json<Readiness>> {
    let state = from_depot(depot)?;
    let started = Instant::now();
    let db = state.store.ping().await;
    let db_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let queue = state.queue.ping().await;
    let queue_ms = started.elapsed().as_secs_f64() * 1000.0;
    let depth = state.queue.depth().await.ok();
    let ok = db.is_ok() && queue.is_ok();
    let body = Readiness {
        status: if ok { "ready" } else { "not_ready" }.into(),
        database: DependencyCheck::of(db.map_err(|e| e.to_string()), db_ms),
        queue: QueueReadiness {
            backend: state.queue.backend().into(),
            check: DependencyCheck::of(queue.map_err(|e| e.to_string()), queue_ms),
            depth: QueueDepth::of(depth),
        },
        components: state.health.snapshot(),
    };
    if !ok {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(body))
}

/// `GET /admin/stats`: counts, the queue, the template cache and the components
/// (admin).
#[endpoint(tags("operations"))]
pub async fn stats(depot: &mut Depot) -> ApiResult<Json<AdminStats>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let totals = state.store.totals().await?;
    let depth = state.queue.depth().await.ok();
    Ok(Json(AdminStats {
        totals,
        queue: QueueStats {
            backend: state.queue.backend().into(),
            depth: QueueDepth::of(depth),
        },
        template_cache: state.renderer.stats(),
        components: state.health.snapshot(),
    }))
}

/// `GET /admin/cache/stats`: the template cache's counters (admin).
#[endpoint(tags("operations"))]
pub async fn cache_stats(depot: &mut Depot) -> ApiResult<Json<CacheStats>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    Ok(Json(state.renderer.stats()))
}

/// `POST /admin/cache/clear`: drops every compiled template, and the API's remembered
/// token standings and campaign pages (admin).
#[endpoint(tags("operations"))]
pub async fn cache_clear(depot: &mut Depot) -> ApiResult<Json<CacheCleared>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let cleared = state.renderer.clear();
    state.cache.clear();
    state
        .store
        .audit(
            &who.username,
            "cache.clear",
            None,
            &serde_json::json!({"cleared": cleared}),
        )
        .await?;
    Ok(Json(CacheCleared { cleared }))
}

/// `GET /admin/backup/list`: the backups, newest first, with their manifests (admin).
#[endpoint(tags("backups"))]
pub async fn backup_list(depot: &mut Depot) -> ApiResult<Json<BackupList>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let list = mailing_jobs::backup::list(&state.backup.dir)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(BackupList { items: list }))
}

/// `POST /admin/backup/create`: takes and verifies a backup now; 201 with its manifest
/// (admin). 503 when a tool the backup needs (`pg_dump`) is missing.
#[endpoint(tags("backups"))]
pub async fn backup_create(depot: &mut Depot) -> ApiResult<Created<Manifest>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let manifest = mailing_jobs::backup::create(&state.store, &state.backup)
        .await
        .map_err(|e| match e {
            mailing_jobs::backup::BackupError::MissingTool(_) => {
                ApiError::Unavailable(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        })?;
    state
        .store
        .audit(
            &who.username,
            "backup.create",
            Some(&manifest.name),
            &serde_json::json!({"size_bytes": manifest.size_bytes}),
        )
        .await?;
    Ok(Created(manifest))
}

/// `POST /admin/backup/restore` with `{"name"}`: verifies the backup, records the
/// request and restarts the process, which stops taking work, restores the backup
/// (keeping the current database as a rollback point, put back on any failure) and
/// starts again. Other processes sharing the database should be stopped first (admin).
/// 404 for an unknown backup; 422 for one that fails verification.
#[endpoint(tags("backups"), request_body = BackupRestoreRequest)]
pub async fn backup_restore(
    req: &mut Request,
    depot: &mut Depot,
) -> ApiResult<Accepted<RestoreStarted>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let body: BackupRestoreRequest = super::json_body(req, 4096).await?;
    let manifest = mailing_jobs::backup::request_restore(&state.backup, &body.name)
        .await
        .map_err(|e| match e {
            mailing_jobs::backup::BackupError::NotFound(_) => ApiError::NotFound(e.to_string()),
            mailing_jobs::backup::BackupError::Verification { .. } => {
                ApiError::field("name", e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        })?;
    state
        .store
        .audit(
            &who.username,
            "backup.restore",
            Some(&manifest.name),
            &serde_json::json!({}),
        )
        .await?;
    state.restart.notify_one();
    Ok(Accepted(RestoreStarted {
        restoring: manifest.name,
        detail:
            "the server is restarting to restore this backup; /health answers again when it is done"
                .into(),
    }))
}

/// `POST /admin/debug/crash/{component}`: makes a supervised component fail, to prove
/// that its supervisor restarts it. Only routed when `FAULT_INJECTION=true` (admin); 404
/// for an unknown component.
#[endpoint(
    tags("operations"),
    parameters(("component" = String, Path, description = "A supervised component, as `/health` names it"))
)]
pub async fn crash(req: &mut Request, depot: &mut Depot) -> ApiResult<Accepted<CrashInjected>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let name = req.param::<String>("component").unwrap_or_default();
    let injector = state
        .fault_injector
        .clone()
        .ok_or_else(|| ApiError::NotFound("fault injection is disabled".into()))?;
    if !injector(&name) {
        let known: Vec<String> = state.health.snapshot().into_keys().collect();
        return Err(ApiError::NotFound(format!(
            "no component named '{name}'; known: {}",
            known.join(", ")
        )));
    }
    Ok(Accepted(CrashInjected { crashed: name }))
}

/// `GET /metrics`: every instrument of the global meter, in Prometheus text format.
/// Only routed when `METRICS_ENABLED=true`.
#[endpoint(
    tags("operations"),
    responses((status_code = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)),
    status_codes(200, 404, 500)
)]
pub async fn metrics(depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let registry = state
        .metrics
        .clone()
        .ok_or_else(|| ApiError::NotFound("metrics are disabled".into()))?;
    write_metrics(&registry, res)
}

/// Writes `registry` in the Prometheus text format.
pub fn write_metrics(registry: &prometheus::Registry, res: &mut Response) -> ApiResult<()> {
    let mut out = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut out)
        .map_err(|e| ApiError::Internal(format!("encoding metrics failed: {e}")))?;
    res.headers_mut().insert(
        salvo::http::header::CONTENT_TYPE,
        salvo::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.render(out);
    Ok(())
}

/// The `PROMETHEUS_PORT` listener's one route: `GET /metrics` of `registry`, in any
/// process (workers too), with no state, no token and nothing else routed.
#[derive(Debug, Clone)]
pub struct MetricsOnly(pub prometheus::Registry);

#[async_trait]
impl Handler for MetricsOnly {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        if let Err(e) = write_metrics(&self.0, res) {
            e.write(req, depot, res).await;
        }
    }
}
