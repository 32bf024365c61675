//! The job queue: apalis on SQLite (embedded mode, a `queue.sqlite3` file beside the
//! store) or on Redis (a fleet). Producers use [`Queue`]; workers are built per stage by
//! [`workers`]. The backend-specific choices are deliberate (see PITFALLS in the design
//! notes and ARCHITECTURE.md):
//!
//! * every queue is named explicitly (`{QUEUE_NAMESPACE}:plan`, `…:send`), never by type name;
//! * workers poll every `poll_interval` (a job pushed to an idle queue starts within it);
//! * a killed worker's jobs are re-enqueued after `heartbeat × missed_heartbeats`;
//! * retries with backoff are scheduled by the stages themselves (`push_*_after`); the
//!   backends' own retry (immediate on SQLite) is only the last resort.

pub mod probe;
pub mod workers;

use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteStorage};

use crate::pipeline::{PlanCampaign, SendBatch, TxSend};

/// The suffix of the plan stage's queue name (`{namespace}:plan`).
pub const PLAN_QUEUE: &str = "plan";
/// The suffix of the send stage's queue name (`{namespace}:send`).
pub const SEND_QUEUE: &str = "send";
/// The suffix of the transactional stage's queue name (`{namespace}:tx`).
pub const TX_QUEUE: &str = "tx";

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The SQLite queue database failed.
    #[error("SQLite queue: {0}")]
    Sqlite(#[from] apalis_sqlite::SqlxError),
    /// Setting up the SQLite queue schema failed.
    #[error("SQLite queue setup: {0}")]
    SqliteSetup(#[from] apalis_sqlite::Error),
    /// Redis failed or is unreachable.
    #[error("Redis queue: {0}")]
    Redis(#[from] redis::RedisError),
    /// Pushing a job failed.
    #[error("enqueueing a job failed: {0}")]
    Push(String),
    /// The queue file's directory could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// Directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Queue timing, the same for both backends.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How often an idle worker looks for jobs.
    pub poll_interval: Duration,
    /// How often a worker proves it is alive.
    pub heartbeat: Duration,
    /// Heartbeats a worker may miss before its jobs are given to others.
    pub missed_heartbeats: u32,
    /// Jobs fetched per poll.
    pub fetch_batch: usize,
    /// Prefix of the queue names (`QUEUE_NAMESPACE`): processes sharing a Redis or a
    /// queue file must agree on it; separate deployments on one Redis must not.
    pub namespace: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            poll_interval: Duration::from_millis(200),
            heartbeat: Duration::from_secs(2),
            missed_heartbeats: 3,
            fetch_batch: 10,
            namespace: "mailing".into(),
        }
    }
}

impl QueueConfig {
    /// The full queue name of a stage.
    pub fn queue_name(&self, stage: &str) -> String {
        format!("{}:{stage}", self.namespace)
    }

    /// How long after a worker dies its jobs run elsewhere.
    pub fn orphan_recovery(&self) -> Duration {
        self.heartbeat * self.missed_heartbeats
    }
}

/// The producer side of the queue. Cheap to clone.
#[derive(Clone)]
pub enum Queue {
    /// apalis-sqlite.
    Sqlite {
        /// Plan jobs.
        plan: SqliteStorage<PlanCampaign>,
        /// Send jobs.
        send: SqliteStorage<SendBatch>,
        /// Transactional jobs.
        tx: SqliteStorage<TxSend>,
        /// The queue database.
        pool: SqlitePool,
        /// Timing.
        config: QueueConfig,
    },
    /// apalis-redis.
    Redis {
        /// Plan jobs.
        plan: RedisStorage<PlanCampaign>,
        /// Send jobs.
        send: RedisStorage<SendBatch>,
        /// Transactional jobs.
        tx: RedisStorage<TxSend>,
        /// A connection for depth queries and pings.
        conn: ConnectionManager,
        /// Timing.
        config: QueueConfig,
    },
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Queue::Sqlite { .. } => "Queue::Sqlite",
            Queue::Redis { .. } => "Queue::Redis",
        })
    }
}

fn sqlite_config(stage: &str, config: &QueueConfig) -> apalis_sqlite::Config {
    apalis_sqlite::Config::default()
        .queue(config.queue_name(stage))
        .batch_size(config.fetch_batch.max(1))
        .heartbeat_interval(config.heartbeat)
        .missed_heartbeats(config.missed_heartbeats as usize)
}

