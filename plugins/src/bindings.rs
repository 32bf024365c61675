//! The one binding of the WIT contract in `wit/`, by version.
//!
//! Every other module, and every other crate, works with the host's own types
//! ([`crate::Verdict`], [`crate::PluginRecipient`], ...), never with these.

/// `mailing:plugin@0.1.0`, world `personalizer`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "personalizer",
    });
}

/// The name of the instance a personalizer exports, as it appears in a component.
pub const PERSONALIZE_EXPORT: &str = "mailing:plugin/personalize@0.1.0";

/// The name of the host functions' instance a personalizer imports.
pub const HOST_IMPORT: &str = "mailing:plugin/host@0.1.0";

/// The name of the shared types' instance (components import it for its types only).
pub const TYPES_IMPORT: &str = "mailing:plugin/types@0.1.0";
