//! `segment-filter`: sends only to recipients whose attribute meets a condition.
//!
//! A recipient that meets it is kept with `{}` (no variables, no overrides). Any other
//! is skipped with a reason that names the attribute, its value and the condition:
//! `segment-filter: attribute "plan" is "free", wanted eq "pro"`, or
//! `segment-filter: attribute "plan" is missing, wanted eq "pro"`.
//!
//! Config (required):
//! ```json
//! {"attribute": "plan", "op": "eq", "value": "pro"}
//! ```
//! * `attribute` (non-empty string): a top-level key of the recipient's attributes.
//! * `op`, with what `value` must be:
//!   * `eq` / `ne`: any JSON value but `null`. Values are compared as JSON (strings are
//!     case-sensitive; numbers compare by value, so `1` equals `1.0`);
//!   * `in`: a non-empty array; the attribute must equal one of its items;
//!   * `gt` / `lt`: a number; the attribute must be a number greater / less than it;
//!   * `exists`: no value (or `true`): the attribute must be present; `false`: it must
//!     be missing.
//!
//! An attribute that is absent or `null` is *missing*. A missing attribute meets no
//! condition except `exists: false`; in particular `ne` keeps only recipients that have
//! the attribute with another value.
//!
//! A missing config (`null`), an unknown key, an unknown `op` or a `value` of the wrong
//! kind is refused with `invalid-config`. Recipient attributes that are not a JSON object
//! (a broken host) fail the batch.
#![no_std]

extern crate alloc;

use alloc::{borrow::ToOwned, format, string::String, string::ToString, vec::Vec};

use guest_rt::InstanceState;
use serde_json::Value;

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};
use mailing::plugin::types::KeepVerdict;

/// The longest attribute or config value quoted in a skip reason, in bytes.
const MAX_SHOWN: usize = 80;

const EXAMPLE: &str = r#"{"attribute": "plan", "op": "eq", "value": "pro"}"#;

enum Condition {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Gt(f64),
    Lt(f64),
    Exists(bool),
}

struct Filter {
    attribute: String,
    condition: Condition,
    /// The condition as the skip reason quotes it: `eq "pro"`, `exists`, ...
    wanted: String,
}

static FILTER: InstanceState<Filter> = InstanceState::new();

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

/// A value as JSON text, cut to about `MAX_SHOWN` bytes.
fn show(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > MAX_SHOWN {
        let mut end = MAX_SHOWN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// JSON equality, except that two numbers are equal when their values are.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

fn parse_config(text: &str) -> Result<Filter, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("segment-filter: the config is not valid JSON: {e}"))?;
    let mut object = match value {
        Value::Object(object) => object,
        Value::Null => {
            return Err(format!(
                "segment-filter: a config is required, for example {EXAMPLE}"
            ));
        }
        other => {
            return Err(format!(
                "segment-filter: the config must be a JSON object like {EXAMPLE}, not {}",
                kind(&other)
            ));
        }
    };
    if let Some(key) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "attribute" | "op" | "value"))
    {
        return Err(format!(
            "segment-filter: unknown config key \"{key}\" (known: \"attribute\", \"op\", \"value\")"
        ));
    }
    let attribute = match object.remove("attribute") {
        Some(Value::String(name)) if !name.is_empty() => name,
        Some(Value::String(_)) => return Err("segment-filter: \"attribute\" is empty".into()),
        None | Some(Value::Null) => {
            return Err("segment-filter: \"attribute\" is required (the attribute to test)".into());
        }
        Some(other) => {
            return Err(format!(
                "segment-filter: \"attribute\" must be a string, not {}",
                kind(&other)
            ));
        }
    };
    let op = match object.remove("op") {
        Some(Value::String(op)) => op,
        None | Some(Value::Null) => {
            return Err("segment-filter: \"op\" is required: eq, ne, in, exists, gt or lt".into());
        }
        Some(other) => {
            return Err(format!(
                "segment-filter: \"op\" must be a string, not {}",
                kind(&other)
            ));
        }
    };
    let value = object.remove("value").unwrap_or(Value::Null);
    let needs = |what: &str| {
        format!(
            "segment-filter: op \"{op}\" needs \"value\" to be {what}, not {}",
            kind(&value)
        )
    };
    let condition = match op.as_str() {
        "eq" | "ne" if value.is_null() => {
            return Err(format!(
                "segment-filter: op \"{op}\" needs a \"value\" that is not null \
                 (use op \"exists\" to test for presence)"
            ));
        }
        "eq" => Condition::Eq(value.clone()),
        "ne" => Condition::Ne(value.clone()),
        "in" => match &value {
            Value::Array(items) if !items.is_empty() => Condition::In(items.clone()),
            Value::Array(_) => {
                return Err("segment-filter: op \"in\" needs a non-empty \"value\" array".into());
            }
            _ => return Err(needs("an array")),
        },
        "gt" | "lt" => match value.as_f64() {
            Some(bound) if op == "gt" => Condition::Gt(bound),
            Some(bound) => Condition::Lt(bound),
            None => return Err(needs("a number")),
        },
        "exists" => match &value {
            Value::Null | Value::Bool(true) => Condition::Exists(true),
            Value::Bool(false) => Condition::Exists(false),
            _ => return Err(needs("true, false or absent")),
        },
        other => {
            return Err(format!(
                "segment-filter: unknown op \"{other}\" (known: eq, ne, in, exists, gt, lt)"
            ));
        }
    };
    let wanted = match &condition {
        Condition::Exists(true) => "exists".to_owned(),
        Condition::Exists(false) => "missing".to_owned(),
        _ => format!("{op} {}", show(&value)),
    };
    Ok(Filter {
        attribute,
        condition,
        wanted,
    })
}

