//! `hostile-memory` (a test fixture for the host): `batch` allocates without bound.
//!
//! `init` accepts any config. `batch` pushes 1 MiB buffers into a list forever,
//! writing to every page of each so the memory is really used, until linear memory cannot
//! grow any more. Expected: the host's memory cap (or the 4 GiB limit of wasm32) stops
//! it: either the host's limiter reports the refused growth or the failed allocation
//! traps. The batch fails and the worker is unaffected.
#![no_std]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use guest_rt as _;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

struct HostileMemory;

impl Guest for HostileMemory {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn batch(_ctx: CampaignContext, _recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        let mut round: u8 = 0;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            chunk.resize(CHUNK, round | 1);
            for page in chunk.chunks_mut(PAGE) {
                page[0] = core::hint::black_box(round);
            }
            hoard.push(core::hint::black_box(chunk));
            core::hint::black_box(&hoard);
            round = round.wrapping_add(1);
        }
    }
}

export!(HostileMemory);
