//! `hostile-huge-output` (a test fixture for the host): `batch` returns ~8 MiB of
//! variables for every recipient.
//!
//! `init` accepts any config. `batch` keeps every recipient, each with `variables`
//! set to `{"blob": "xxxx…"}`, a valid JSON object whose string is 8 MiB long. Expected:
//! the host refuses the output for its size (each `variables` string and the total are
//! over its limits), the batch fails and the worker is unaffected.
//!
//! The guest needs about 8 MiB of its own memory per recipient to build this, so with a
//! large batch (or a low memory cap) it may run out of memory and trap before it returns;
//! use a batch of a few recipients to test the output limit itself.
#![no_std]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use guest_rt as _;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};
use mailing::plugin::types::KeepVerdict;

const BLOB_LEN: usize = 8 << 20;

struct HostileHugeOutput;

impl Guest for HostileHugeOutput {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn batch(_ctx: CampaignContext, recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        let mut variables = String::with_capacity(BLOB_LEN + 16);
        variables.push_str("{\"blob\":\"");
        variables.extend(core::iter::repeat_n('x', BLOB_LEN));
        variables.push_str("\"}");
        Ok(recipients
            .iter()
            .map(|_| {
                Verdict::Keep(KeepVerdict {
                    variables: variables.clone(),
                    subject: None,
                    from_name: None,
                })
            })
            .collect())
    }
}

export!(HostileHugeOutput);
