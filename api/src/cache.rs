//! Answers the API keeps in memory for `API_CACHE_TTL_MS` so that a polled read does not
//! cost database round trips: an access token's standing (not revoked, its user current)
//! and the pages of `GET /api/v1/campaigns`.
//!
//! What may lag, and by how much:
//! - What a request to this process changes is seen at once. Every entry carries the
//!   generation it was read in; logging out and deleting a user move the sessions'
//!   generation, and every write request that may have changed something moves the
//!   pages' generation when it has been handled ([`ForgetOnWrite`]), so an entry read
//!   before the change is never served after it (even one a concurrent read stores
//!   late).
//! - Other changes (another API process of a fleet logging a token out, the pipeline
//!   moving a campaign's counts or status, in a worker or in this `serve` process) are
//!   seen within `API_CACHE_TTL_MS`. `GET /api/v1/campaigns/{id}` is never cached and
//!   is always current.
//!
//! Only answers that let a request through are cached: a revoked token or a deleted user
//! is asked about again on every request. `API_CACHE_TTL_MS=0` turns both caches off.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use salvo::http::Method;
use salvo::prelude::*;

/// The largest number of access tokens whose standing is remembered.
const SESSIONS_CAPACITY: u64 = 100_000;
/// The most bytes of cached campaign pages (serialized JSON).
const PAGES_CAPACITY_BYTES: u64 = 8 * 1024 * 1024;

/// A value and the generation it was read in.
#[derive(Clone)]
struct Stamped<V> {
    generation: u64,
    value: V,
}

/// A cache whose entries stop counting when its generation moves.
struct Generational<K, V> {
    entries: moka::sync::Cache<K, Stamped<V>>,
    generation: AtomicU64,
}

impl<K, V> Generational<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(entries: moka::sync::Cache<K, Stamped<V>>) -> Self {
        Generational {
            entries,
            generation: AtomicU64::new(0),
        }
    }

    /// The current generation: read it before reading what [`Generational::put`] stores.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: moka::Equivalent<K> + Hash + ?Sized,
    {
        let current = self.generation();
        self.entries
            .get(key)
            .filter(|e| e.generation == current)
            .map(|e| e.value)
    }

    fn put(&self, key: K, generation: u64, value: V) {
        // An entry read before a change is not stored after it.
        if generation == self.generation() {
            self.entries.insert(key, Stamped { generation, value });
        }
    }

    fn advance(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn clear(&self) {
        self.advance();
        self.entries.invalidate_all();
    }
}

/// Which page of `GET /api/v1/campaigns`: the cursor and the limit.
pub type PageKey = (i64, u32);

/// The API's short-lived caches (see the module's documentation).
pub struct ApiCache {
    ttl: Duration,
    /// Access token id (`jti`) → the user id it was found current for.
    sessions: Option<Generational<String, i64>>,
    /// A page of campaigns, serialized.
    campaign_pages: Option<Generational<PageKey, Bytes>>,
}

impl std::fmt::Debug for ApiCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCache").field("ttl", &self.ttl).finish()
    }
}

/// A read of the cache that missed: store what was read with [`ApiCache::put_session`] or
/// [`ApiCache::put_campaign_page`]; the generation it holds was taken before the read.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Miss(u64);

impl ApiCache {
    /// Caches that keep an answer for `ttl`; a zero `ttl` keeps nothing.
    pub fn new(ttl: Duration) -> Self {
        if ttl.is_zero() {
            return ApiCache {
                ttl,
                sessions: None,
                campaign_pages: None,
            };
        }
        ApiCache {
            ttl,
            sessions: Some(Generational::new(
                moka::sync::Cache::builder()
                    .max_capacity(SESSIONS_CAPACITY)
                    .time_to_live(ttl)
                    .build(),
            )),
            campaign_pages: Some(Generational::new(
                moka::sync::Cache::builder()
                    .max_capacity(PAGES_CAPACITY_BYTES)
                    .weigher(|_: &PageKey, v: &Stamped<Bytes>| {
                        u32::try_from(v.value.len()).unwrap_or(u32::MAX)
                    })
                    .time_to_live(ttl)
                    .build(),
            )),
        }
    }

    /// Whether the access token `jti` was found standing for `user_id` within the TTL;
    /// otherwise the generation to store the database's answer under.
    pub fn session(&self, jti: &str, user_id: i64) -> Result<(), Option<Miss>> {
        let Some(sessions) = &self.sessions else {
            return Err(None);
        };
        let generation = sessions.generation();
        match sessions.get(jti) {
            Some(found) if found == user_id => Ok(()),
            _ => Err(Some(Miss(generation))),
        }
    }

    /// Remembers that the database found the access token `jti` standing.
    pub fn put_session(&self, miss: Option<Miss>, jti: &str, user_id: i64) {
        if let (Some(sessions), Some(Miss(generation))) = (&self.sessions, miss) {
            sessions.put(jti.to_owned(), generation, user_id);
        }
    }

    /// A token was revoked or a user deleted: no remembered standing counts any more.
    pub fn sessions_changed(&self) {
        if let Some(sessions) = &self.sessions {
            sessions.clear();
        }
    }

    /// A page of campaigns read within the TTL and since the last write, serialized.
    pub fn campaign_page(&self, key: PageKey) -> Result<Bytes, Option<Miss>> {
        let Some(pages) = &self.campaign_pages else {
            return Err(None);
        };
        let generation = pages.generation();
        pages.get(&key).ok_or(Some(Miss(generation)))
    }

    /// Remembers a page of campaigns read after `miss`.
    pub fn put_campaign_page(&self, miss: Option<Miss>, key: PageKey, page: Bytes) {
        if let (Some(pages), Some(Miss(generation))) = (&self.campaign_pages, miss) {
            pages.put(key, generation, page);
        }
    }

