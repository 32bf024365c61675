//! Provider rate limits: GCRA (the generic cell rate algorithm) with a burst of one
//! second's worth, in process or shared by every worker through Redis (one atomic Lua
//! script), plus a provider-wide pause that a throttled answer (HTTP 429, SMTP 421/451)
//! sets from its `Retry-After`, so every worker backs off together.
//!
//! A limiter never drops work: `acquire` waits until the cells fit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// How many cells per second, and the burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Cells (messages or requests) per second; must be > 0.
    pub per_second: f64,
}

impl Rate {
    fn emission_ms(self) -> f64 {
        1000.0 / self.per_second
    }

    fn burst_ms(self) -> f64 {
        // One second's worth of cells may go at once (at least one cell).
        1000.0_f64.max(self.emission_ms())
    }
}

/// Errors of a shared limiter. Callers fall back to waiting briefly and retrying.
#[derive(Debug, thiserror::Error)]
#[error("rate limiter: {0}")]
pub struct LimiterError(#[from] redis::RedisError);

/// GCRA in Redis. KEYS[1] = theoretical arrival time (ms), KEYS[2] = pause key.
/// ARGV: now_ms, emission_ms × cells, burst_ms. Returns the ms to wait (0 = admitted).
const GCRA_SCRIPT: &str = r"
local pause = redis.call('PTTL', KEYS[2])
if pause and pause > 0 then return pause end
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost
local allow_at = new_tat - burst
if allow_at > now then return math.ceil(allow_at - now) end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(burst + cost) + 1000)
return 0
";

/// The in-process limiter's state: the theoretical arrival time and any pause.
#[derive(Debug)]
pub struct LocalState {
    tat: f64,
    paused_until: Option<Instant>,
    epoch: Instant,
}

/// A rate limit for one provider.
#[derive(Clone)]
pub enum RateLimiter {
    /// No limit.
    Unlimited,
    /// In this process only.
    Local {
        /// The rate.
        rate: Rate,
        /// The algorithm's state.
        state: Arc<Mutex<LocalState>>,
    },
    /// Shared by every process on one Redis.
    Redis {
        /// The rate.
        rate: Rate,
        /// A connection.
        conn: redis::aio::ConnectionManager,
        /// `{namespace}:ratelimit:{provider}`.
        key: String,
        /// The script.
        script: Arc<redis::Script>,
    },
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimiter::Unlimited => f.write_str("RateLimiter::Unlimited"),
            RateLimiter::Local { rate, .. } => {
                write!(f, "RateLimiter::Local({}/s)", rate.per_second)
            }
            RateLimiter::Redis { rate, key, .. } => {
                write!(f, "RateLimiter::Redis({}/s, {key})", rate.per_second)
            }
        }
    }
}

impl RateLimiter {
    /// An in-process limiter, or unlimited when `rate` is None.
    pub fn local(rate: Option<Rate>) -> Self {
        match rate {
            None => RateLimiter::Unlimited,
            Some(rate) => RateLimiter::Local {
                rate,
                state: Arc::new(Mutex::new(LocalState {
                    tat: 0.0,
                    paused_until: None,
                    epoch: Instant::now(),
                })),
            },
        }
    }

    /// A limiter shared through Redis under `key`, or unlimited when `rate` is None.
    pub fn redis(rate: Option<Rate>, conn: redis::aio::ConnectionManager, key: String) -> Self {
        match rate {
            None => RateLimiter::Unlimited,
            Some(rate) => RateLimiter::Redis {
                rate,
                conn,
                key,
                script: Arc::new(redis::Script::new(GCRA_SCRIPT)),
            },
        }
    }

