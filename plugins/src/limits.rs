//! The bounds every plugin call runs within, and their defaults.

use std::time::Duration;

/// Limits for running plugins. One set per host; every call of every plugin gets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Fuel for one call of `init` plus `batch` (about one unit per WebAssembly
    /// instruction). Deterministic: the same plugin on the same input always uses the
    /// same fuel, whatever the machine's load.
    pub fuel_per_batch: u64,
    /// Wall-clock deadline of one call, enforced by epoch interruption. The backstop for
    /// time that fuel does not count (host calls).
    pub deadline: Duration,
    /// Linear memory one instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Elements one table may grow to.
    pub table_elements: usize,
    /// Native stack the WebAssembly code may use, in bytes.
    pub wasm_stack_bytes: usize,
    /// Total bytes of recipients' data passed to one `batch` call.
    pub max_input_bytes: usize,
    /// Total bytes of verdicts (variables, subjects, names, reasons) one call may return.
    /// It also bounds the data the guest hands the host in any one call (wasmtime's
    /// hostcall fuel), so a `log` call cannot make the host allocate more either.
    pub max_output_bytes: usize,
    /// Entries in the WASI resource table of one instance.
    pub max_resources: usize,
    /// Log lines kept per call; the rest are counted and dropped.
    pub max_log_lines: usize,
    /// Bytes kept of one log line.
    pub max_log_line_bytes: usize,
    /// Instances alive at once in this process (the pooling allocator's size). Callers
    /// beyond this wait for a free slot.
    pub max_instances: u32,
    /// Size of a component accepted at upload.
    pub max_component_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            fuel_per_batch: 50_000_000,
            deadline: Duration::from_millis(250),
            memory_bytes: 64 << 20,
            table_elements: 20_000,
            wasm_stack_bytes: 512 << 10,
            max_input_bytes: 16 << 20,
            max_output_bytes: 8 << 20,
            max_resources: 1_000,
            max_log_lines: 100,
            max_log_line_bytes: 1024,
            max_instances: 16,
            max_component_bytes: 10 << 20,
        }
    }
}
