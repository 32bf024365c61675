//! Backups of the store: a consistent online copy (SQLite `VACUUM INTO`, PostgreSQL
//! `pg_dump --format=custom`), compressed, described by a manifest (Mailing version,
//! schema version, sizes, sha256, row counts of the key tables) and verified after
//! writing; verification of any backup later (checksum, open the copy, integrity check,
//! row counts); restore with an automatic rollback point; retention.
//!
//! A backup is a directory `BACKUP_DIR/<name>/` holding the data file and
//! `manifest.json`. It is written as `.<name>.partial` and renamed when complete, so a
//! crash never leaves something that looks like a backup.

mod postgres;
mod sqlite;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Backend, Store, StoreConfig};

/// The tables whose row counts a manifest records and verification compares.
pub const COUNTED_TABLES: &[&str] = &[
    "users",
    "lists",
    "subscribers",
    "list_memberships",
    "templates",
    "campaigns",
    "deliveries",
    "suppressions",
];

/// Errors of backups. Each says what went wrong and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// No backup has this name.
    #[error("no backup named '{0}' in the backup directory")]
    NotFound(String),
    /// The backup does not match its manifest, or its copy is damaged.
    #[error("backup '{name}' failed verification: {reason}")]
    Verification {
        /// The backup.
        name: String,
        /// What did not match.
        reason: String,
    },
    /// A PostgreSQL client tool is missing.
    #[error(
        "{0} is not installed: install the PostgreSQL client tools (e.g. `apt-get install postgresql-client`) matching your server's major version"
    )]
    MissingTool(&'static str),
    /// A tool ran and failed.
    #[error("{tool} failed: {stderr}")]
    Tool {
        /// Which.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
    /// The restore failed and the previous database was put back.
    #[error("restore failed and the previous database was put back: {0}")]
    RolledBack(String),
    /// There is nothing to roll back to.
    #[error("there is no restore to roll back (no rollback point recorded)")]
    NoRollback,
    /// The store failed.
    #[error("database: {0}")]
    Store(#[from] crate::StoreError),
    /// A database query failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Where backups go and how long they stay.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// `BACKUP_DIR`.
    pub dir: PathBuf,
    /// `BACKUP_COPY_DIR`: a second destination each verified backup is copied to.
    pub copy_dir: Option<PathBuf>,
    /// `BACKUP_RETENTION_DAYS`.
    pub retention_days: u32,
    /// The store's URL (the live database).
    pub database_url: String,
}

/// What a backup holds, written next to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "openapi", salvo(schema(name = "BackupManifest")))]
pub struct Manifest {
    /// The backup's name (its directory).
    pub name: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// The Mailing version that wrote it.
    pub mailing_version: String,
    /// The number of migrations applied to the copied database.
    pub schema_version: i64,
    /// When it was taken (RFC 3339).
    #[cfg_attr(
        feature = "openapi",
        salvo(schema(value_type = String, format = DateTime))
    )]
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The data file, relative to the backup directory.
    pub file: String,
    /// Bytes of the data file.
    pub size_bytes: u64,
    /// Bytes of the database before compression (SQLite).
    pub uncompressed_bytes: u64,
    /// SHA-256 of the data file, hex.
    pub sha256: String,
    /// Row counts of [`COUNTED_TABLES`] in the copy.
    pub row_counts: std::collections::BTreeMap<String, i64>,
    /// Whether verification passed after writing.
    pub verified: bool,
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, BackupError> {
    let mut file =
        std::fs::File::open(path).map_err(io(format!("cannot open {}", path.display())))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).map_err(io(format!("cannot read {}", path.display())))?;
    Ok(hex::encode(hash.finalize()))
}

fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("manifest.json")
}

/// Reads a backup's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let text = std::fs::read_to_string(manifest_path(dir))
        .map_err(io(format!("cannot read the manifest in {}", dir.display())))?;
    serde_json::from_str(&text).map_err(|e| BackupError::Verification {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        reason: format!("the manifest does not parse: {e}"),
    })
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let text = serde_json::to_string_pretty(manifest).unwrap_or_default();
    let tmp = dir.join(".manifest.json.tmp");
    std::fs::write(&tmp, text).map_err(io("cannot write the manifest"))?;
    std::fs::rename(&tmp, manifest_path(dir)).map_err(io("cannot write the manifest"))
}