/// Connections each process keeps to the SQLite queue file.
const QUEUE_SQLITE_CONNECTIONS: u32 = 8;

/// The settings of every connection to the SQLite queue file, the store's durability:
/// WAL with `synchronous = NORMAL`. A commit survives the process's death; a power loss
/// may roll back the last commits, never corrupt the file, and the scheduler enqueues
/// again a batch whose job went (`Store::stalled_batches`). Left to their defaults, the
/// queue's connections synced the WAL at every commit (`FULL`: 129 `fsync`s in 5 s of a
/// 1,000,000-recipient `mailing bench`, under `strace`), except the one apalis's setup
/// had set to `OFF`.
fn sqlite_queue_options(path: &std::path::Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(10))
        .pragma("journal_mode", "WAL")
        .pragma("synchronous", "NORMAL")
        // The WAL file is cut back to this size after a checkpoint (apalis's choice,
        // which its setup sets on one connection only).
        .pragma("journal_size_limit", "67108864")
        // The queue's tables stay small (jobs, not recipients): a small page cache
        // per connection is plenty.
        .pragma("cache_size", "-256")
}

fn redis_config(stage: &str, config: &QueueConfig) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(config.queue_name(stage))
        .batch_size(config.fetch_batch.max(1))
        .heartbeat_interval(config.heartbeat)
        .missed_heartbeats(config.missed_heartbeats as usize)
}

