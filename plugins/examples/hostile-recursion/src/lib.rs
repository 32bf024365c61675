//! `hostile-recursion` (a test fixture for the host): `batch` recurses without bound.
//!
//! `init` accepts any config. `batch` calls a function that calls itself and then uses
//! the result (so the call is not a tail call), and whose exit condition can never hold
//! (`black_box` hides that from the optimiser, which would otherwise turn it into a loop).
//! Expected: the engine's stack-overflow trap (wasmtime: `Trap::StackOverflow`), as the
//! frames live in wasm locals, not in the shadow stack in linear memory. The batch fails
//! and the worker is unaffected.
#![no_std]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use guest_rt as _;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};

/// Calls itself until `depth == limit`, which never happens: `limit` is `u64::MAX`,
/// hidden behind `black_box`. The work after the call (a rotation of the callee's result)
/// keeps it from being a tail call or an accumulator that LLVM could turn into a loop.
/// Everything lives in wasm locals, so what runs out is the engine's call stack.
#[inline(never)]
fn descend(depth: u64, limit: u64) -> u64 {
    if depth == limit {
        return depth;
    }
    let below = descend(depth + 1, limit);
    below.rotate_left((depth & 63) as u32) ^ depth
}

struct HostileRecursion;

impl Guest for HostileRecursion {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn batch(_ctx: CampaignContext, _recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        let depth = descend(0, core::hint::black_box(u64::MAX));
        Err(Error::Failed(alloc::format!(
            "hostile-recursion: came back from depth {depth}"
        )))
    }
}

export!(HostileRecursion);
