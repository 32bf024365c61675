//! The store: one sqlx `Any` pool over SQLite (the embedded default) or PostgreSQL (a
//! fleet), the embedded migrations for each, and the queries, one module per table
//! family. Every query is written once in the SQL both databases accept: `$n`
//! placeholders, `RETURNING`, `ON CONFLICT`, `COUNT(*) FILTER (...)`; timestamps are
//! epoch milliseconds and JSON documents are text.
//!
//! Collections page by keyset (`id > after ORDER BY id LIMIT n`), never by offset.
//!
//! A bound `LIMIT` is written `LIMIT CAST($n AS BIGINT)`, never as a bare parameter:
//! SQLite 3.51 reads a bare parameter's value into the compiled statement and so marks
//! the statement expired whenever that parameter is bound again, which recompiled every
//! page query at every execution (a tenth of the CPU of `GET /api/v1/campaigns`,
//! `mailing bench --mode api`). The cast makes the limit an expression evaluated at run
//! time; PostgreSQL reads both the same. A test below keeps the bare form out.

pub mod api_keys;
pub mod audit;
pub mod campaigns;
pub mod deliveries;
pub mod lists;
pub(crate) mod nodelay;
pub mod plugins;
pub mod subscribers;
pub mod suppressions;
pub mod templates;
pub mod tokens;
pub mod transactional;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// Errors of the store. `NotFound` and `Conflict` are the caller's business; the rest
/// mean the database is unreachable or the schema is not what this build expects.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `DATABASE_URL` names a database this build cannot talk to.
    #[error("unsupported DATABASE_URL scheme '{0}': use sqlite://PATH or postgres://HOST/DB")]
    UnsupportedUrl(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the directory for the SQLite database {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The row asked for does not exist (in this workspace).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule would be broken.
    #[error("{0}")]
    Conflict(String),
    /// A stored value does not parse (a corrupted or hand-edited row).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// Applying migrations failed; the database is left at its previous version.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database refused or failed a query.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the error is a unique-constraint violation.
    pub fn is_unique_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
    }
}

/// Which database engine the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (WAL mode).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Pool settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a query waits for a free connection.
    pub acquire_timeout: Duration,
}

/// SQLite's page cache per pooled connection, KiB. SQLite's default (2,000 KiB) times
/// `DATABASE_POOL_SIZE` connections was most of what the serve process's memory grew by
/// between a 100,000- and a 1,000,000-recipient campaign, once the ledger outgrew the
/// caches; pages that miss are read from the operating system's file cache.
pub const SQLITE_CACHE_KIB: u32 = 512;

/// A pooled connection used within this long is handed out without a liveness check.
/// sqlx's default checks every connection it hands out with a round trip of its own
/// (`test_before_acquire`): a second network round trip before every PostgreSQL
/// statement, and for SQLite a second hop to the connection's worker thread (with sqlx's
/// own ping when it takes a connection back, which cannot be turned off in 0.9.0: 4–6% of
/// the CPU of an authenticated `GET /api/v1/campaigns` under `mailing bench --mode api`).
/// A connection that has been idle longer, the kind a server restart or a firewall's idle
/// timeout cuts, is still pinged first and replaced when the ping fails. (HikariCP skips
/// its check the same way, within 500 ms of last use.) A connection can break between the
/// check and the statement either way; callers handle a failed statement.
pub(crate) const LIVENESS_CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Pool options that check a connection's liveness only after
/// [`LIVENESS_CHECK_AFTER_IDLE`]; the store's pool and the SQLite queue's use it.
pub(crate) fn ping_when_idle<DB: sqlx::Database>(
    options: sqlx::pool::PoolOptions<DB>,
) -> sqlx::pool::PoolOptions<DB> {
    options
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < LIVENESS_CHECK_AFTER_IDLE {
                    return Ok(true);
                }
                // An error makes the pool close this connection and open another.
                sqlx::Connection::ping(conn).await.map(|()| true)
            })
        })
}

/// The database behind Mailing. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// A fresh in-memory SQLite store with every migration, for unit tests.
#[cfg(test)]
pub(crate) async fn memory_store() -> Store {
    memory_store_at(i64::MAX).await
}