    /// Something was written: no remembered page counts any more.
    pub fn data_changed(&self) {
        if let Some(pages) = &self.campaign_pages {
            pages.advance();
        }
    }

    /// Drops everything (`POST /admin/cache/clear`).
    pub fn clear(&self) {
        self.sessions_changed();
        if let Some(pages) = &self.campaign_pages {
            pages.clear();
        }
    }
}

/// The hoop that tells the cache about every write request this process handled, after
/// it was handled, unless it cannot have changed what a page shows (see
/// [`may_change_pages`]); otherwise whatever its outcome, since a write that failed
/// midway may have changed something.
#[derive(Debug, Clone, Copy)]
pub struct ForgetOnWrite;

/// Whether a request, answered with `status`, may have changed a page of campaigns.
/// Not: reads; answers given before any handler wrote (no token, no right, no such
/// route or method, rate limited), so that anonymous or refused traffic cannot keep the
/// cache empty; sessions (`/auth/*`: logins and logouts change no page); transactional
/// messages (`/api/v1/tx` writes only its own table).
fn may_change_pages(method: &Method, path: &str, status: Option<u16>) -> bool {
    if [Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return false;
    }
    if matches!(status, Some(401 | 403 | 404 | 405 | 429)) {
        return false;
    }
    !(path.starts_with("/auth/") || path == "/api/v1/tx" || path.starts_with("/api/v1/tx/"))
}

#[async_trait]
impl Handler for ForgetOnWrite {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        ctrl.call_next(req, depot, res).await;
        let status = res.status_code.map(|s| s.as_u16());
        if may_change_pages(req.method(), req.uri().path(), status)
            && let Ok(state) = crate::state::from_depot(depot)
        {
            state.cache.data_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> ApiCache {
        ApiCache::new(Duration::from_secs(60))
    }

    #[test]
    fn a_standing_is_served_until_sessions_change() {
        let c = cache();
        let miss = c.session("t1", 7).expect_err("nothing cached yet");
        c.put_session(miss, "t1", 7);
        assert!(c.session("t1", 7).is_ok());
        // Another user id under the same token id is not the remembered answer.
        assert!(c.session("t1", 8).is_err());
        c.sessions_changed();
        assert!(
            c.session("t1", 7).is_err(),
            "a logout forgets every standing"
        );
    }

    #[test]
    fn an_answer_read_before_a_change_is_not_stored_after_it() {
        let c = cache();
        let miss = c.session("t1", 7).expect_err("miss");
        // A logout lands while the database is being asked.
        c.sessions_changed();
        c.put_session(miss, "t1", 7);
        assert!(c.session("t1", 7).is_err(), "the stale answer was dropped");

        let miss = c.campaign_page((0, 20)).expect_err("miss");
        c.data_changed();
        c.put_campaign_page(miss, (0, 20), Bytes::from_static(b"[]"));
        assert!(c.campaign_page((0, 20)).is_err());
    }

    #[test]
    fn a_page_is_served_until_something_is_written() {
        let c = cache();
        let miss = c.campaign_page((0, 20)).expect_err("miss");
        c.put_campaign_page(miss, (0, 20), Bytes::from_static(b"{\"items\":[]}"));
        assert_eq!(
            c.campaign_page((0, 20)).ok().as_deref(),
            Some(&b"{\"items\":[]}"[..])
        );
        assert!(c.campaign_page((3, 20)).is_err(), "another page");
        c.data_changed();
        assert!(c.campaign_page((0, 20)).is_err());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = ApiCache::new(Duration::from_millis(50));
        let miss = c.session("t1", 7).expect_err("miss");
        c.put_session(miss, "t1", 7);
        assert!(c.session("t1", 7).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert!(c.session("t1", 7).is_err(), "expired");
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let c = ApiCache::new(Duration::ZERO);
        let miss = c.session("t1", 7).expect_err("miss");
        c.put_session(miss, "t1", 7);
        assert!(c.session("t1", 7).is_err());
        let miss = c.campaign_page((0, 20)).expect_err("miss");
        c.put_campaign_page(miss, (0, 20), Bytes::from_static(b"{}"));
        assert!(c.campaign_page((0, 20)).is_err());
    }

    #[test]
    fn only_writes_that_may_change_a_page_forget_the_pages() {
        let write = |m: Method, path: &str, status: u16| may_change_pages(&m, path, Some(status));
        assert!(write(Method::POST, "/api/v1/campaigns", 201));
        assert!(write(Method::PATCH, "/api/v1/campaigns/3", 200));
        assert!(write(Method::DELETE, "/api/v1/lists/3", 204));
        assert!(write(Method::POST, "/unsubscribe/abc", 200));
        assert!(write(Method::POST, "/webhooks/resend", 200));
        // A write that failed midway may have changed something.
        assert!(write(Method::POST, "/api/v1/campaigns/3/send", 500));
        assert!(write(Method::POST, "/api/v1/campaigns/3/send", 409));
        assert!(may_change_pages(&Method::POST, "/api/v1/subscribers", None));
        // Reads, refusals before any handler, sessions and transactional messages.
        assert!(!write(Method::GET, "/api/v1/campaigns", 200));
        assert!(!write(Method::POST, "/api/v1/campaigns", 401));
        assert!(!write(Method::DELETE, "/api/v1/users/2", 403));
        assert!(!write(Method::POST, "/nowhere", 404));
        assert!(!write(Method::POST, "/api/v1/campaigns", 429));
        assert!(!write(Method::POST, "/auth/login", 200));
        assert!(!write(Method::POST, "/auth/logout", 204));
        assert!(!write(Method::POST, "/api/v1/tx", 202));
    }
}
