//! The personalize step of the send stage: the campaign's plugin chain, run on one
//! batch before rendering.
//!
//! Plugins run in the order the campaign names them. Each sees only the recipients
//! that the plugins before it kept. A `keep` merges its variables into the template
//! context (a later plugin's key wins) and may replace the subject or the From display
//! name; a `skip` takes the recipient out with the plugin's reason. When a plugin fails
//! on a batch, the recipients it was given are failed or skipped, per that plugin's
//! `on_error` policy, with the reason in the ledger; the worker and other campaigns go
//! on. A failure of the host itself (not the plugin's fault) puts them back for a retry.

use std::sync::Arc;

use mailing_plugins::{
    BreakerEvent, CircuitBreaker, Plugin, PluginError, PluginHost, PluginLogLevel, PluginRecipient,
    Verdict,
};

use super::StageError;
use crate::store::Store;
use crate::store::campaigns::{CampaignRow, PluginFailurePolicy};
use crate::store::deliveries::Recipient;

/// The plugin host and the circuit breaker, shared by every batch of the process.
#[derive(Debug, Clone)]
pub struct PluginRuntime {
    /// The wasmtime host.
    pub host: PluginHost,
    /// Switches a misbehaving plugin off per campaign.
    pub breaker: Arc<CircuitBreaker>,
}

/// One plugin of a campaign's chain, ready to run.
#[derive(Debug, Clone)]
pub struct ChainLink {
    /// `name@version`, for reasons, logs and metrics.
    pub label: String,
    /// The compiled component.
    pub plugin: Arc<Plugin>,
    /// The text of the JSON config given to `init`.
    pub config: String,
    /// What a failure does.
    pub on_error: PluginFailurePolicy,
}

/// What the chain decided for one recipient.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Render and send, with these changes.
    Send {
        /// Variables added to the template context.
        extra: serde_json::Map<String, serde_json::Value>,
        /// Replaces the rendered subject.
        subject: Option<String>,
        /// Replaces the From display name.
        from_name: Option<String>,
    },
    /// Skipped (a plugin's verdict, or a failure under the `skip` policy).
    Skip(String),
    /// Failed (a failure under the `fail` policy).
    Fail(String),
    /// Put back for a retry (the host could not run the plugin).
    Retry(String),
}

impl Plan {
    /// Send as the template renders it (no plugin, or no verdict yet).
    pub fn unchanged() -> Plan {
        Plan::Send {
            extra: serde_json::Map::new(),
            subject: None,
            from_name: None,
        }
    }
}