/// A fresh in-memory SQLite store with the migrations up to `version`.
#[cfg(test)]
async fn memory_store_at(version: i64) -> Store {
    let store = Store::open(&StoreConfig {
        url: "sqlite::memory:".into(),
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(5),
    })
    .await
    .expect("an in-memory store");
    store.migrate_to(version).await.expect("migrations");
    store
}

/// The PostgreSQL unit tests use (`MAILING_TEST_DATABASE_URL`, default the local server).
#[cfg(test)]
pub(crate) fn test_postgres_url() -> String {
    std::env::var("MAILING_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A store on the test PostgreSQL server (not migrated), or None when it is unreachable
/// (see [`test_postgres_unreachable`]).
#[cfg(test)]
pub(crate) async fn open_test_postgres(test: &str, max_connections: u32) -> Option<Store> {
    let config = StoreConfig {
        url: test_postgres_url(),
        max_connections,
        acquire_timeout: Duration::from_secs(5),
    };
    match Store::open(&config).await {
        Ok(store) => Some(store),
        Err(e) => {
            test_postgres_unreachable(test, &e);
            None
        }
    }
}

/// `r0@example.com` … `r{n-1}@example.com`, no name, no attributes.
#[cfg(test)]
pub(crate) fn numbered_subscribers(n: usize) -> Vec<subscribers::NewSubscriber> {
    (0..n)
        .map(|i| subscribers::NewSubscriber {
            email: format!("r{i}@example.com"),
            name: None,
            attributes: None,
        })
        .collect()
}

/// Runs `check` on a fresh in-memory SQLite store, then on a migrated PostgreSQL
/// database of its own, dropped afterwards (skipped, having said so, when PostgreSQL is
/// unreachable outside CI): the two databases held to the same behaviour.
#[cfg(test)]
pub(crate) async fn on_both_databases(test: &str, check: impl AsyncFn(&Store)) {
    on_both_databases_at(test, i64::MAX, check).await;
}

/// [`on_both_databases`] with the migrations up to `version` only: for checks of what a
/// later migration does to the data an earlier schema held.
#[cfg(test)]
pub(crate) async fn on_both_databases_at(test: &str, version: i64, check: impl AsyncFn(&Store)) {
    use futures::FutureExt as _;
    check(&memory_store_at(version).await).await;
    if let Some((store, admin, name)) = postgres_scratch(test, version).await {
        // A failing check panics: drop the scratch database first, then fail as it did,
        // so failed runs leave no `mailing_unit_*` database behind.
        let checked = std::panic::AssertUnwindSafe(check(&store))
            .catch_unwind()
            .await;
        drop_scratch(store, &admin, &name).await;
        if let Err(panic) = checked {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A PostgreSQL store migrated up to `version` in a database of its own, the server's
/// URL and the database's name (for [`drop_scratch`]); None (having said so) when
/// PostgreSQL is unreachable outside CI.
#[cfg(test)]
async fn postgres_scratch(test: &str, version: i64) -> Option<(Store, String, String)> {
    use sqlx::Connection as _;
    let url = test_postgres_url();
    let mut admin = match sqlx::PgConnection::connect(&url).await {
        Ok(admin) => admin,
        Err(e) => {
            test_postgres_unreachable(test, &e);
            return None;
        }
    };
    let name = format!("mailing_unit_{:016x}", rand::random::<u64>());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let base = url.split('?').next().unwrap_or(&url);
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    let store = Store::open(&StoreConfig {
        url: format!("{base}/{name}"),
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(5),
    })
    .await
    .expect("a scratch database");
    store.migrate_to(version).await.expect("migrations");
    Some((store, url, name))
}

/// Closes a [`postgres_scratch`] store and drops its database.
#[cfg(test)]
async fn drop_scratch(store: Store, admin_url: &str, name: &str) {
    use sqlx::Connection as _;
    store.pool().close().await;
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

/// PostgreSQL is unreachable for `test`: fails under `CI=true`, else says it was skipped.
#[cfg(test)]
pub(crate) fn test_postgres_unreachable(test: &str, error: &dyn std::fmt::Display) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("PostgreSQL is required under CI=true but unreachable: {error}");
    }
    eprintln!("SKIPPED {test}: PostgreSQL unreachable ({error}); set MAILING_TEST_DATABASE_URL");
}

/// A page of a keyset-paginated collection.
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[derive(Debug, Clone, serde::Serialize)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// The cursor to pass as `after` for the next page, absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says there is more.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, id: impl Fn(&T) -> i64) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(|r| id(r).to_string())
        } else {
            None
        };
        Page { items: rows, next }
    }
}

/// `$first, $first+1, …` for `count` values of an `IN (…)` list (dynamic SQL, bound
/// values only).
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Normalises a SQLite URL: accepts the seed's `sqlite:///./x` spelling, and returns the
/// file path it names (None for in-memory databases).
pub fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite:///./")
        .map(|r| format!("./{r}"))
        .or_else(|| url.strip_prefix("sqlite://").map(str::to_owned))
        .or_else(|| url.strip_prefix("sqlite:").map(str::to_owned))?;
    let path = rest.split('?').next().unwrap_or_default().to_owned();
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path)
    }
}

