//! `mailing`: the one binary of Mailing. `serve` (the default) runs the API and the
//! workers in one process; `api` and `worker` split them for a fleet; `migrate` applies
//! the schema; `config check` prints the effective configuration with secrets masked;
//! `bench` measures the engine end to end.

mod allocator;
mod app;
mod bench;
mod config;
mod plugin_cli;
mod supervisor;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Mode;
use crate::config::Config;

/// Sets glibc's malloc for a process whose threads hand buffers to each other (sqlx's
/// one thread per SQLite connection allocates every row, a tokio worker frees it):
///
/// - **Arenas: two per core** (`MALLOC_ARENA_MAX` overrides). glibc's default, eight
///   per core, leaves freed message buffers resident in many arenas (159 MiB at 100k
///   against 106 MiB with two arenas); two arenas in all made threads queue on their
///   locks (the API profile: ~20% of the CPU in futex waits under `malloc` and `free`).
/// - **A fixed mmap threshold of 128 KiB** (`MALLOC_MMAP_THRESHOLD_` overrides). glibc
///   raises its threshold to the size of each large block freed, up to 32 MiB, so the
///   provider's request bodies and the plan's pages end up in the arenas and stay
///   resident after they are freed; a fixed threshold maps and unmaps them.
///
/// `mailing bench --recipients 1000000`, alternated with the two-arena setting on one
/// machine: see BENCHMARKS.md (eighth stop). Rust's own allocations go to mimalloc
/// (`allocator.rs`); these settings are for SQLite's, which call glibc's `malloc`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let arenas = i32::try_from(cores.saturating_mul(2)).unwrap_or(i32::MAX);
    // SAFETY: mallopt only sets allocator parameters; it runs first thing in main,
    // before this process starts any thread.
    unsafe {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, arenas.max(2));
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Allocations from this size up are mapped on their own and returned when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 128 * 1024;

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// A self-hosted email campaign engine.
#[derive(Debug, Parser)]
#[command(name = "mailing", version, about = "Mailing: a self-hosted email campaign engine", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API and the workers in one process (the default).
    Serve,
    /// Run the API (and the scheduler) only.
    Api,
    /// Run the pipeline workers (and the scheduler) only: a fleet member.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Back up, verify and restore the store.
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Inspect a campaign's ledger and retry its failed recipients.
    Campaign {
        #[command(subcommand)]
        action: CampaignAction,
    },
    /// Measure the engine: one campaign through the real pipeline to an in-process
    /// sink, beside the limits measured in the same run (or the HTTP API under wrk).
    Bench(bench::BenchArgs),
    /// Check WebAssembly personalization plugins.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// Validate a component as an upload would, then dry-run it on sample recipients.
    Check {
        /// The component (`.wasm`).
        file: std::path::PathBuf,
        /// The JSON config given to the plugin's `init`.
        #[arg(long, default_value = "null")]
        config: String,
        /// How many sample recipients the dry run takes.
        #[arg(long, default_value_t = 20)]
        sample: usize,
    },
}

#[derive(Debug, Subcommand)]
enum BackupAction {
    /// Take a backup now (safe while campaigns run), verify it, and print its manifest.
    Create,
    /// List the backups in BACKUP_DIR, newest first.
    List,
    /// Verify a backup: checksum, open the copy, integrity check, row counts.
    Verify {
        /// The backup's name (see `list`).
        name: String,
    },
    /// Restore a backup into the live database (stop Mailing first); the current
    /// database is kept as a rollback point and put back if anything fails.
    Restore {
        /// The backup's name (see `list`).
        name: String,
    },
    /// Undo the last successful restore.
    Rollback,
    /// Delete backups older than BACKUP_RETENTION_DAYS (never the newest verified one).
    Prune,
}