/// Every complete backup in the directory, newest first.
pub fn list(dir: &Path) -> Result<Vec<Manifest>, BackupError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(format!("cannot list {}", dir.display()))(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir() || name.starts_with('.') || name == "rollback" {
            continue;
        }
        if let Ok(m) = read_manifest(&path) {
            out.push(m);
        }
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.name.cmp(&a.name)));
    Ok(out)
}

fn backend_of(url: &str) -> Backend {
    if url.starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// Takes a backup of the live store, verifies it, copies it to the second destination
/// and returns its manifest. Safe while campaigns run.
pub async fn create(store: &Store, config: &BackupConfig) -> Result<Manifest, BackupError> {
    let now = chrono::Utc::now();
    let backend = store.backend();
    let name = format!(
        "mailing-{}-{}",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        if backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    std::fs::create_dir_all(&config.dir)
        .map_err(io(format!("cannot create {}", config.dir.display())))?;
    let partial = config.dir.join(format!(".{name}.partial"));
    std::fs::create_dir_all(&partial)
        .map_err(io(format!("cannot create {}", partial.display())))?;
    let result = async {
        let mut manifest = match backend {
            Backend::Sqlite => sqlite::dump(store, &partial).await?,
            Backend::Postgres => postgres::dump(&config.database_url, &partial).await?,
        };
        manifest.name = name.clone();
        manifest.created_at = now;
        manifest.mailing_version = env!("CARGO_PKG_VERSION").into();
        manifest.sha256 = sha256_file(&partial.join(&manifest.file))?;
        manifest.size_bytes = std::fs::metadata(partial.join(&manifest.file))
            .map(|m| m.len())
            .unwrap_or(0);
        write_manifest(&partial, &manifest)?;
        verify_dir(&partial, &name, &config.database_url).await?;
        manifest.verified = true;
        write_manifest(&partial, &manifest)?;
        Ok::<_, BackupError>(manifest)
    }
    .await;
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            crate::telemetry::BackupTaken { outcome: "failed" }.emit();
            return Err(e);
        }
    };
    crate::telemetry::BackupTaken { outcome: "ok" }.emit();
    let final_dir = config.dir.join(&name);
    std::fs::rename(&partial, &final_dir)
        .map_err(io("cannot move the finished backup into place"))?;
    if let Some(copy) = &config.copy_dir {
        copy_dir(&final_dir, &copy.join(&name))?;
    }
    tracing::info!(backup = %name, size_bytes = manifest.size_bytes, "Backup written and verified");
    Ok(manifest)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), BackupError> {
    std::fs::create_dir_all(to).map_err(io(format!("cannot create {}", to.display())))?;
    for entry in std::fs::read_dir(from)
        .map_err(io(format!("cannot read {}", from.display())))?
        .flatten()
    {
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .map_err(io(format!("cannot copy to {}", to.display())))?;
    }
    Ok(())
}

async fn verify_dir(dir: &Path, name: &str, database_url: &str) -> Result<Manifest, BackupError> {
    let fail = |reason: String| BackupError::Verification {
        name: name.to_owned(),
        reason,
    };
    let manifest = read_manifest(dir)?;
    let file = dir.join(&manifest.file);
    if !file.exists() {
        return Err(fail(format!("the data file {} is missing", manifest.file)));
    }
    let sha = sha256_file(&file)?;
    if sha != manifest.sha256 {
        return Err(fail(format!(
            "checksum mismatch: the manifest says {} but the file hashes to {sha} (damaged or truncated)",
            manifest.sha256
        )));
    }
    let counts = match manifest.backend.as_str() {
        "sqlite" => sqlite::check_copy(&file)
            .await
            .map_err(|e| fail(e.to_string()))?,
        "postgres" => postgres::check_copy(database_url, &file)
            .await
            .map_err(|e| fail(e.to_string()))?,
        other => return Err(fail(format!("unknown backend '{other}'"))),
    };
    if counts != manifest.row_counts {
        return Err(fail(format!(
            "row counts differ: manifest {:?}, copy {counts:?}",
            manifest.row_counts
        )));
    }
    Ok(manifest)
}

/// Verifies a backup by name: checksum, open the copy, integrity check, row counts.
pub async fn verify(config: &BackupConfig, name: &str) -> Result<Manifest, BackupError> {
    let dir = config.dir.join(name);
    if name.contains('/') || name.starts_with('.') || !dir.is_dir() {
        return Err(BackupError::NotFound(name.to_owned()));
    }
    verify_dir(&dir, name, &config.database_url).await
}

/// What `restore` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// The backup put in place.
    pub restored: String,
    /// The rollback point: the database as it was before (None when there was none,
    /// e.g. a restore into a fresh data directory).
    pub rollback_file: Option<PathBuf>,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
}

