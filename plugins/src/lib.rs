//! The WebAssembly personalization plugin host of Mailing, **not built yet**.
//!
//! This crate will host the wasmtime engine that runs plugin components. It is meant to
//! be the one place in the workspace that binds the WIT contract in `wit/`
//! (`wasmtime::component::bindgen!`), and it will re-export the bindings by version
//! (`v0_1`, …) so that no other crate binds WIT itself. It will also own everything a
//! plugin needs to run safely: compiled-component caching, fuel and epoch limits,
//! memory limits, input and output size checks, and turning a trap into a failed batch
//! instead of a failed worker.
//!
//! For now it is a shell, until the plugin work lands. It embeds the contract
//! ([`WIT_SOURCE`]) and names its package ([`WIT_PACKAGE`]), nothing more. Until then
//! the API refuses campaigns that name plugins. Nothing here loads, compiles or runs
//! WebAssembly.

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
        assert!(WIT_SOURCE.contains("package mailing:plugin@0.1.0;"));
        assert!(WIT_SOURCE.contains("world personalizer"));
    }
}
