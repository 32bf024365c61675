//! `mailing plugin check FILE`: validates a plugin component the way an upload does,
//! then dry-runs it on sample recipients under the configured limits (`PLUGIN_*`), and
//! prints what it decided, the fuel and time it used and what it logged. Nothing is
//! stored and nothing is sent.

use std::path::Path;

use anyhow::Context as _;
use mailing_plugins::{PluginHost, PluginRecipient, Verdict};

use crate::config::Config;

/// The most sample recipients a dry run takes.
pub const MAX_SAMPLE: usize = 10_000;

/// Sample recipients with varied attributes, the same for every run.
pub fn sample_recipients(n: usize) -> Vec<PluginRecipient> {
    const LANGS: &[&str] = &["en", "fr", "de", "es", "it", "pt-BR", "nl", "xx"];
    const PLANS: &[&str] = &["free", "pro", "team"];
    const NAMES: &[&str] = &["Ada", "Marie", "Jürgen", "Lucía", "Giulia", "João", "Sanne"];
    (0..n)
        .map(|i| {
            let name = (i % 5 != 4).then(|| NAMES[i % NAMES.len()].to_owned());
            let attributes = serde_json::json!({
                "lang": LANGS[i % LANGS.len()],
                "plan": PLANS[i % PLANS.len()],
                "orders": i % 13,
                "country": if i % 2 == 0 { "FR" } else { "US" },
            });
            PluginRecipient {
                id: i as u64 + 1,
                email: format!("sample{}@example.com", i + 1),
                name,
                attributes: attributes.to_string(),
            }
        })
        .collect()
}

/// Runs `mailing plugin check`.
pub fn check(
    config: &Config,
    file: &Path,
    plugin_config: &str,
    sample: usize,
) -> anyhow::Result<()> {
    if sample == 0 || sample > MAX_SAMPLE {
        anyhow::bail!("--sample must be between 1 and {MAX_SAMPLE}");
    }
    serde_json::from_str::<serde_json::Value>(plugin_config)
        .context("--config is not valid JSON")?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let host = PluginHost::new(config.plugin_limits.clone(), None)?;
    let (info, plugin) = host
        .validate(&bytes)
        .with_context(|| format!("{} is not a valid plugin", file.display()))?;
    println!(
        "{}: a valid plugin component ({} bytes, sha256 {})",
        file.display(),
        info.size,
        info.sha256
    );
    let recipients = sample_recipients(sample);
    let run = host.run_batch(&plugin, plugin_config, 1, "plugin check", &recipients);
    for line in &run.logs {
        println!("log {:?}: {}", line.level, line.message);
    }
    if run.dropped_logs > 0 {
        println!(
            "({} more log lines dropped over the limit)",
            run.dropped_logs
        );
    }
    let limits = host.limits();
    println!(
        "dry run on {} sample recipients: {:.2} ms, fuel {} of {} ({:.1}%)",
        recipients.len(),
        run.elapsed.as_secs_f64() * 1000.0,
        run.fuel_used,
        limits.fuel_per_batch,
        run.fuel_used as f64 * 100.0 / limits.fuel_per_batch as f64
    );
    let verdicts = run.result.context("the dry run failed")?;
    let kept = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Keep { .. }))
        .count();
    println!("kept {kept}, skipped {}", verdicts.len() - kept);
    for (r, v) in recipients.iter().zip(&verdicts).take(5) {
        match v {
            Verdict::Keep {
                variables,
                subject,
                from_name,
            } => println!(
                "  {} keep variables={} subject={subject:?} from_name={from_name:?}",
                r.email,
                serde_json::Value::Object(variables.clone())
            ),
            Verdict::Skip { reason } => println!("  {} skip: {reason}", r.email),
        }
    }
    Ok(())
}