impl Filter {
    /// `None` when the recipient meets the condition, else the skip reason.
    fn check(&self, recipient: &Recipient) -> Result<Option<String>, Error> {
        let attributes: Value = serde_json::from_str(&recipient.attributes).map_err(|e| {
            Error::Failed(format!(
                "segment-filter: the attributes of recipient {} are not valid JSON: {e}",
                recipient.id
            ))
        })?;
        let Value::Object(attributes) = attributes else {
            return Err(Error::Failed(format!(
                "segment-filter: the attributes of recipient {} are {}, not a JSON object",
                recipient.id,
                kind(&attributes)
            )));
        };
        let actual = attributes.get(&self.attribute).filter(|v| !v.is_null());
        let meets = match (&self.condition, actual) {
            (Condition::Exists(wanted), actual) => *wanted == actual.is_some(),
            (_, None) => false,
            (Condition::Eq(want), Some(actual)) => same(actual, want),
            (Condition::Ne(want), Some(actual)) => !same(actual, want),
            (Condition::In(items), Some(actual)) => items.iter().any(|item| same(actual, item)),
            (Condition::Gt(bound), Some(actual)) => actual.as_f64().is_some_and(|x| x > *bound),
            (Condition::Lt(bound), Some(actual)) => actual.as_f64().is_some_and(|x| x < *bound),
        };
        if meets {
            return Ok(None);
        }
        let name = Value::String(self.attribute.clone());
        let is = match actual {
            Some(actual) => format!("is {}", show(actual)),
            None => "is missing".to_owned(),
        };
        Ok(Some(format!(
            "segment-filter: attribute {} {is}, wanted {}",
            show(&name),
            self.wanted
        )))
    }
}

struct SegmentFilter;

impl Guest for SegmentFilter {
    fn init(config: String) -> Result<(), Error> {
        FILTER.set(parse_config(&config).map_err(Error::InvalidConfig)?);
        Ok(())
    }

    fn batch(_ctx: CampaignContext, recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        FILTER.with(|filter| {
            let filter = filter
                .ok_or_else(|| Error::Failed("segment-filter: batch called before init".into()))?;
            recipients
                .iter()
                .map(|recipient| {
                    Ok(match filter.check(recipient)? {
                        None => Verdict::Keep(KeepVerdict {
                            variables: String::from("{}"),
                            subject: None,
                            from_name: None,
                        }),
                        Some(reason) => Verdict::Skip(reason),
                    })
                })
                .collect()
        })
    }
}

export!(SegmentFilter);
