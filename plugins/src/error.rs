//! What can go wrong with a plugin, in words meant for the person who uploaded it or
//! who runs the campaign.

/// Why a component was refused at upload, or why a call did not produce verdicts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file: it does not start with the `\\0asm` header")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build the plugin for the \
         `wasm32-wasip2` target (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule,
    /// Bigger than the upload limit.
    #[error("the component is {size} bytes; the limit is {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not compile as a component.
    #[error("the component is not valid: {0}")]
    Invalid(String),
    /// A valid component that does not implement `world personalizer`.
    #[error("{0}")]
    WrongWorld(String),
    /// The plugin refused its configuration (`error::invalid-config`).
    #[error("the plugin refused its configuration: {0}")]
    InvalidConfig(String),
    /// The plugin reported a failure (`error::failed`).
    #[error("the plugin reported a failure: {0}")]
    Failed(String),
    /// The call used up its fuel.
    #[error("the plugin used up its fuel budget of {fuel} units")]
    OutOfFuel {
        /// The budget.
        fuel: u64,
    },
    /// The call ran past its wall-clock deadline.
    #[error("the plugin ran past its deadline of {ms} ms and was stopped")]
    Deadline {
        /// The deadline.
        ms: u64,
    },
    /// The instance tried to grow its memory past the cap.
    #[error("the plugin hit its memory cap of {bytes} bytes")]
    MemoryLimit {
        /// The cap.
        bytes: usize,
    },
    /// The WebAssembly stack overflowed (unbounded recursion).
    #[error("the plugin overflowed its stack (unbounded recursion?)")]
    StackOverflow,
    /// Any other trap.
    #[error("the plugin trapped: {0}")]
    Trap(String),
    /// The answer broke the contract (wrong length, invalid JSON, too big).
    #[error("the plugin's answer is malformed: {0}")]
    Malformed(String),
    /// The batch is larger than a plugin may be given.
    #[error("the batch is {size} bytes of recipient data; the limit is {max} bytes")]
    InputTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The host could not run the plugin (instantiation failed for a reason that is
    /// not the plugin's fault). Worth retrying.
    #[error("the plugin host could not run the plugin: {0}")]
    Host(String),
    /// The circuit breaker switched the plugin off for this campaign.
    #[error(
        "switched off for this campaign by the circuit breaker after {failures} failed \
         batches in a row (last: {last})"
    )]
    SwitchedOff {
        /// Consecutive failures that tripped it.
        failures: u32,
        /// The last failure.
        last: String,
    },
}

impl PluginError {
    /// A short, stable, low-cardinality name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::NotWasm => "not_wasm",
            PluginError::CoreModule => "core_module",
            PluginError::TooLarge { .. } => "too_large",
            PluginError::Invalid(_) => "invalid",
            PluginError::WrongWorld(_) => "wrong_world",
            PluginError::InvalidConfig(_) => "invalid_config",
            PluginError::Failed(_) => "failed",
            PluginError::OutOfFuel { .. } => "out_of_fuel",
            PluginError::Deadline { .. } => "deadline",
            PluginError::MemoryLimit { .. } => "memory_limit",
            PluginError::StackOverflow => "stack_overflow",
            PluginError::Trap(_) => "trap",
            PluginError::Malformed(_) => "malformed",
            PluginError::InputTooLarge { .. } => "input_too_large",
            PluginError::Host(_) => "host",
            PluginError::SwitchedOff { .. } => "switched_off",
        }
    }

    /// Whether this is the plugin misbehaving (counts towards its circuit breaker),
    /// as opposed to a refusal of its input or a problem of the host.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            PluginError::OutOfFuel { .. }
                | PluginError::Deadline { .. }
                | PluginError::MemoryLimit { .. }
                | PluginError::StackOverflow
                | PluginError::Trap(_)
                | PluginError::Malformed(_)
                | PluginError::Failed(_)
                | PluginError::InvalidConfig(_)
        )
    }
}