#[derive(Debug, Subcommand)]
enum CampaignAction {
    /// List a campaign's recipients and their outcomes (one line each).
    Deliveries {
        /// The campaign id.
        id: i64,
        /// Only this status (pending, sending, sent, failed, skipped, bounced, complained).
        #[arg(long)]
        status: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put the campaign's failed recipients back to pending and send them again.
    RetryFailed {
        /// The campaign id.
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print the effective configuration (secrets masked) and exit non-zero if invalid.
    Check,
    /// Print every setting with its default and meaning, as a Markdown table.
    Docs,
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = app::open_store(config).await?;
    println!(
        "database is at the latest schema ({} migrations)",
        store.migration_count()
    );
    store.close().await;
    Ok(())
}

async fn backup(config: &Config, action: BackupAction) -> anyhow::Result<()> {
    use mailing_jobs::backup;
    let settings = &config.backup;
    match action {
        BackupAction::Create => {
            let store = app::open_store(config).await?;
            eprintln!("backing up to {} ...", settings.dir.display());
            let manifest = backup::create(&store, settings).await?;
            store.close().await;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        BackupAction::List => {
            for m in backup::list(&settings.dir)? {
                println!(
                    "{}\t{}\t{} bytes\t{}\t{}",
                    m.name,
                    m.created_at.to_rfc3339(),
                    m.size_bytes,
                    if m.verified { "verified" } else { "unverified" },
                    m.row_counts.get("deliveries").copied().unwrap_or_default(),
                );
            }
        }
        BackupAction::Verify { name } => {
            let m = backup::verify(settings, &name).await?;
            println!(
                "backup {name} is intact: sha256 {} and row counts match",
                m.sha256
            );
        }
        BackupAction::Restore { name } => {
            eprintln!(
                "verifying {name}, keeping the current database as a rollback point, restoring ..."
            );
            let record = backup::restore(settings, &name).await?;
            match record.rollback_file {
                Some(f) => println!(
                    "restored {name}; the previous database is kept at {} (undo with `mailing backup rollback`)",
                    f.display()
                ),
                None => println!("restored {name} into a fresh data directory"),
            }
        }
        BackupAction::Rollback => {
            let record = backup::rollback(settings).await?;
            println!(
                "rolled back the restore of {}; the database you left is kept at {}",
                record.restored,
                record
                    .rollback_file
                    .map(|f| f.display().to_string())
                    .unwrap_or_default()
            );
        }
        BackupAction::Prune => {
            for name in backup::prune(settings, chrono::Utc::now())? {
                println!("pruned {name}");
            }
        }
    }
    Ok(())
}

async fn campaign(config: &Config, action: CampaignAction) -> anyhow::Result<()> {
    let store = app::open_store(config).await?;
    match action {
        CampaignAction::Deliveries { id, status, limit } => {
            store.campaign(id).await?;
            let status = status
                .map(|s| s.parse::<mailing_jobs::DeliveryStatus>())
                .transpose()?;
            let mut after = 0;
            let mut left = limit;
            while left > 0 {
                let page = store
                    .deliveries(id, status, None, after, left.min(500))
                    .await?;
                for d in &page.items {
                    println!(
                        "{}\t{}\t{}\tattempts={}\t{}",
                        d.id,
                        d.email,
                        d.status,
                        d.attempts,
                        d.last_error.as_deref().unwrap_or("")
                    );
                }
                left = left.saturating_sub(page.items.len() as u32);
                match page.next.and_then(|n| n.parse().ok()) {
                    Some(next) => after = next,
                    None => break,
                }
            }
        }
        CampaignAction::RetryFailed { id } => {
            store.campaign(id).await?;
            let retried = store.retry_failed(id).await?;
            let status = store.campaign(id).await?.status()?;
            if retried > 0 && status == mailing_jobs::CampaignStatus::Running {
                let queue = app::open_queue(config).await?;
                queue
                    .push_plan(mailing_jobs::pipeline::PlanCampaign::new(id))
                    .await?;
            }
            println!("campaign {id}: {retried} failed recipients back to pending; status {status}");
        }
    }
    store.close().await;
    Ok(())
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    // One TLS crypto provider for the process (reqwest and lettre both use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: cannot read .env: {e}");
        return ExitCode::from(2);
    }
    if let Some(Command::Config {
        action: ConfigAction::Docs,
    }) = &cli.command
    {
        print!("{}", config::docs_table());
        return ExitCode::SUCCESS;
    }
    let mut config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The bench's own process logs only what matters unless told otherwise.
    if matches!(cli.command, Some(Command::Bench(_)))
        && std::env::var_os("LOG_LEVEL").is_none()
        && std::env::var_os("RUST_LOG").is_none()
    {
        config.log_level = "warn".into();
    }
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Config { .. } = command {
        print!("{}", config.describe());
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let telemetry = telemetry::init(&config, matches!(command, Command::Bench(_)));
    let registry = telemetry.registry.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Serve => app::run(config, Mode::Serve, registry).await,
            Command::Api => app::run(config, Mode::Api, registry).await,
            Command::Worker => app::run(config, Mode::Worker, registry).await,
            other => run_command(&config, other)
                .await
                .map(|()| app::Exit::Signal),
        }
    });
    drop(runtime);
    telemetry.shutdown();
    finish(match result {
        Ok(app::Exit::Restart) => Err(restart_self()),
        Ok(app::Exit::Signal) => Ok(()),
        Err(e) => Err(e),
    })
}

/// Replaces this process with a fresh one (same arguments and environment). Returns only
/// if that fails.
fn restart_self() -> anyhow::Error {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow::anyhow!("cannot restart: {e}"),
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .exec();
        anyhow::anyhow!("cannot restart: {err}")
    }
    #[cfg(not(unix))]
    {
        anyhow::anyhow!(
            "restart is only supported on unix; start {} again",
            exe.display()
        )
    }
}

async fn run_command(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate => migrate(config).await,
        Command::Campaign { action } => campaign(config, action).await,
        Command::Backup { action } => backup(config, action).await,
        Command::Bench(args) => bench::run(config, args).await,
        Command::Plugin {
            action:
                PluginAction::Check {
                    file,
                    config: plugin_config,
                    sample,
                },
        } => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                plugin_cli::check(&config, &file, &plugin_config, sample)
            })
            .await?
        }
        Command::Serve | Command::Api | Command::Worker | Command::Config { .. } => Ok(()),
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
