//! `ab-subject`: a deterministic A/B (/C/...) split of the subject line.
//!
//! Each recipient gets one of the configured subjects: the index is the FNV-1a 64-bit
//! hash of the salt's bytes followed by the recipient's id in decimal (`salt + "42"`),
//! modulo the number of subjects. The same recipient, salt and subjects always give the
//! same variant, in every batch, instance and worker. The recipient is kept with the
//! `subject` override and the variable `variant`: `"A"` for the first subject, `"B"` for
//! the second, ..., `"Z"`, then `"AA"`, `"AB"`, ... (`{"variant": "B"}`), so templates
//! and reports can tell the groups apart.
//!
//! Config (required):
//! ```json
//! {"subjects": ["Our spring sale", "20% off this week"], "salt": "spring-2025"}
//! ```
//! * `subjects` (array of at least two non-empty strings).
//! * `salt` (string, optional, default `""`): change it to reshuffle the groups, for
//!   example per campaign, so the same people are not always in group A.
//!
//! A missing config, fewer than two subjects, an empty subject, a wrong type or an unknown
//! key is refused with `invalid-config`.
#![no_std]

extern crate alloc;

use alloc::{
    format,
    string::{String, ToString},
    vec::Vec,
};
use core::fmt::Write as _;

use guest_rt::InstanceState;
use serde_json::{Map, Value};

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};
use mailing::plugin::types::KeepVerdict;

const EXAMPLE: &str = r#"{"subjects": ["Subject A", "Subject B"], "salt": "optional"}"#;

struct Config {
    subjects: Vec<String>,
    salt: String,
}

static CONFIG: InstanceState<Config> = InstanceState::new();

/// A JSON value's kind, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_config(text: &str) -> Result<Config, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("ab-subject: the config is not valid JSON: {e}"))?;
    let object = match value {
        Value::Object(object) => object,
        Value::Null => {
            return Err(format!(
                "ab-subject: a config is required, for example {EXAMPLE}"
            ));
        }
        other => {
            return Err(format!(
                "ab-subject: the config must be a JSON object like {EXAMPLE}, not {}",
                kind(&other)
            ));
        }
    };
    let mut subjects = None;
    let mut salt = String::new();
    for (key, value) in object {
        match (key.as_str(), value) {
            ("subjects", Value::Array(items)) => {
                let mut list = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) if !s.trim().is_empty() => list.push(s),
                        Value::String(_) => {
                            return Err(format!("ab-subject: subjects[{i}] is empty"));
                        }
                        other => {
                            return Err(format!(
                                "ab-subject: subjects[{i}] must be a string, not {}",
                                kind(&other)
                            ));
                        }
                    }
                }
                subjects = Some(list);
            }
            ("subjects", other) => {
                return Err(format!(
                    "ab-subject: \"subjects\" must be an array of strings, not {}",
                    kind(&other)
                ));
            }
            ("salt", Value::String(s)) => salt = s,
            ("salt", Value::Null) => {}
            ("salt", other) => {
                return Err(format!(
                    "ab-subject: \"salt\" must be a string, not {}",
                    kind(&other)
                ));
            }
            (other, _) => {
                return Err(format!(
                    "ab-subject: unknown config key \"{other}\" (known: \"subjects\", \"salt\")"
                ));
            }
        }
    }
    let subjects = subjects
        .ok_or_else(|| format!("ab-subject: \"subjects\" is required, for example {EXAMPLE}"))?;
    if subjects.len() < 2 {
        return Err(format!(
            "ab-subject: \"subjects\" needs at least 2 subjects to split between, it has {}",
            subjects.len()
        ));
    }
    Ok(Config { subjects, salt })
}

/// FNV-1a, 64 bits.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// The variant's name for a subject index: A..Z, then AA, AB, ...
fn variant_name(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'A' + (n % 26) as u8);
        n /= 26;
    }
    letters.iter().rev().map(|&b| char::from(b)).collect()
}

/// The subject index for a recipient.
fn pick(config: &Config, id: u64) -> usize {
    let mut decimal = String::new();
    // Writing to a String cannot fail.
    let _ = write!(decimal, "{id}");
    let hash = fnv1a64(&[config.salt.as_bytes(), decimal.as_bytes()]);
    // The remainder is less than the number of subjects, which is a usize.
    (hash % config.subjects.len() as u64) as usize
}

struct AbSubject;

impl Guest for AbSubject {
    fn init(config: String) -> Result<(), Error> {
        CONFIG.set(parse_config(&config).map_err(Error::InvalidConfig)?);
        Ok(())
    }

    fn batch(_ctx: CampaignContext, recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        CONFIG.with(|config| {
            let config = config
                .ok_or_else(|| Error::Failed("ab-subject: batch called before init".into()))?;
            let variants: Vec<String> = (0..config.subjects.len()).map(variant_name).collect();
            Ok(recipients
                .iter()
                .map(|recipient| {
                    let index = pick(config, recipient.id);
                    let mut variables = Map::new();
                    variables.insert("variant".into(), Value::String(variants[index].clone()));
                    Verdict::Keep(KeepVerdict {
                        variables: Value::Object(variables).to_string(),
                        subject: Some(config.subjects[index].clone()),
                        from_name: None,
                    })
                })
                .collect())
        })
    }
}

export!(AbSubject);
