//! The queue's own cost, measured: empty jobs pushed to and consumed from the same apalis
//! backend as the pipeline (SQLite file or Redis), on a queue of their own
//! (`{namespace}:noop`), with the pipeline's poll interval and fetch batch. `mailing
//! bench` reports the result as the queue's limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use serde::{Deserialize, Serialize};

use super::{Queue, QueueError};

/// The suffix of the probe's queue name (`{namespace}:noop`).
pub const NOOP_QUEUE: &str = "noop";

/// A job that carries nothing and does nothing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NoopJob {
    /// Its number, so payloads are not all identical.
    pub seq: u64,
}

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub struct NoopRoundTrip {
    /// Jobs pushed and consumed.
    pub jobs: u64,
    /// From the first push to the last job done.
    pub elapsed: Duration,
}

impl NoopRoundTrip {
    /// Jobs per second through push and consume.
    pub fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Done {
    count: AtomicU64,
    target: u64,
    finished: tokio::sync::Notify,
}

async fn noop_job(_job: NoopJob, done: Data<Arc<Done>>) -> Result<(), BoxDynError> {
    if done.count.fetch_add(1, Ordering::AcqRel) + 1 >= done.target {
        done.finished.notify_one();
    }
    Ok(())
}

/// Pushes `jobs` empty jobs and consumes them with `concurrency` in flight, on the
/// queue's backend; gives up after `timeout`.
pub async fn noop_round_trip(
    queue: &Queue,
    jobs: u64,
    concurrency: usize,
    timeout: Duration,
) -> Result<NoopRoundTrip, QueueError> {
    let done = Arc::new(Done {
        count: AtomicU64::new(0),
        target: jobs.max(1),
        finished: tokio::sync::Notify::new(),
    });
    let config = queue.config().clone();
    let poll = config.poll_interval;
    let started = Instant::now();
    macro_rules! run_probe {
        ($storage:expr) => {{
            let storage = $storage;
            let mut producer = storage.clone();
            let push = async move {
                for seq in 0..jobs.max(1) {
                    producer
                        .push(NoopJob { seq })
                        .await
                        .map_err(|e| QueueError::Push(e.to_string()))?;
                }
                Ok::<(), QueueError>(())
            };
            let worker = WorkerBuilder::new(format!("noop-probe-{}", std::process::id()))
                .backend(storage.poll_with_interval(poll))
                .data(done.clone())
                .concurrency(concurrency.max(1))
                .parallelize(tokio::spawn)
                .build(noop_job);
            let finished = done.clone();
            let stop = async move {
                finished.finished.notified().await;
                Ok::<(), std::io::Error>(())
            };
            let consume = worker.run_until(stop);
            let all = async { tokio::join!(push, consume) };
            match tokio::time::timeout(timeout, all).await {
                Ok((pushed, _consumed)) => pushed?,
                Err(_) => {
                    return Err(QueueError::Push(format!(
                        "the no-op probe consumed {} of {jobs} jobs in {timeout:?}",
                        done.count.load(Ordering::Acquire)
                    )));
                }
            }
        }};
    }
    match queue {
        Queue::Sqlite { pool, .. } => {
            run_probe!(
                SqliteStorage::<NoopJob>::new(pool)
                    .with_config(super::sqlite_config(NOOP_QUEUE, &config))
            )
        }
        Queue::Redis { conn, .. } => {
            run_probe!(
                RedisStorage::<NoopJob>::new(conn.clone())
                    .with_config(super::redis_config(NOOP_QUEUE, &config))
            )
        }
    }
    Ok(NoopRoundTrip {
        jobs: done.count.load(Ordering::Acquire),
        elapsed: started.elapsed(),
    })
}
