//! One call of a plugin: a fresh instance per batch, `init` with the campaign's config,
//! then `batch`, under fuel, an epoch deadline, a memory cap and size bounds.
//!
//! Blocking and CPU-bound: call it from `spawn_blocking` or a thread of your own,
//! never from an async executor's thread.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::v0_1;
use crate::bindings::v0_1::mailing::plugin::host::LogLevel;
use crate::bindings::v0_1::mailing::plugin::types as wit;
use crate::error::PluginError;
use crate::host::{EPOCH_TICK, Plugin, PluginHost};

/// Bytes kept of what a plugin writes to stdout and stderr in one call.
const STDIO_CAPTURE_BYTES: usize = 16 << 10;

/// One recipient, as a plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRecipient {
    /// The subscriber's id.
    pub id: u64,
    /// The address.
    pub email: String,
    /// The display name.
    pub name: Option<String>,
    /// The attributes, as the text of a JSON object.
    pub attributes: String,
}

/// A plugin's decision for one recipient.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send, with these changes.
    Keep {
        /// Variables added to the template context.
        variables: serde_json::Map<String, serde_json::Value>,
        /// A subject line replacing the rendered one.
        subject: Option<String>,
        /// A display name for the From header.
        from_name: Option<String>,
    },
    /// Do not send; the reason goes to the ledger.
    Skip {
        /// Why.
        reason: String,
    },
}

/// The severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginLogLevel {
    /// `trace`.
    Trace,
    /// `debug`.
    Debug,
    /// `info`.
    Info,
    /// `warn`, and anything written to stderr.
    Warn,
    /// `error`.
    Error,
}

/// A line a plugin logged during a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLogLine {
    /// Its severity.
    pub level: PluginLogLevel,
    /// Its text, truncated to the host's limit.
    pub message: String,
}

/// What one call produced, whatever its outcome.
#[derive(Debug)]
pub struct BatchRun {
    /// One verdict per recipient, in order, or why there are none.
    pub result: Result<Vec<Verdict>, PluginError>,
    /// Fuel the call used.
    pub fuel_used: u64,
    /// Wall time of instantiation and both calls.
    pub elapsed: Duration,
    /// What the plugin logged (and wrote to stdout/stderr), within limits.
    pub logs: Vec<PluginLogLine>,
    /// Log lines dropped over the limit.
    pub dropped_logs: usize,
}

/// The state of one store: WASI with nothing granted, the memory limiter and the log.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    logs: Vec<PluginLogLine>,
    dropped_logs: usize,
    max_log_lines: usize,
    max_log_line_bytes: usize,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v0_1::mailing::plugin::types::Host for PluginState {}

impl v0_1::mailing::plugin::host::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Trace => PluginLogLevel::Trace,
            LogLevel::Debug => PluginLogLevel::Debug,
            LogLevel::Info => PluginLogLevel::Info,
            LogLevel::Warn => PluginLogLevel::Warn,
            LogLevel::Error => PluginLogLevel::Error,
        };
        self.push_log(level, &message);
    }
}

impl PluginState {
    fn push_log(&mut self, level: PluginLogLevel, message: &str) {
        if self.logs.len() >= self.max_log_lines {
            self.dropped_logs += 1;
            return;
        }
        self.logs.push(PluginLogLine {
            level,
            message: truncate(message, self.max_log_line_bytes),
        });
    }
}

/// Caps linear memory and tables, and remembers that it refused, so a memory bomb is
/// reported as such rather than as the trap the guest's allocator turns it into.
struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    denied_memory: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.denied_memory = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn classify(error: &wasmtime::Error, state: &PluginState, host: &PluginHost) -> PluginError {
    let limits = &host.inner.limits;
    if let Some(trap) = error.downcast_ref::<Trap>() {
        match trap {
            Trap::OutOfFuel => {
                return PluginError::OutOfFuel {
                    fuel: limits.fuel_per_batch,
                };
            }
            Trap::Interrupt => {
                return PluginError::Deadline {
                    ms: limits.deadline.as_millis() as u64,
                };
            }
            Trap::StackOverflow => return PluginError::StackOverflow,
            _ => {}
        }
    }
    if state.limiter.denied_memory {
        return PluginError::MemoryLimit {
            bytes: limits.memory_bytes,
        };
    }
    let text = format!("{error}");
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return PluginError::Malformed(format!(
            "it handed the host more than {} bytes in one call",
            limits.max_output_bytes
        ));
    }
    PluginError::Trap(truncate(text.lines().next().unwrap_or(&text), 400))
}

fn input_bytes(config: &str, recipients: &[PluginRecipient]) -> usize {
    config.len()
        + recipients
            .iter()
            .map(|r| 8 + r.email.len() + r.name.as_deref().map_or(0, str::len) + r.attributes.len())
            .sum::<usize>()
}

