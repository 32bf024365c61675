//! PostgreSQL backups with the client tools: `pg_dump --format=custom` (compressed,
//! consistent under concurrent writes), verified by restoring into a temporary database
//! and counting rows; restored with `pg_restore --clean --single-transaction`, so a
//! failed restore changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use sqlx::Connection;

use super::{BackupError, COUNTED_TABLES, Manifest};

async fn run(tool: &'static str, args: &[&str]) -> Result<(), BackupError> {
    let output = tokio::process::Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackupError::MissingTool(tool)
            } else {
                BackupError::Tool {
                    tool,
                    stderr: e.to_string(),
                }
            }
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BackupError::Tool {
            tool,
            stderr: String::from_utf8_lossy(&output.stderr)
                .trim()
                .chars()
                .take(2000)
                .collect(),
        })
    }
}

fn with_database(url: &str, database: &str) -> Result<String, BackupError> {
    let mut u = url::Url::parse(url).map_err(|e| BackupError::Tool {
        tool: "postgres",
        stderr: format!("DATABASE_URL: {e}"),
    })?;
    u.set_path(&format!("/{database}"));
    Ok(u.to_string())
}

async fn counts(url: &str) -> Result<(BTreeMap<String, i64>, i64), BackupError> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut counts = BTreeMap::new();
    for table in COUNTED_TABLES {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut conn)
                .await?;
        counts.insert((*table).to_owned(), n);
    }
    let schema: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok((counts, schema))
}

/// Restores `file` into a throwaway database and counts its rows.
async fn restore_and_count(
    url: &str,
    file: &Path,
) -> Result<(BTreeMap<String, i64>, i64), BackupError> {
    let temp = format!("mailing_verify_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {temp}")))
        .execute(&mut admin)
        .await?;
    let temp_url = with_database(url, &temp)?;
    let file_arg = file.display().to_string();
    let result = async {
        run(
            "pg_restore",
            &[
                "--no-owner",
                "--exit-on-error",
                "--dbname",
                &temp_url,
                &file_arg,
            ],
        )
        .await?;
        counts(&temp_url).await
    }
    .await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {temp} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
    result
}

/// Writes `store.pgdump` into `dir` and returns a manifest with the dump's counts.
pub(super) async fn dump(url: &str, dir: &Path) -> Result<Manifest, BackupError> {
    let file = dir.join("store.pgdump");
    let file_arg = file.display().to_string();
    run(
        "pg_dump",
        &[
            "--format=custom",
            "--no-owner",
            "--file",
            &file_arg,
            "--dbname",
            url,
        ],
    )
    .await?;
    let (row_counts, schema_version) = restore_and_count(url, &file).await?;
    Ok(Manifest {
        name: String::new(),
        backend: "postgres".into(),
        mailing_version: String::new(),
        schema_version,
        created_at: chrono::Utc::now(),
        file: "store.pgdump".into(),
        size_bytes: 0,
        uncompressed_bytes: 0,
        sha256: String::new(),
        row_counts,
        verified: false,
    })
}

/// Restores the dump into a temporary database and returns its row counts.
pub(super) async fn check_copy(
    url: &str,
    file: &Path,
) -> Result<BTreeMap<String, i64>, BackupError> {
    restore_and_count(url, file).await.map(|(c, _)| c)
}

/// Dumps the live database to `dest`.
pub(super) async fn snapshot_live(url: &str, dest: &Path) -> Result<(), BackupError> {
    let dest_arg = dest.display().to_string();
    run(
        "pg_dump",
        &[
            "--format=custom",
            "--no-owner",
            "--file",
            &dest_arg,
            "--dbname",
            url,
        ],
    )
    .await
}

/// Replaces the live database's contents with the dump, in one transaction.
pub(super) async fn put_in_place(url: &str, file: &Path) -> Result<(), BackupError> {
    let file_arg = file.display().to_string();
    run(
        "pg_restore",
        &[
            "--clean",
            "--if-exists",
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            "--dbname",
            url,
            &file_arg,
        ],
    )
    .await
}