fn rollback_dir(config: &BackupConfig) -> PathBuf {
    config.dir.join("rollback")
}

/// Restores a backup into the live database. Run it with Mailing stopped. The backup is
/// verified first (a bad one changes nothing); the current database is kept as a
/// rollback point; after the swap the database is migrated and checked against the
/// manifest, and any failure puts the previous database back.
pub async fn restore(config: &BackupConfig, name: &str) -> Result<RestoreRecord, BackupError> {
    let manifest = verify(config, name).await?;
    let file = config.dir.join(name).join(&manifest.file);
    let rollback = rollback_dir(config);
    std::fs::create_dir_all(&rollback)
        .map_err(io(format!("cannot create {}", rollback.display())))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
    let backend = backend_of(&config.database_url);
    let rollback_file = match backend {
        Backend::Sqlite => rollback.join(format!("before-restore-{stamp}.sqlite3")),
        Backend::Postgres => rollback.join(format!("before-restore-{stamp}.pgdump")),
    };
    let rollback_file = match backend {
        Backend::Sqlite if !sqlite::live_exists(&config.database_url) => None,
        Backend::Sqlite => {
            sqlite::snapshot_live(&config.database_url, &rollback_file).await?;
            Some(rollback_file)
        }
        Backend::Postgres => {
            postgres::snapshot_live(&config.database_url, &rollback_file).await?;
            Some(rollback_file)
        }
    };
    let attempt = async {
        match backend {
            Backend::Sqlite => sqlite::put_in_place(&config.database_url, &file, true).await?,
            Backend::Postgres => postgres::put_in_place(&config.database_url, &file).await?,
        }
        check_live(&config.database_url, &manifest).await
    }
    .await;
    if let Err(e) = attempt {
        let back = match (&rollback_file, backend) {
            (None, _) => sqlite::remove_live(&config.database_url),
            (Some(f), Backend::Sqlite) => {
                sqlite::put_in_place(&config.database_url, f, false).await
            }
            (Some(f), Backend::Postgres) => postgres::put_in_place(&config.database_url, f).await,
        };
        return Err(match back {
            Ok(()) => BackupError::RolledBack(e.to_string()),
            Err(e2) => BackupError::Tool {
                tool: "rollback",
                stderr: format!(
                    "{e}; putting the previous database back also failed: {e2}; it is at {}",
                    rollback_file
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_else(|| "(none)".into())
                ),
            },
        });
    }
    let record = RestoreRecord {
        restored: name.to_owned(),
        rollback_file,
        at: chrono::Utc::now(),
    };
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    std::fs::write(rollback.join("last.json"), text)
        .map_err(io("cannot record the rollback point"))?;
    tracing::info!(backup = %name, "Backup restored");
    Ok(record)
}

async fn check_live(database_url: &str, manifest: &Manifest) -> Result<(), BackupError> {
    let store = Store::connect(&StoreConfig {
        url: database_url.to_owned(),
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(10),
    })
    .await?;
    let counts = count_rows(&store).await?;
    store.close().await;
    if counts != manifest.row_counts {
        return Err(BackupError::Verification {
            name: manifest.name.clone(),
            reason: format!(
                "after the restore the row counts are {counts:?}, the manifest says {:?}",
                manifest.row_counts
            ),
        });
    }
    Ok(())
}

fn request_path(config: &BackupConfig) -> PathBuf {
    config.dir.join("restore-request.json")
}

/// Records that `name` is to be restored at the next start (the API's way to restore:
/// the process restarts, and restores before it opens the database). The backup is
/// verified first, so a bad one is refused at once.
pub async fn request_restore(config: &BackupConfig, name: &str) -> Result<Manifest, BackupError> {
    let manifest = verify(config, name).await?;
    let text = serde_json::json!({ "name": name, "requested_at": chrono::Utc::now() }).to_string();
    std::fs::write(request_path(config), text).map_err(io("cannot record the restore request"))?;
    Ok(manifest)
}

