//! `trivial`: keeps every recipient and adds no variables (`{}`), with no subject or
//! From-name override. It exists to measure the host's own cost per batch, so it does as
//! little as a plugin can.
//!
//! Config: ignored (any JSON value, `null` included).
#![no_std]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use guest_rt as _;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};
use mailing::plugin::types::KeepVerdict;

struct Trivial;

impl Guest for Trivial {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn batch(_ctx: CampaignContext, recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        Ok(recipients
            .iter()
            .map(|_| {
                Verdict::Keep(KeepVerdict {
                    variables: String::from("{}"),
                    subject: None,
                    from_name: None,
                })
            })
            .collect())
    }
}

export!(Trivial);
