//! Operational routes: `/health` (cheap liveness plus the supervision tree's state),
//! `/health/ready` (dependencies with latency), `/metrics` (Prometheus text),
//! `/admin/stats`, `/admin/cache/stats`, `/admin/cache/clear`, and the fault-injection
//! route used by drills and tests (absent unless enabled, never in production).

use std::time::Instant;

use salvo::prelude::*;

use crate::auth::principal;
use crate::problem::{ApiError, ApiResult};
use crate::state::from_depot;
use mailing_jobs::Role;
use mailing_jobs::health::ComponentStatus;

/// `GET /health`: cheap liveness. 200 with `status: ok` when every supervised
/// component runs, `degraded` (still 200) while one is being restarted, and 503
/// `failed` when a component exceeded its restart limit and was given up.
#[handler]
pub async fn health(depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
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
    res.render(Json(
        serde_json::json!({ "status": status, "components": components }),
    ));
    Ok(())
}

/// `GET /health/ready`: checks the database and the queue; 503 when either fails.
#[handler]
pub async fn ready(depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let started = Instant::now();
    let db = state.store.ping().await;
    let db_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let queue = state.queue.ping().await;
    let queue_ms = started.elapsed().as_secs_f64() * 1000.0;
    let depth = state.queue.depth().await.ok();
    let ok = db.is_ok() && queue.is_ok();
    let check = |r: &Result<(), String>, ms: f64| match r {
        Ok(()) => serde_json::json!({ "status": "up", "latency_ms": ms }),
        Err(e) => serde_json::json!({ "status": "down", "latency_ms": ms, "error": e }),
    };
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "database": check(&db.map_err(|e| e.to_string()), db_ms),
        "queue": {
            "backend": state.queue.backend(),
            "check": check(&queue.map_err(|e| e.to_string()), queue_ms),
            "depth": depth.map(|(plan, send)| serde_json::json!({ "plan": plan, "send": send })),
        },
        "components": state.health.snapshot(),
    });
    if !ok {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
    }
    res.render(Json(body));
    Ok(())
}

/// `GET /admin/stats`.
#[handler]
pub async fn stats(depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let totals = state.store.totals().await?;
    let depth = state.queue.depth().await.ok();
    Ok(Json(serde_json::json!({
        "totals": totals,
        "queue": { "backend": state.queue.backend(), "depth": depth.map(|(p, s)| serde_json::json!({"plan": p, "send": s})) },
        "template_cache": state.renderer.stats(),
        "components": state.health.snapshot(),
    })))
}

/// `GET /admin/cache/stats`.
#[handler]
pub async fn cache_stats(depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    Ok(Json(serde_json::json!(state.renderer.stats())))
}

/// `POST /admin/cache/clear`.
#[handler]
pub async fn cache_clear(depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let cleared = state.renderer.clear();
    state
        .store
        .audit(
            &who.username,
            "cache.clear",
            None,
            &serde_json::json!({"cleared": cleared}),
        )
        .await?;
    Ok(Json(serde_json::json!({ "cleared": cleared })))
}

/// `GET /admin/backup/list`: the backups, newest first, with their manifests.
#[handler]
pub async fn backup_list(depot: &mut Depot) -> ApiResult<Json<serde_json::Value>> {
    let state = from_depot(depot)?;
    principal(depot)?.require(Role::Admin)?;
    let list = mailing_jobs::backup::list(&state.backup.dir)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(serde_json::json!({ "items": list })))
}

/// `POST /admin/backup/create`: takes and verifies a backup now; 201 with its manifest.
#[handler]
pub async fn backup_create(depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
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
    res.status_code(StatusCode::CREATED).render(Json(manifest));
    Ok(())
}

/// `POST /admin/backup/restore` with `{"name"}`: verifies the backup, records the
/// request and restarts the process, which stops taking work, restores the backup
/// (keeping the current database as a rollback point, put back on any failure) and
/// starts again. Other processes sharing the database should be stopped first.
#[handler]
pub async fn backup_restore(
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> ApiResult<()> {
    #[derive(serde::Deserialize)]
    struct Restore {
        name: String,
    }
    let state = from_depot(depot)?;
    let who = principal(depot)?;
    who.require(Role::Admin)?;
    let body: Restore = super::json_body(req, 4096).await?;
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
    res.status_code(StatusCode::ACCEPTED).render(Json(serde_json::json!({
        "restoring": manifest.name,
        "detail": "the server is restarting to restore this backup; /health answers again when it is done",
    })));
    state.restart.notify_one();
    Ok(())
}

/// `POST /admin/debug/crash/{component}`: makes a supervised component fail, to prove
/// that its supervisor restarts it. Only routed when `FAULT_INJECTION=true`.
#[handler]
pub async fn crash(req: &mut Request, depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
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
    res.status_code(StatusCode::ACCEPTED)
        .render(Json(serde_json::json!({ "crashed": name })));
    Ok(())
}

/// `GET /metrics`: every instrument of the global meter, in Prometheus text format.
#[handler]
pub async fn metrics(depot: &mut Depot, res: &mut Response) -> ApiResult<()> {
    let state = from_depot(depot)?;
    let registry = state
        .metrics
        .clone()
        .ok_or_else(|| ApiError::NotFound("metrics are disabled".into()))?;
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