impl Queue {
    /// Opens (creating when missing) the SQLite queue database at `path`.
    pub async fn sqlite(path: &std::path::Path, config: QueueConfig) -> Result<Self, QueueError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| QueueError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = sqlite_queue_options(path);
        // apalis's setup sets its own per-connection pragmas (`synchronous = OFF`, a
        // 64,000-page cache) on whichever connection runs it. Run it on a connection
        // of its own, closed afterwards, so that every connection that serves the queue
        // has the settings above and none writes without syncing.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let migrated = SqliteStorage::setup(&setup).await;
        setup.close().await;
        migrated?;
        let pool = crate::store::ping_when_idle(SqlitePoolOptions::new())
            .max_connections(QUEUE_SQLITE_CONNECTIONS)
            .connect_with(options)
            .await?;
        Ok(Queue::Sqlite {
            plan: SqliteStorage::new(&pool).with_config(sqlite_config(PLAN_QUEUE, &config)),
            send: SqliteStorage::new(&pool).with_config(sqlite_config(SEND_QUEUE, &config)),
            tx: SqliteStorage::new(&pool).with_config(sqlite_config(TX_QUEUE, &config)),
            pool,
            config,
        })
    }

    /// Connects to Redis, with response and connection timeouts long enough that one
    /// slow answer under load does not stop a worker.
    pub async fn redis(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        use redis::IntoConnectionInfo as _;
        // Nagle off: the connection is multiplexed, so a command written while another is
        // in flight would otherwise wait for the server's ACK of the first.
        let info = url
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(6);
        let conn = client.get_connection_manager_with_config(manager).await?;
        Ok(Queue::Redis {
            plan: RedisStorage::new(conn.clone()).with_config(redis_config(PLAN_QUEUE, &config)),
            send: RedisStorage::new(conn.clone()).with_config(redis_config(SEND_QUEUE, &config)),
            tx: RedisStorage::new(conn.clone()).with_config(redis_config(TX_QUEUE, &config)),
            conn,
            config,
        })
    }

    /// The backend's name, for health and logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Queue::Sqlite { .. } => "sqlite",
            Queue::Redis { .. } => "redis",
        }
    }

    /// The Redis connection, when the queue is on Redis (shared rate limits use it).
    pub fn redis_connection(&self) -> Option<ConnectionManager> {
        match self {
            Queue::Redis { conn, .. } => Some(conn.clone()),
            Queue::Sqlite { .. } => None,
        }
    }

    /// The timing settings.
    pub fn config(&self) -> &QueueConfig {
        match self {
            Queue::Sqlite { config, .. } | Queue::Redis { config, .. } => config,
        }
    }

    /// Enqueues a plan job.
    pub async fn push_plan(&self, job: PlanCampaign) -> Result<(), QueueError> {
        self.push_plan_after(job, Duration::ZERO).await
    }

    /// Enqueues a plan job to run after `delay`.
    pub async fn push_plan_after(
        &self,
        job: PlanCampaign,
        delay: Duration,
    ) -> Result<(), QueueError> {
        crate::telemetry::JobEnqueued { stage: "plan" }.emit();
        let task = TaskBuilder::new(job).run_after(delay).build();
        match self {
            Queue::Sqlite { plan, .. } => plan.clone().push_task(task).await.map_err(push_error),
            Queue::Redis { plan, .. } => plan.clone().push_task(task).await.map_err(push_error),
        }
    }

    /// Enqueues a send job.
    pub async fn push_batch(&self, job: SendBatch) -> Result<(), QueueError> {
        self.push_batch_after(job, Duration::ZERO).await
    }

    /// Enqueues a send job to run after `delay` (a retry with backoff).
    pub async fn push_batch_after(
        &self,
        job: SendBatch,
        delay: Duration,
    ) -> Result<(), QueueError> {
        crate::telemetry::JobEnqueued { stage: "send" }.emit();
        let task = TaskBuilder::new(job).run_after(delay).build();
        match self {
            Queue::Sqlite { send, .. } => send.clone().push_task(task).await.map_err(push_error),
            Queue::Redis { send, .. } => send.clone().push_task(task).await.map_err(push_error),
        }
    }

    /// Enqueues a transactional job to run after `delay`.
    pub async fn push_tx_after(&self, job: TxSend, delay: Duration) -> Result<(), QueueError> {
        crate::telemetry::JobEnqueued { stage: "tx" }.emit();
        let task = TaskBuilder::new(job).run_after(delay).build();
        match self {
            Queue::Sqlite { tx, .. } => tx.clone().push_task(task).await.map_err(push_error),
            Queue::Redis { tx, .. } => tx.clone().push_task(task).await.map_err(push_error),
        }
    }

    /// Age in seconds of the oldest due job that no worker has taken yet, per stage
    /// (`plan`, `send`, `tx`). SQLite: exact. Redis: among due jobs still in the scheduled
    /// set (jobs already promoted to the active list carry no time).
    pub async fn oldest_due_age(&self) -> Result<Vec<(&'static str, f64)>, QueueError> {
        let now = chrono::Utc::now().timestamp();
        let mut out = Vec::new();
        match self {
            Queue::Sqlite { pool, config, .. } => {
                for stage in [PLAN_QUEUE, SEND_QUEUE, TX_QUEUE] {
                    let oldest: Option<i64> = sqlx::query_scalar(
                        "SELECT MIN(run_at) FROM Jobs WHERE job_type = ?1 AND status = 'Pending' AND run_at <= ?2",
                    )
                    .bind(config.queue_name(stage))
                    .bind(now)
                    .fetch_one(pool)
                    .await?;
                    out.push((stage, oldest.map_or(0.0, |t| (now - t).max(0) as f64)));
                }
            }
            Queue::Redis {
                conn,
                plan,
                send,
                tx,
                ..
            } => {
                let mut conn = conn.clone();
                for (stage, key) in [
                    (PLAN_QUEUE, plan.get_config().scheduled_jobs_set()),
                    (SEND_QUEUE, send.get_config().scheduled_jobs_set()),
                    (TX_QUEUE, tx.get_config().scheduled_jobs_set()),
                ] {
                    let first: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(0)
                        .arg(now)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(1)
                        .query_async(&mut conn)
                        .await?;
                    out.push((
                        stage,
                        first
                            .first()
                            .map_or(0.0, |(_, t)| (now as f64 - t).max(0.0)),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Jobs waiting (due or scheduled) per queue: `(plan, send)`.
    pub async fn depth(&self) -> Result<(u64, u64), QueueError> {
        match self {
            Queue::Sqlite { pool, config, .. } => {
                let count = |queue: String| {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND (status IN ('Pending', 'Queued', 'Running') \
                         OR (status = 'Failed' AND attempts < max_attempts))",
                    )
                    .bind(queue)
                    .fetch_one(pool)
                };
                let plan = count(config.queue_name(PLAN_QUEUE)).await? as u64;
                let send = count(config.queue_name(SEND_QUEUE)).await? as u64;
                Ok((plan, send))
            }
            Queue::Redis {
                conn, plan, send, ..
            } => {
                let mut conn = conn.clone();
                let (p, s) = (plan.get_config(), send.get_config());
                let (pa, ps, sa, ss): (u64, u64, u64, u64) = redis::pipe()
                    .cmd("LLEN")
                    .arg(p.active_jobs_list())
                    .cmd("ZCARD")
                    .arg(p.scheduled_jobs_set())
                    .cmd("LLEN")
                    .arg(s.active_jobs_list())
                    .cmd("ZCARD")
                    .arg(s.scheduled_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                Ok((pa + ps, sa + ss))
            }
        }
    }

    /// A round trip to the queue backend.
    pub async fn ping(&self) -> Result<(), QueueError> {
        match self {
            Queue::Sqlite { pool, .. } => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Queue::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            }
        }
        Ok(())
    }

    /// Deletes finished jobs older than `age` so the queue does not grow without bound.
    /// Returns how many went. SQLite only for now: apalis-redis's done set is not
    /// trimmed yet (see the pipeline issue).
    pub async fn vacuum(&self, age: Duration) -> Result<u64, QueueError> {
        match self {
            Queue::Sqlite { pool, .. } => {
                let cutoff = chrono::Utc::now().timestamp() - age.as_secs() as i64;
                Ok(sqlx::query(
                    "DELETE FROM Jobs WHERE status IN ('Done', 'Killed') AND done_at IS NOT NULL AND done_at < ?1",
                )
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected())
            }
            Queue::Redis { .. } => Ok(0),
        }
    }
}

/// The sorted set in which apalis-redis lists the queue of every worker it registers,
/// shared by all namespaces on one Redis (apalis-redis 1.0, `register_worker.lua`).
pub const APALIS_REDIS_QUEUE_REGISTRY: &str = "core:apalis:queues:list";

/// Removes everything a namespace (`QUEUE_NAMESPACE`) holds in Redis: every key under
/// `{namespace}:` (the queues' jobs, rate limits, login counts) and its queues in
/// apalis-redis's shared registry. For scratch namespaces (the bench's and the tests'),
/// once their processes have stopped; a deployment's namespace holds its jobs.
pub async fn remove_redis_namespace(url: &str, namespace: &str) -> Result<(), QueueError> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let prefix = format!("{namespace}:");
    let mut cursor: u64 = 0;
    loop {
        let (next, mut keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        // MATCH is a glob: keep only what truly starts with the namespace.
        keys.retain(|k| k.starts_with(&prefix));
        if !keys.is_empty() {
            let _: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(APALIS_REDIS_QUEUE_REGISTRY)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    let ours: Vec<&String> = members.iter().filter(|m| m.starts_with(&prefix)).collect();
    if !ours.is_empty() {
        let _: u64 = redis::cmd("ZREM")
            .arg(APALIS_REDIS_QUEUE_REGISTRY)
            .arg(&ours)
            .query_async(&mut conn)
            .await?;
    }
    Ok(())
}

fn push_error(e: impl std::fmt::Display) -> QueueError {
    QueueError::Push(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection that serves the SQLite queue syncs its WAL as the store does;
    /// none is left with the pragmas apalis's setup sets (it once ran on one of them).
    #[tokio::test]
    async fn every_sqlite_queue_connection_has_the_queue_s_settings() {
        let dir = std::env::temp_dir().join(format!(
            "mailing-queue-pragmas-{:016x}",
            rand::random::<u64>()
        ));
        let queue = Queue::sqlite(&dir.join("queue.sqlite3"), QueueConfig::default())
            .await
            .expect("the queue opens");
        let Queue::Sqlite { pool, .. } = &queue else {
            unreachable!("a SQLite queue")
        };
        // Hold every connection at once, so each one the pool can hand out is read.
        let mut held = Vec::new();
        for _ in 0..QUEUE_SQLITE_CONNECTIONS {
            held.push(pool.acquire().await.expect("a queue connection"));
        }
        for conn in &mut held {
            let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **conn)
                .await
                .expect("journal_mode reads");
            assert_eq!(journal, "wal");
            for (pragma, expected) in [
                ("synchronous", 1),
                ("journal_size_limit", 67_108_864),
                ("cache_size", -256),
            ] {
                let value: i64 =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {pragma}")))
                        .fetch_one(&mut **conn)
                        .await
                        .expect("the pragma reads");
                assert_eq!(value, expected, "PRAGMA {pragma}");
            }
        }
        drop(held);
        // The setup ran: the jobs table exists.
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM Jobs")
            .fetch_one(pool)
            .await
            .expect("the queue's schema is there");
        assert_eq!(jobs, 0);
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