/// Takes a pending restore request, if any (removing it, so a failing restore is not
/// retried at every start).
pub fn take_restore_request(config: &BackupConfig) -> Option<String> {
    let path = request_path(config);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// Undoes the last successful restore: puts its rollback point back (the database as it
/// was, kept itself as a new rollback point first).
pub async fn rollback(config: &BackupConfig) -> Result<RestoreRecord, BackupError> {
    let dir = rollback_dir(config);
    let text =
        std::fs::read_to_string(dir.join("last.json")).map_err(|_| BackupError::NoRollback)?;
    let last: RestoreRecord = serde_json::from_str(&text).map_err(|_| BackupError::NoRollback)?;
    let Some(point) = last.rollback_file.clone() else {
        return Err(BackupError::NoRollback);
    };
    let backend = backend_of(&config.database_url);
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
    let keep = match backend {
        Backend::Sqlite => dir.join(format!("before-rollback-{stamp}.sqlite3")),
        Backend::Postgres => dir.join(format!("before-rollback-{stamp}.pgdump")),
    };
    match backend {
        Backend::Sqlite => {
            sqlite::snapshot_live(&config.database_url, &keep).await?;
            sqlite::put_in_place(&config.database_url, &point, false).await?;
        }
        Backend::Postgres => {
            postgres::snapshot_live(&config.database_url, &keep).await?;
            postgres::put_in_place(&config.database_url, &point).await?;
        }
    }
    std::fs::remove_file(dir.join("last.json")).map_err(io("cannot clear the rollback record"))?;
    Ok(RestoreRecord {
        restored: last.restored,
        rollback_file: Some(keep),
        at: chrono::Utc::now(),
    })
}

/// Row counts of [`COUNTED_TABLES`] through the store.
pub async fn count_rows(
    store: &Store,
) -> Result<std::collections::BTreeMap<String, i64>, BackupError> {
    let mut counts = std::collections::BTreeMap::new();
    for table in COUNTED_TABLES {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(store.pool())
                .await?;
        counts.insert((*table).to_owned(), n);
    }
    Ok(counts)
}

/// Deletes backups older than the retention, never the newest verified one. Returns the
/// names removed. `now` is a parameter so the policy can be tested.
pub fn prune(
    config: &BackupConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, BackupError> {
    let cutoff = now - chrono::Duration::days(i64::from(config.retention_days));
    // Leftovers of backups that were interrupted (written as `.<name>.partial`).
    if let Ok(entries) = std::fs::read_dir(&config.dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
                t.elapsed()
                    .is_ok_and(|age| age > std::time::Duration::from_secs(24 * 3600))
            });
            if name.starts_with('.') && name.ends_with(".partial") && old {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let backups = list(&config.dir)?;
    let newest_verified = backups.iter().find(|m| m.verified).map(|m| m.name.clone());
    let mut removed = Vec::new();
    for m in backups {
        if m.created_at < cutoff && Some(&m.name) != newest_verified.as_ref() {
            std::fs::remove_dir_all(config.dir.join(&m.name))
                .map_err(io(format!("cannot remove backup {}", m.name)))?;
            removed.push(m.name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(
        dir: &Path,
        name: &str,
        days_ago: i64,
        verified: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let m = Manifest {
            name: name.into(),
            backend: "sqlite".into(),
            mailing_version: "test".into(),
            schema_version: 2,
            created_at: now - chrono::Duration::days(days_ago),
            file: "store.sqlite3.gz".into(),
            size_bytes: 0,
            uncompressed_bytes: 0,
            sha256: String::new(),
            row_counts: Default::default(),
            verified,
        };
        write_manifest(&d, &m).unwrap();
    }

    #[test]
    fn retention_prunes_exactly_the_old_backups_but_never_the_newest_verified() {
        let tmp = std::env::temp_dir().join(format!("mailing-prune-{}", uuid::Uuid::new_v4()));
        let now = chrono::Utc::now();
        let config = BackupConfig {
            dir: tmp.clone(),
            copy_dir: None,
            retention_days: 30,
            database_url: "sqlite://x".into(),
        };
        fake(&tmp, "a-new", 1, true, now);
        fake(&tmp, "b-29d", 29, true, now);
        fake(&tmp, "c-31d", 31, true, now);
        fake(&tmp, "d-90d", 90, false, now);
        let mut removed = prune(&config, now).unwrap();
        removed.sort();
        assert_eq!(removed, vec!["c-31d".to_owned(), "d-90d".to_owned()]);
        let left: Vec<String> = list(&tmp).unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(left, vec!["a-new".to_owned(), "b-29d".to_owned()]);

        // When every backup is old, the newest verified one stays.
        let later = now + chrono::Duration::days(400);
        let removed = prune(&config, later).unwrap();
        assert_eq!(removed, vec!["b-29d".to_owned()]);
        assert_eq!(list(&tmp).unwrap().len(), 1);
        std::fs::remove_dir_all(tmp).unwrap();
    }
}
