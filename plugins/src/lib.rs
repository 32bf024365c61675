//! The WebAssembly personalization plugin host of Mailing.
//!
//! This crate is the one place in the workspace that binds the WIT contract in `wit/`
//! ([`bindings`]); every other crate uses its own types ([`Verdict`],
//! [`PluginRecipient`], [`PluginError`]). It owns everything a plugin needs to run
//! safely:
//!
//! * [`host`]: the wasmtime engine (Cranelift, pooling allocator, fuel and epoch
//!   interruption), the linker (WASI with nothing granted, plus `host.log`), and the
//!   compiled-component caches (in memory as `InstancePre`, on disk as precompiled
//!   artifacts keyed by sha256 and engine);
//! * [`run`]: one call on one batch, in a fresh instance, under [`PluginLimits`];
//! * [`breaker`]: the per-campaign circuit breaker;
//! * validation of uploads ([`PluginHost::validate`]): a component implementing
//!   `world personalizer`, or a reason why not.

pub mod bindings;
pub mod breaker;
pub mod error;
pub mod host;
pub mod limits;
pub mod run;

pub use breaker::{BreakerEvent, CircuitBreaker};
pub use error::PluginError;
pub use host::{ComponentInfo, Plugin, PluginHost, sha256_hex};
pub use limits::PluginLimits;
pub use run::{BatchRun, PluginLogLevel, PluginLogLine, PluginRecipient, Verdict};

/// The versioned WIT package this host implements.
pub const WIT_PACKAGE: &str = "mailing:plugin@0.1.0";

/// The WIT contract, as compiled into the binary.
pub const WIT_SOURCE: &str = include_str!("../../wit/mailing-plugin.wit");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_contract_declares_the_versioned_package() {
        assert!(
            WIT_SOURCE.contains(&format!("package {WIT_PACKAGE};")),
            "wit/mailing-plugin.wit must declare `package {WIT_PACKAGE};`"
        );
        assert!(WIT_SOURCE.contains("world personalizer"));
        assert!(bindings::PERSONALIZE_EXPORT.ends_with(&WIT_PACKAGE["mailing:plugin".len()..]));
    }
}
