//! `hostile-log-flood` (a test fixture for the host): `batch` logs 100,000 lines of
//! 1 KiB each (about 100 MiB), then keeps every recipient with `{}`.
//!
//! `init` accepts any config. Expected: the host's per-call cap on log lines drops
//! all but the first few, and the batch itself succeeds (unless a time limit is lower than
//! the cost of 100,000 host calls).
#![no_std]

extern crate alloc;

use alloc::{string::String, vec::Vec};

use guest_rt as _;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};
use mailing::plugin::host::{LogLevel, log};
use mailing::plugin::types::KeepVerdict;

const LINES: u32 = 100_000;
const LINE_LEN: usize = 1024;

struct HostileLogFlood;

impl Guest for HostileLogFlood {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn batch(_ctx: CampaignContext, recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        // "hostile-log-flood line 000001 " and then padding, 1024 bytes in all.
        let mut line = String::with_capacity(LINE_LEN);
        line.push_str("hostile-log-flood line 000000 ");
        let digits = "hostile-log-flood line ".len();
        line.extend(core::iter::repeat_n('.', LINE_LEN - line.len()));
        for n in 1..=LINES {
            let mut number = [b'0'; 6];
            let mut rest = n;
            for digit in number.iter_mut().rev() {
                *digit = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            line.replace_range(
                digits..digits + 6,
                core::str::from_utf8(&number).unwrap_or("??????"),
            );
            log(LogLevel::Info, &line);
        }
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

export!(HostileLogFlood);