    /// How long to wait before `cells` may go; 0 means they were admitted now.
    async fn try_acquire(&self, cells: u32) -> Result<Duration, LimiterError> {
        match self {
            RateLimiter::Unlimited => Ok(Duration::ZERO),
            RateLimiter::Local { rate, state } => {
                let mut s = state.lock().await;
                let now_instant = Instant::now();
                if let Some(until) = s.paused_until {
                    if until > now_instant {
                        return Ok(until - now_instant);
                    }
                    s.paused_until = None;
                }
                let now = now_instant.duration_since(s.epoch).as_secs_f64() * 1000.0;
                let cost = rate.emission_ms() * f64::from(cells);
                let new_tat = s.tat.max(now) + cost;
                let allow_at = new_tat - rate.burst_ms().max(cost);
                if allow_at > now {
                    return Ok(Duration::from_secs_f64((allow_at - now) / 1000.0));
                }
                s.tat = new_tat;
                Ok(Duration::ZERO)
            }
            RateLimiter::Redis {
                rate,
                conn,
                key,
                script,
            } => {
                let mut conn = conn.clone();
                let now = crate::now_ms();
                let cost = rate.emission_ms() * f64::from(cells);
                let wait: i64 = script
                    .key(format!("{key}:tat"))
                    .key(format!("{key}:pause"))
                    .arg(now)
                    .arg(cost)
                    .arg(rate.burst_ms().max(cost))
                    .invoke_async(&mut conn)
                    .await?;
                Ok(Duration::from_millis(wait.max(0) as u64))
            }
        }
    }

    /// Whether this limiter admits everything (and so cannot hold a pause).
    pub fn is_unlimited(&self) -> bool {
        matches!(self, RateLimiter::Unlimited)
    }

