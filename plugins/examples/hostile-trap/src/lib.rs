//! `hostile-trap` (a test fixture for the host): `batch` traps at once.
//!
//! `init` accepts any config. `batch` executes the wasm `unreachable` instruction.
//! Expected: the host reports a trap, the batch fails and the worker is unaffected; a new
//! instance (or a new call, if the host reuses instances after a trap) still works.
#![no_std]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use guest_rt as _;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};

struct HostileTrap;

impl Guest for HostileTrap {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn batch(_ctx: CampaignContext, _recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        core::arch::wasm32::unreachable()
    }
}

export!(HostileTrap);