impl Store {
    /// Opens the pool (creating a SQLite file and its directory when missing) without
    /// migrating. Call [`Store::migrate`] before use.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let scheme = config.url.split(':').next().unwrap_or_default();
        let (backend, url) = match scheme {
            "sqlite" => {
                let path = sqlite_path(&config.url);
                if let Some(path) = &path
                    && let Some(dir) = std::path::Path::new(path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
                let url = match path {
                    Some(p) => format!("sqlite://{p}?mode=rwc"),
                    None => "sqlite::memory:".to_owned(),
                };
                (Backend::Sqlite, url)
            }
            "postgres" | "postgresql" => (Backend::Postgres, config.url.clone()),
            other => return Err(StoreError::UnsupportedUrl(other.to_owned())),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let mut pool = ping_when_idle(AnyPoolOptions::new())
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout);
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                         PRAGMA cache_size = -{SQLITE_CACHE_KIB};"
                    )))
                    .await?;
                    Ok(())
                })
            });
        }
        if backend == Backend::Postgres {
            let server = sqlx::postgres::PgConnectOptions::from_str(&url)?;
            let (host, port) = (server.get_host().to_owned(), server.get_port());
            pool = pool.after_connect(move |conn, _meta| {
                let host = host.clone();
                Box::pin(async move {
                    nodelay::set_on_sockets_to(&host, port).await;
                    // Plan every execution with its parameters. PostgreSQL otherwise
                    // switches a prepared statement to a generic plan after five runs and
                    // keeps it, and a plan made while a table was nearly empty (a fresh
                    // deployment's first import, a campaign's first batches) scans that
                    // table once it is large: the import's "which addresses exist"
                    // query took 300 ms per 500 rows by the end of 100,000
                    // (`mailing bench --backend redis`), 1.7 ms with a fresh plan.
                    conn.execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                    // No JIT compilation: the ledger's rates (`ledger_rates`, sampled
                    // every 15 s over the whole ledger) crossed its cost threshold at
                    // 300,000 rows and spent 275 of their 307 ms compiling (`mailing
                    // bench --backend redis`, pg_stat_statements). The store runs
                    // short statements, planned afresh every time.
                    conn.execute("SET jit = off").await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await?;
        Ok(Store { pool, backend })
    }

    /// Opens the store and applies pending migrations.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let store = Self::open(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// The migrations this build embeds for the store's backend.
    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies the migrations this build embeds that the database has not seen yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// Applies the embedded migrations up to `version` (tests of an upgrade).
    #[cfg(test)]
    pub(crate) async fn migrate_to(&self, version: i64) -> Result<(), StoreError> {
        self.migrator().run_to(version, &self.pool).await?;
        Ok(())
    }

    /// The number of migrations this build embeds for the store's backend.
    pub fn migration_count(&self) -> usize {
        self.migrator().iter().count()
    }

    /// The pool, for queries of this crate and health checks.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that reads before it writes. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`, waiting up to `busy_timeout` for another writer): a
    /// deferred one would read a snapshot that a concurrent commit can make stale, and its
    /// first write would then fail at once with `SQLITE_BUSY_SNAPSHOT` ("database is
    /// locked"), which no timeout retries.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Lets PostgreSQL's foreign-key checks keep a generic plan for the statements that
    /// follow in `tx`, until [`Store::plan_every_execution`] (or the transaction's end).
    /// Nothing on SQLite.
    ///
    /// The store's connections plan every execution afresh (`plan_cache_mode =
    /// force_custom_plan`, set in [`Store::open`]), and that setting reaches the checks
    /// PostgreSQL runs for every row a statement inserts (`SELECT 1 FROM subscribers
    /// WHERE id = $1 FOR KEY SHARE`): a plan per check. Writing the ledger, its two
    /// checks took 26 µs per row, 21 of them planning (`mailing bench --backend redis`,
    /// pg_stat_statements). `DISCARD PLANS` first drops any generic plan the connection
    /// made before, so the one the checks keep is made now, at the tables' present
    /// sizes: one made while `subscribers` was nearly empty would scan it row by row
    /// once an import has filled it. Statements sent in between must be unprepared
    /// (`persistent(false)`), so that they are planned with their own parameters.
    pub(crate) async fn fk_checks_keep_plans(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<(), StoreError> {
        self.on_postgres(tx, "DISCARD PLANS; SET LOCAL plan_cache_mode = auto")
            .await
    }

    /// Ends [`Store::fk_checks_keep_plans`] before the end of `tx`.
    pub(crate) async fn plan_every_execution(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<(), StoreError> {
        self.on_postgres(tx, "SET LOCAL plan_cache_mode = force_custom_plan")
            .await
    }

    /// Runs `sql` in `tx` on PostgreSQL; nothing on SQLite.
    async fn on_postgres(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        sql: &'static str,
    ) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::raw_sql(sql).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Which database engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for checked-out connections to return.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every setting of the connection hook takes effect, not only the first statement.
    #[tokio::test]
    async fn sqlite_connections_get_every_pragma() {
        let path =
            std::env::temp_dir().join(format!("mailing-pragmas-{:016x}.db", rand::random::<u64>()));
        let store = Store::open(&StoreConfig {
            url: format!("sqlite://{}", path.display()),
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(5),
        })
        .await
        .expect("a store");
        let mut conn = store.pool().acquire().await.expect("a connection");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .expect("the journal mode reads");
        assert_eq!(journal, "wal");
        for (pragma, expected) in [
            ("synchronous", 1),
            ("foreign_keys", 1),
            ("busy_timeout", 10_000),
            ("cache_size", -i64::from(SQLITE_CACHE_KIB)),
        ] {
            let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("PRAGMA {pragma}")))
                .fetch_one(&mut *conn)
                .await
                .expect("the pragma reads");
            assert_eq!(value, expected, "PRAGMA {pragma}");
        }
        drop(conn);
        store.pool().close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[tokio::test]
    async fn postgres_connections_plan_every_execution() {
        let Some(store) = open_test_postgres("postgres_connections_plan_every_execution", 2).await
        else {
            return;
        };
        // Every pooled connection, not only the first one.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut conn = store.pool().acquire().await.expect("a connection");
            let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
                .fetch_one(&mut *conn)
                .await
                .expect("SHOW");
            assert_eq!(mode, "force_custom_plan");
            let jit: String = sqlx::query_scalar("SHOW jit")
                .fetch_one(&mut *conn)
                .await
                .expect("SHOW");
            assert_eq!(jit, "off");
            // sqlx 0.9.0 leaves Nagle on; the pool turns it off on every connection
            // (`nodelay.rs`). The server reports the client's port, which is this
            // connection's local port on loopback.
            #[cfg(target_os = "linux")]
            {
                let (addr, port): (Option<String>, Option<i32>) = sqlx::query_as(
                    "SELECT host(client_addr), client_port FROM pg_stat_activity \
                     WHERE pid = pg_backend_pid()",
                )
                .fetch_one(&mut *conn)
                .await
                .expect("pg_stat_activity");
                match (addr, port.and_then(|p| u16::try_from(p).ok())) {
                    (Some(addr), Some(port)) if port > 0 => assert_eq!(
                        nodelay::nodelay_of_local_port(port),
                        Some(true),
                        "the pooled connection from {addr}:{port} has Nagle on"
                    ),
                    _ => eprintln!(
                        "the test database is reached over a Unix socket: no Nagle to check"
                    ),
                }
            }
            held.push(conn);
        }
    }

    /// Fails when a query of this crate binds its `LIMIT` as a bare parameter (see the module
    /// documentation).
    #[test]
    fn no_query_binds_a_bare_limit() {
        fn walk(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("the crate's sources") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("a source file");
                    for (n, line) in text.lines().enumerate() {
                        // Split so that this line does not match itself.
                        if line.contains(concat!("LIMIT ", "$")) {
                            found.push(format!("{}:{}", path.display(), n + 1));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        assert!(
            found.is_empty(),
            "write LIMIT CAST($n AS BIGINT) instead: {found:?}"
        );
    }

    /// A connection PostgreSQL ended while it sat in the pool longer than
    /// [`LIVENESS_CHECK_AFTER_IDLE`] is checked, found dead and replaced: the next query
    /// succeeds on a new backend.
    #[tokio::test]
    async fn a_connection_ended_while_idle_is_replaced() {
        let Some(store) = open_test_postgres("a_connection_ended_while_idle_is_replaced", 1).await
        else {
            return;
        };
        let first: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .expect("the first backend");
        // End that backend from another session, as a server restart or an idle
        // timeout would.
        let mut killer = <sqlx::PgConnection as sqlx::Connection>::connect(&test_postgres_url())
            .await
            .expect("a second session");
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(first)
            .fetch_one(&mut killer)
            .await
            .expect("pg_terminate_backend");
        assert!(ended, "backend {first} was not terminated");
        tokio::time::sleep(LIVENESS_CHECK_AFTER_IDLE + std::time::Duration::from_millis(300)).await;
        let second: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .expect("the pool replaced the dead connection");
        assert_ne!(first, second);
    }

    /// A check that fails on PostgreSQL still has its scratch database dropped, and the
    /// failure reaches the test as the check's own panic.
    #[tokio::test]
    async fn a_failing_check_leaves_no_scratch_database() {
        use futures::FutureExt as _;
        let test = "a_failing_check_leaves_no_scratch_database";
        let scratch = std::sync::Mutex::new(None::<String>);
        let failed = std::panic::AssertUnwindSafe(on_both_databases(test, async |store| {
            if store.backend() == Backend::Postgres {
                let name: String = sqlx::query_scalar("SELECT CAST(current_database() AS TEXT)")
                    .fetch_one(store.pool())
                    .await
                    .expect("the scratch database's name");
                *scratch.lock().expect("the name's lock") = Some(name);
                panic!("the check failed on purpose");
            }
        }))
        .catch_unwind()
        .await;
        let Some(name) = scratch.lock().expect("the name's lock").take() else {
            // PostgreSQL unreachable outside CI: skipped, as `on_both_databases` said.
            assert!(failed.is_ok(), "the SQLite pass does not fail");
            return;
        };
        let panic = failed.expect_err("the check's panic reaches the caller");
        assert_eq!(
            panic.downcast_ref::<&str>().copied(),
            Some("the check failed on purpose")
        );
        assert!(name.starts_with("mailing_unit_"), "{name}");
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&test_postgres_url())
            .await
            .expect("the server");
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("pg_database");
        assert_eq!(left, 0, "the scratch database {name} was left behind");
    }

    #[test]
    fn sqlite_path_accepts_the_seed_and_the_short_spelling() {
        assert_eq!(
            sqlite_path("sqlite:///./data/mailing.sqlite3").as_deref(),
            Some("./data/mailing.sqlite3")
        );
        assert_eq!(
            sqlite_path("sqlite://./data/mailing.sqlite3").as_deref(),
            Some("./data/mailing.sqlite3")
        );
        assert_eq!(
            sqlite_path("sqlite:///var/m.db?mode=rwc").as_deref(),
            Some("/var/m.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    #[test]
    fn page_keeps_limit_rows_and_points_after_the_last() {
        let page = Page::from_rows(vec![1_i64, 2, 3], 2, |r| *r);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next.as_deref(), Some("2"));
        let last = Page::from_rows(vec![1_i64], 2, |r| *r);
        assert!(last.next.is_none());
    }
}