/// Loads the campaign's chain: each plugin's row, and its compiled component (compiled
/// now, off the executor, if this process has not seen it yet).
pub async fn load_chain(
    store: &Store,
    runtime: &PluginRuntime,
    campaign: &CampaignRow,
) -> Result<Vec<ChainLink>, StageError> {
    let chain = campaign.plugins()?;
    let mut links = Vec::with_capacity(chain.len());
    for entry in chain {
        let row = match store.plugin(entry.plugin_id).await {
            Ok(row) => row,
            Err(crate::StoreError::NotFound(_)) => {
                return Err(StageError::Permanent(format!(
                    "plugin {} of campaign {} no longer exists",
                    entry.plugin_id, campaign.id
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let label = format!("{}@{}", row.name, row.version);
        let plugin = if let Some(plugin) = runtime.host.get(&row.sha256) {
            Ok(plugin)
        } else {
            let bytes = store.plugin_component(row.id).await?;
            let host = runtime.host.clone();
            let sha = row.sha256.clone();
            tokio::task::spawn_blocking(move || host.load(&sha, &bytes))
                .await
                .map_err(|e| StageError::Permanent(format!("compiling plugin {label}: {e}")))?
        }
        .map_err(|e| StageError::Permanent(format!("plugin {label} cannot be loaded: {e}")))?;
        let config = match &entry.config {
            Some(value) => value.to_string(),
            None => "null".to_owned(),
        };
        links.push(ChainLink {
            label,
            plugin,
            config,
            on_error: entry.on_error,
        });
    }
    Ok(links)
}

/// Runs the chain on a batch. Blocking: call it from `spawn_blocking`.
pub fn run_chain(
    runtime: &PluginRuntime,
    chain: &[ChainLink],
    campaign: &CampaignRow,
    recipients: &[Recipient],
) -> Vec<Plan> {
    let mut plans = vec![Plan::unchanged(); recipients.len()];
    let campaign_id = campaign.id as u64;
    for link in chain {
        let active: Vec<usize> = (0..plans.len())
            .filter(|&i| matches!(plans[i], Plan::Send { .. }))
            .collect();
        if active.is_empty() {
            break;
        }
        if let Err(off) = runtime.breaker.check(campaign_id, &link.label) {
            fail_all(&mut plans, &active, link, &off);
            continue;
        }
        let input: Vec<PluginRecipient> = active
            .iter()
            .map(|&i| {
                let r = &recipients[i];
                PluginRecipient {
                    id: r.subscriber_id as u64,
                    email: r.email.clone(),
                    name: r.name.clone(),
                    attributes: r.attributes.clone(),
                }
            })
            .collect();
        let count = input.len();
        let run = runtime.host.run_batch_owned(
            &link.plugin,
            &link.config,
            campaign_id,
            &campaign.name,
            input,
        );
        for line in &run.logs {
            log_line(&link.label, campaign.id, line.level, &line.message);
        }
        if run.dropped_logs > 0 {
            tracing::warn!(plugin = %link.label, campaign_id = campaign.id,
                dropped = run.dropped_logs, "Plugin log lines dropped over the limit");
        }
        crate::telemetry::PluginCalled {
            plugin: &link.label,
            outcome: run.result.as_ref().map_or_else(|e| e.kind(), |_| "ok"),
            recipients: count,
            fuel: run.fuel_used,
            elapsed: run.elapsed,
        }
        .emit();
        match run.result {
            Ok(verdicts) => {
                runtime.breaker.record(campaign_id, &link.label, Ok(()));
                for (&i, verdict) in active.iter().zip(verdicts) {
                    apply(&mut plans[i], verdict, &link.label);
                }
            }
            Err(error) => {
                if runtime
                    .breaker
                    .record(campaign_id, &link.label, Err(&error))
                    == BreakerEvent::Tripped
                {
                    crate::telemetry::PluginSwitchedOff {
                        plugin: &link.label,
                        campaign_id: campaign.id,
                        last_error: &error.to_string(),
                    }
                    .emit();
                }
                fail_all(&mut plans, &active, link, &error);
            }
        }
    }
    plans
}

fn apply(plan: &mut Plan, verdict: Verdict, label: &str) {
    let Plan::Send {
        extra,
        subject,
        from_name,
    } = plan
    else {
        return;
    };
    match verdict {
        Verdict::Keep {
            variables,
            subject: new_subject,
            from_name: new_from,
        } => {
            extra.extend(variables);
            if new_subject.is_some() {
                *subject = new_subject;
            }
            if new_from.is_some() {
                *from_name = new_from;
            }
        }
        Verdict::Skip { reason } => {
            *plan = Plan::Skip(format!("skipped by plugin {label}: {reason}"))
        }
    }
}

fn fail_all(plans: &mut [Plan], active: &[usize], link: &ChainLink, error: &PluginError) {
    let reason = format!("plugin {}: {error}", link.label);
    for &i in active {
        plans[i] = match (error, link.on_error) {
            (PluginError::Host(_), _) => Plan::Retry(reason.clone()),
            (_, PluginFailurePolicy::Fail) => Plan::Fail(reason.clone()),
            (_, PluginFailurePolicy::Skip) => Plan::Skip(reason.clone()),
        };
    }
}

fn log_line(plugin: &str, campaign_id: i64, level: PluginLogLevel, message: &str) {
    match level {
        PluginLogLevel::Trace => tracing::trace!(plugin, campaign_id, message, "Plugin log"),
        PluginLogLevel::Debug => tracing::debug!(plugin, campaign_id, message, "Plugin log"),
        PluginLogLevel::Info => tracing::info!(plugin, campaign_id, message, "Plugin log"),
        PluginLogLevel::Warn => tracing::warn!(plugin, campaign_id, message, "Plugin log"),
        PluginLogLevel::Error => tracing::error!(plugin, campaign_id, message, "Plugin log"),
    }
}
