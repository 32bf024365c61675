//! `hostile-loop` (a test fixture for the host): `batch` never returns.
//!
//! `init` accepts any config. `batch` counts up forever in a loop that the optimiser
//! cannot remove (the counter goes through `black_box`) and that makes no call, so only
//! the host's fuel or epoch deadline stops it. Expected: the batch fails on the time
//! limit and the worker is unaffected.
#![no_std]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use guest_rt as _;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};

struct HostileLoop;

impl Guest for HostileLoop {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn batch(_ctx: CampaignContext, _recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        let mut counter: u64 = 0;
        loop {
            counter = core::hint::black_box(counter.wrapping_add(1));
        }
    }
}

export!(HostileLoop);