    /// Waits until `cells` may go. Returns how long it waited.
    pub async fn acquire(&self, cells: u32) -> Duration {
        let started = Instant::now();
        loop {
            match self.try_acquire(cells).await {
                Ok(d) if d.is_zero() => return started.elapsed(),
                Ok(d) => tokio::time::sleep(d.min(Duration::from_secs(5))).await,
                Err(e) => {
                    tracing::warn!(error = %e, "Rate limiter unavailable; waiting before retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Pauses the provider for everyone sharing this limiter (a throttled answer).
    pub async fn pause(&self, for_: Duration) {
        match self {
            RateLimiter::Unlimited => {}
            RateLimiter::Local { state, .. } => {
                let until = Instant::now() + for_;
                let mut s = state.lock().await;
                s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
            }
            RateLimiter::Redis { conn, key, .. } => {
                let mut conn = conn.clone();
                let ms = for_.as_millis().max(1) as u64;
                let result: Result<(), redis::RedisError> = redis::cmd("SET")
                    .arg(format!("{key}:pause"))
                    .arg(1)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "Cannot record a provider pause in Redis");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_limiter_admits_a_burst_then_spaces_cells() {
        let l = RateLimiter::local(Some(Rate { per_second: 100.0 }));
        for _ in 0..100 {
            assert_eq!(
                l.try_acquire(1).await.unwrap(),
                Duration::ZERO,
                "a second's worth goes at once"
            );
        }
        let wait = l.try_acquire(1).await.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(10),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn pause_holds_every_cell_back() {
        let l = RateLimiter::local(Some(Rate { per_second: 1000.0 }));
        l.pause(Duration::from_secs(3)).await;
        assert!(l.try_acquire(1).await.unwrap() > Duration::from_secs(2));
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        assert_eq!(
            RateLimiter::Unlimited.try_acquire(1000).await.unwrap(),
            Duration::ZERO
        );
    }
}

/// Request limits per caller (an address, a user, an API key): GCRA with a burst of one
/// second's worth, like [`RateLimiter`], but it never waits: [`KeyedLimiter::check`]
/// admits a request or says how long until one would be admitted. In process, or shared
/// by every API replica through Redis (the same script, one key per caller).
#[derive(Clone)]
pub enum KeyedLimiter {
    /// No limit.
    Off,
    /// In this process only.
    Local {
        /// The rate per caller.
        rate: Rate,
        /// Theoretical arrival time (ms since `epoch`) per caller.
        state: Arc<std::sync::Mutex<std::collections::HashMap<String, f64>>>,
        /// The time origin.
        epoch: Instant,
    },
    /// Shared through Redis.
    Redis {
        /// The rate per caller.
        rate: Rate,
        /// A connection.
        conn: redis::aio::ConnectionManager,
        /// `{namespace}:apilimit:{kind}`; the caller is appended.
        prefix: String,
        /// The script.
        script: Arc<redis::Script>,
    },
}

impl std::fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyedLimiter::Off => f.write_str("KeyedLimiter::Off"),
            KeyedLimiter::Local { rate, .. } => {
                write!(f, "KeyedLimiter::Local({}/s)", rate.per_second)
            }
            KeyedLimiter::Redis { rate, prefix, .. } => {
                write!(f, "KeyedLimiter::Redis({}/s, {prefix})", rate.per_second)
            }
        }
    }
}

/// Callers the in-process limiter remembers before it forgets idle ones.
const KEYED_LOCAL_CAPACITY: usize = 100_000;

impl KeyedLimiter {
    /// An in-process limiter, or none when `rate` is None.
    pub fn local(rate: Option<Rate>) -> Self {
        match rate {
            None => KeyedLimiter::Off,
            Some(rate) => KeyedLimiter::Local {
                rate,
                state: Arc::new(std::sync::Mutex::new(std::collections::HashMap::new())),
                epoch: Instant::now(),
            },
        }
    }

    /// A limiter shared through Redis under `prefix`, or none when `rate` is None.
    pub fn redis(rate: Option<Rate>, conn: redis::aio::ConnectionManager, prefix: String) -> Self {
        match rate {
            None => KeyedLimiter::Off,
            Some(rate) => KeyedLimiter::Redis {
                rate,
                conn,
                prefix,
                script: Arc::new(redis::Script::new(GCRA_SCRIPT)),
            },
        }
    }

    /// `Ok` when `caller` may make a request now; otherwise how long until it may. When
    /// Redis is unreachable the request is admitted (and a warning logged): a limiter
    /// outage must not take the API down.
    pub async fn check(&self, caller: &str) -> Result<(), Duration> {
        match self {
            KeyedLimiter::Off => Ok(()),
            KeyedLimiter::Local { rate, state, epoch } => {
                let now = epoch.elapsed().as_secs_f64() * 1000.0;
                let mut tats = state.lock().unwrap_or_else(|p| p.into_inner());
                if tats.len() >= KEYED_LOCAL_CAPACITY && !tats.contains_key(caller) {
                    tats.retain(|_, tat| *tat > now);
                    if tats.len() >= KEYED_LOCAL_CAPACITY {
                        // Every remembered caller is active: refuse newcomers briefly
                        // rather than grow without bound.
                        return Err(Duration::from_secs(1));
                    }
                }
                let tat = tats.get(caller).copied().unwrap_or(now).max(now);
                let new_tat = tat + rate.emission_ms();
                let allow_at = new_tat - rate.burst_ms();
                if allow_at > now {
                    return Err(Duration::from_secs_f64((allow_at - now) / 1000.0));
                }
                tats.insert(caller.to_owned(), new_tat);
                Ok(())
            }
            KeyedLimiter::Redis {
                rate,
                conn,
                prefix,
                script,
            } => {
                let mut conn = conn.clone();
                let key = format!("{prefix}:{caller}");
                let wait: Result<i64, redis::RedisError> = script
                    .key(format!("{key}:tat"))
                    .key(format!("{key}:pause"))
                    .arg(crate::now_ms())
                    .arg(rate.emission_ms())
                    .arg(rate.burst_ms())
                    .invoke_async(&mut conn)
                    .await;
                match wait {
                    Ok(ms) if ms > 0 => Err(Duration::from_millis(ms as u64)),
                    Ok(_) => Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "API rate limiter unavailable; admitting the request");
                        Ok(())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod keyed_tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_gets_one_seconds_burst_then_waits_and_others_are_unaffected() {
        let limiter = KeyedLimiter::local(Some(Rate { per_second: 5.0 }));
        for _ in 0..5 {
            assert!(limiter.check("1.2.3.4").await.is_ok());
        }
        let wait = limiter.check("1.2.3.4").await.expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(limiter.check("5.6.7.8").await.is_ok());
        assert!(KeyedLimiter::local(None).check("x").await.is_ok());
    }
}