/// A verdict's `variables`: the text of a JSON object. `{}`, what most verdicts carry,
/// skips the parser.
fn parse_variables(
    i: usize,
    text: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, PluginError> {
    if text.trim() == "{}" {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(PluginError::Malformed(format!(
            "verdict {i}: `variables` is not a JSON object"
        ))),
        Err(e) => Err(PluginError::Malformed(format!(
            "verdict {i}: `variables` is not JSON: {e}"
        ))),
    }
}

fn convert(
    verdicts: Vec<wit::Verdict>,
    expected: usize,
    max_output: usize,
) -> Result<Vec<Verdict>, PluginError> {
    if verdicts.len() != expected {
        return Err(PluginError::Malformed(format!(
            "{} verdicts for {expected} recipients",
            verdicts.len()
        )));
    }
    let size: usize = verdicts
        .iter()
        .map(|v| match v {
            wit::Verdict::Keep(k) => {
                k.variables.len()
                    + k.subject.as_deref().map_or(0, str::len)
                    + k.from_name.as_deref().map_or(0, str::len)
            }
            wit::Verdict::Skip(reason) => reason.len(),
        })
        .sum();
    if size > max_output {
        return Err(PluginError::Malformed(format!(
            "{size} bytes of verdicts; the limit is {max_output} bytes"
        )));
    }
    verdicts
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            wit::Verdict::Keep(k) => Ok(Verdict::Keep {
                variables: parse_variables(i, &k.variables)?,
                subject: k.subject.map(|s| s.replace(['\r', '\n'], " ")),
                from_name: k
                    .from_name
                    .map(|s| s.replace(['\r', '\n', '"', '<', '>'], " ")),
            }),
            wit::Verdict::Skip(reason) => Ok(Verdict::Skip {
                reason: truncate(&reason, 500),
            }),
        })
        .collect()
}

impl PluginHost {
    /// Runs `plugin` on one batch: a fresh instance, `init(config)`, then `batch`.
    /// Blocks; never panics on anything the plugin does. Copies the recipients; see
    /// [`PluginHost::run_batch_owned`] to hand them over instead.
    pub fn run_batch(
        &self,
        plugin: &Plugin,
        config: &str,
        campaign_id: u64,
        campaign_name: &str,
        recipients: &[PluginRecipient],
    ) -> BatchRun {
        self.run_batch_owned(
            plugin,
            config,
            campaign_id,
            campaign_name,
            recipients.to_vec(),
        )
    }

    /// [`PluginHost::run_batch`], taking the recipients by value (no copy of their
    /// strings on the way into the guest).
    pub fn run_batch_owned(
        &self,
        plugin: &Plugin,
        config: &str,
        campaign_id: u64,
        campaign_name: &str,
        recipients: Vec<PluginRecipient>,
    ) -> BatchRun {
        let started = Instant::now();
        let limits = &self.inner.limits;
        let size = input_bytes(config, &recipients);
        if size > limits.max_input_bytes {
            return BatchRun {
                result: Err(PluginError::InputTooLarge {
                    size,
                    max: limits.max_input_bytes,
                }),
                fuel_used: 0,
                elapsed: started.elapsed(),
                logs: Vec::new(),
                dropped_logs: 0,
            };
        }
        let _slot = self.inner.slots.acquire();

        let stdio = MemoryOutputPipe::new(STDIO_CAPTURE_BYTES);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdio.clone())
            .stderr(stdio.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources);
        let state = PluginState {
            wasi,
            table,
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
                table_elements: limits.table_elements,
                denied_memory: false,
            },
            logs: Vec::new(),
            dropped_logs: 0,
            max_log_lines: limits.max_log_lines,
            max_log_line_bytes: limits.max_log_line_bytes,
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        let fuel = limits.fuel_per_batch;
        let result = (|| {
            store
                .set_fuel(fuel)
                .map_err(|e| PluginError::Host(e.to_string()))?;
            let ticks = limits.deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1;
            store.set_epoch_deadline(ticks);
            store.epoch_deadline_trap();
            // The answer of `batch` is data from the guest too: leave room for the
            // list's own structure beside the strings that `max_output_bytes` counts.
            store.set_hostcall_fuel(limits.max_output_bytes + (64 << 10));

            let instance = plugin
                .pre
                .instantiate(&mut store)
                .map_err(|e| classify(&e, store.data(), self))?;
            let guest = instance.mailing_plugin_personalize();
            match guest.call_init(&mut store, config) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(plugin_error(e)),
                Err(e) => return Err(classify(&e, store.data(), self)),
            }
            let ctx = wit::CampaignContext {
                campaign_id,
                campaign_name: campaign_name.to_owned(),
            };
            let expected = recipients.len();
            let input: Vec<wit::Recipient> = recipients
                .into_iter()
                .map(|r| wit::Recipient {
                    id: r.id,
                    email: r.email,
                    name: r.name,
                    attributes: r.attributes,
                })
                .collect();
            match guest.call_batch(&mut store, &ctx, &input) {
                Ok(Ok(verdicts)) => convert(verdicts, expected, limits.max_output_bytes),
                Ok(Err(e)) => Err(plugin_error(e)),
                Err(e) => Err(classify(&e, store.data(), self)),
            }
        })();
        let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let mut state = store.into_data();
        let captured = stdio.contents();
        for line in String::from_utf8_lossy(&captured)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            state.push_log(PluginLogLevel::Warn, line);
        }
        BatchRun {
            result,
            fuel_used,
            elapsed: started.elapsed(),
            logs: state.logs,
            dropped_logs: state.dropped_logs,
        }
    }
}

fn plugin_error(e: wit::Error) -> PluginError {
    match e {
        wit::Error::InvalidConfig(m) => PluginError::InvalidConfig(truncate(&m, 500)),
        wit::Error::Failed(m) => PluginError::Failed(truncate(&m, 500)),
    }
}
