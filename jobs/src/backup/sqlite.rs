//! SQLite backups: `VACUUM INTO` gives a consistent copy of a live WAL database without
//! stopping writers; the copy is gzip-compressed. Verification decompresses it to a
//! temporary file, runs `PRAGMA integrity_check` and counts rows.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::{BackupError, COUNTED_TABLES, Manifest, io};
use crate::store::{Store, sqlite_path};

fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

fn live_path(url: &str) -> Result<PathBuf, BackupError> {
    sqlite_path(url)
        .map(PathBuf::from)
        .ok_or_else(|| BackupError::Tool {
            tool: "sqlite",
            stderr: "an in-memory database cannot be backed up or restored".into(),
        })
}

/// Opens a database file read-only, checks its integrity, and counts rows.
async fn inspect(path: &Path) -> Result<(BTreeMap<String, i64>, i64), BackupError> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let result = async {
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await?;
        if check != "ok" {
            return Err(BackupError::Tool {
                tool: "integrity_check",
                stderr: check,
            });
        }
        let mut counts = BTreeMap::new();
        for table in COUNTED_TABLES {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(&pool)
                    .await?;
            counts.insert((*table).to_owned(), n);
        }
        let schema: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&pool)
            .await?;
        Ok((counts, schema))
    }
    .await;
    pool.close().await;
    result
}

fn gzip(from: &Path, to: &Path) -> Result<(), BackupError> {
    let mut input =
        std::fs::File::open(from).map_err(io(format!("cannot read {}", from.display())))?;
    let output = std::fs::File::create(to).map_err(io(format!("cannot write {}", to.display())))?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder).map_err(io("cannot compress the copy"))?;
    let file = encoder.finish().map_err(io("cannot compress the copy"))?;
    file.sync_all().map_err(io("cannot flush the backup"))
}

fn gunzip(from: &Path, to: &Path) -> Result<(), BackupError> {
    let input = std::fs::File::open(from).map_err(io(format!("cannot read {}", from.display())))?;
    let mut decoder = flate2::read::GzDecoder::new(input);
    let mut output =
        std::fs::File::create(to).map_err(io(format!("cannot write {}", to.display())))?;
    let mut buf = vec![0_u8; 1 << 16];
    loop {
        let n = decoder.read(&mut buf).map_err(|e| BackupError::Tool {
            tool: "gunzip",
            stderr: format!("the compressed copy is damaged: {e}"),
        })?;
        if n == 0 {
            break;
        }
        output
            .write_all(&buf[..n])
            .map_err(io(format!("cannot write {}", to.display())))?;
    }
    output
        .sync_all()
        .map_err(io("cannot flush the decompressed copy"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackupError::Tool {
            tool: "backup task",
            stderr: e.to_string(),
        })?
}

/// Writes `store.sqlite3.gz` into `dir` and returns a manifest with the copy's counts.
pub(super) async fn dump(store: &Store, dir: &Path) -> Result<Manifest, BackupError> {
    let copy = dir.join("store.sqlite3");
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM INTO {}", quote(&copy))))
        .execute(store.pool())
        .await?;
    let (row_counts, schema_version) = inspect(&copy).await?;
    let uncompressed_bytes = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
    let gz = dir.join("store.sqlite3.gz");
    let (from, to) = (copy.clone(), gz.clone());
    blocking(move || gzip(&from, &to)).await?;
    std::fs::remove_file(&copy).map_err(io("cannot remove the uncompressed copy"))?;
    Ok(Manifest {
        name: String::new(),
        backend: "sqlite".into(),
        mailing_version: String::new(),
        schema_version,
        created_at: chrono::Utc::now(),
        file: "store.sqlite3.gz".into(),
        size_bytes: 0,
        uncompressed_bytes,
        sha256: String::new(),
        row_counts,
        verified: false,
    })
}

/// Decompresses a backup to a temporary file, checks it, and returns its row counts.
pub(super) async fn check_copy(gz: &Path) -> Result<BTreeMap<String, i64>, BackupError> {
    let tmp = std::env::temp_dir().join(format!("mailing-verify-{}.sqlite3", uuid::Uuid::new_v4()));
    let (from, to) = (gz.to_path_buf(), tmp.clone());
    let result = async {
        blocking(move || gunzip(&from, &to)).await?;
        inspect(&tmp).await.map(|(counts, _)| counts)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Whether the live database file exists.
pub(super) fn live_exists(url: &str) -> bool {
    live_path(url).is_ok_and(|p| p.exists())
}

/// Removes a live database file (undoing a restore into a fresh directory).
pub(super) fn remove_live(url: &str) -> Result<(), BackupError> {
    let live = live_path(url)?;
    for path in [
        live.clone(),
        PathBuf::from(format!("{}-wal", live.display())),
        PathBuf::from(format!("{}-shm", live.display())),
    ] {
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(format!("cannot remove {}", path.display())))?;
        }
    }
    Ok(())
}

/// Copies the live database (consistently) to `dest`, uncompressed.
pub(super) async fn snapshot_live(url: &str, dest: &Path) -> Result<(), BackupError> {
    let live = live_path(url)?;
    if !live.exists() {
        return Err(BackupError::Tool {
            tool: "sqlite",
            stderr: format!("the live database {} does not exist", live.display()),
        });
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(&live))
        .await?;
    let result = sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM INTO {}", quote(dest))))
        .execute(&pool)
        .await;
    pool.close().await;
    result?;
    Ok(())
}

/// Replaces the live database file with `src` (gzip-compressed when `compressed`).
/// Mailing must be stopped: the live database is checkpointed, the new file is written
/// beside it and renamed over it, and the old WAL files are removed.
pub(super) async fn put_in_place(
    url: &str,
    src: &Path,
    compressed: bool,
) -> Result<(), BackupError> {
    let live = live_path(url)?;
    if live.exists() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(SqliteConnectOptions::new().filename(&live))
            .await?;
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&pool)
            .await;
        pool.close().await;
    }
    if let Some(dir) = live.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    let staged = PathBuf::from(format!("{}.restoring", live.display()));
    let (from, to) = (src.to_path_buf(), staged.clone());
    blocking(move || {
        if compressed {
            gunzip(&from, &to)
        } else {
            std::fs::copy(&from, &to)
                .map(|_| ())
                .map_err(io(format!("cannot copy {}", from.display())))
        }
    })
    .await?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", live.display()));
        if side.exists() {
            std::fs::remove_file(&side).map_err(io(format!("cannot remove {}", side.display())))?;
        }
    }
    std::fs::rename(&staged, &live).map_err(io(format!(
        "cannot move the restored database to {}",
        live.display()
    )))
}
