//! End to end: the command line. Production refuses weak or missing secrets and says
//! what to set; `config check` masks secrets; `migrate` applies the schema.

mod support;

use std::process::Command;

fn mailing(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> std::process::Output {
    Command::new(support::binary())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

#[test]
fn production_refuses_to_start_without_strong_secrets_and_says_what_to_set() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = mailing(
        &["serve"],
        &[("ENVIRONMENT", "production"), ("ADMIN_PASSWORD", "admin")],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AUTH_SECRET_KEY is required in production"),
        "{stderr}"
    );
    assert!(stderr.contains("ADMIN_PASSWORD is too weak"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = mailing(
        &["config", "check"],
        &[
            ("DATABASE_URL", "postgres://app:hunter2@db.internal/mailing"),
            ("SMTP_PASSWORD", "smtp-secret-value"),
            ("SMTP_HOST", "smtp.example"),
        ],
        dir.path(),
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("smtp-secret-value"),
        "{stdout}"
    );
    assert!(
        stdout.contains("postgres://app:***@db.internal/mailing"),
        "{stdout}"
    );
    assert!(
        stdout.contains("BATCH_SIZE") && stdout.contains("500"),
        "{stdout}"
    );
    assert!(stdout.contains("providers=file,smtp"), "{stdout}");
}

#[test]
fn config_check_rejects_invalid_values_naming_each() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = mailing(
        &["config", "check"],
        &[("HTTP_PORT", "eighty"), ("SMTP_TLS", "maybe")],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HTTP_PORT") && stderr.contains("SMTP_TLS"),
        "{stderr}"
    );
}

#[test]
fn migrate_creates_the_sqlite_database_and_is_repeatable() {
    let dir = tempfile::tempdir().expect("tmp");
    for _ in 0..2 {
        let out = mailing(&["migrate"], &[], dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("latest schema"));
    }
    assert!(dir.path().join("data/mailing.sqlite3").exists());
}
