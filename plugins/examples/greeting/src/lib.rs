//! `greeting`: adds a `greeting` variable in the recipient's language.
//!
//! For each recipient it reads the `lang` attribute (a language tag such as `"fr"`,
//! `"fr-CA"` or `"pt_BR"`; case does not matter), finds a greeting word for it and keeps
//! the recipient with `{"greeting": "<word> <name>"}`, for example `"Bonjour Marie"`,
//! or just `"<word>"` when the recipient has no name. A tag is looked up as given
//! first (`"fr-ca"`), then by its primary subtag (`"fr"`); a missing, non-string or
//! unknown `lang` falls back to the default language. Templates use `{{ greeting }}`.
//!
//! Built-in words: en Hello, fr Bonjour, de Hallo, es Hola, it Ciao, pt Olá, nl Hallo,
//! sv Hej, da Hej, nb/no Hei, fi Hei, pl Cześć.
//!
//! Config (optional; `null` means the defaults):
//! ```json
//! {"default_lang": "en", "greetings": {"xx": "Custom", "fr-ca": "Allô"}}
//! ```
//! * `default_lang` (string, default `"en"`): the language used when a recipient's is
//!   missing or unknown. It must have a greeting (built in or in `greetings`).
//! * `greetings` (object of language tag to non-empty string): adds languages or
//!   overrides built-in words.
//!
//! Any other key, a wrong type or an empty word is refused with `invalid-config`.
//! Recipient attributes that are not a JSON object (a broken host) fail the batch.
#![no_std]

extern crate alloc;

use alloc::{
    borrow::ToOwned,
    collections::BTreeMap,
    format,
    string::{String, ToString},
    vec::Vec,
};

use guest_rt::InstanceState;
use serde_json::{Map, Value};

wit_bindgen::generate!({ path: "../../../wit/mailing-plugin.wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};
use mailing::plugin::host::{LogLevel, log};
use mailing::plugin::types::KeepVerdict;

/// Built-in greeting words, by primary language subtag.
const BUILTIN: &[(&str, &str)] = &[
    ("en", "Hello"),
    ("fr", "Bonjour"),
    ("de", "Hallo"),
    ("es", "Hola"),
    ("it", "Ciao"),
    ("pt", "Olá"),
    ("nl", "Hallo"),
    ("sv", "Hej"),
    ("da", "Hej"),
    ("nb", "Hei"),
    ("no", "Hei"),
    ("fi", "Hei"),
    ("pl", "Cześć"),
];

/// The parsed config.
struct Config {
    /// Language tag (normalised) to word: the built-ins merged with `greetings`.
    words: BTreeMap<String, String>,
    /// The default language's tag (normalised) and word.
    default_lang: String,
    default_word: String,
}

impl Config {
    /// The word for a language tag: the whole tag first, then its primary subtag.
    fn word(&self, tag: &str) -> Option<&str> {
        let tag = normalise(tag);
        if let Some(word) = self.words.get(&tag) {
            return Some(word);
        }
        let primary = tag.split('-').next().unwrap_or_default();
        self.words.get(primary).map(String::as_str)
    }
}

static CONFIG: InstanceState<Config> = InstanceState::new();

/// Lower-cases a language tag, trims it and turns `_` into `-` (`"pt_BR"` → `"pt-br"`).
fn normalise(tag: &str) -> String {
    tag.trim().to_ascii_lowercase().replace('_', "-")
}

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
        .map_err(|e| format!("greeting: the config is not valid JSON: {e}"))?;
    let mut words: BTreeMap<String, String> = BUILTIN
        .iter()
        .map(|(tag, word)| ((*tag).to_owned(), (*word).to_owned()))
        .collect();
    let mut default_lang = String::from("en");
    let object = match value {
        Value::Null => Map::new(),
        Value::Object(object) => object,
        other => {
            return Err(format!(
                "greeting: the config must be a JSON object or null, not {}",
                kind(&other)
            ));
        }
    };
    for (key, value) in object {
        match (key.as_str(), value) {
            ("default_lang", Value::Null) | ("greetings", Value::Null) => {}
            ("default_lang", Value::String(tag)) => {
                default_lang = normalise(&tag);
                if default_lang.is_empty() {
                    return Err("greeting: \"default_lang\" must not be empty".into());
                }
            }
            ("greetings", Value::Object(custom)) => {
                for (tag, word) in custom {
                    let normalised = normalise(&tag);
                    if normalised.is_empty() {
                        return Err("greeting: \"greetings\" has an empty language tag".into());
                    }
                    match word {
                        Value::String(word) if !word.trim().is_empty() => {
                            words.insert(normalised, word.trim().to_owned());
                        }
                        Value::String(_) => {
                            return Err(format!(
                                "greeting: the greeting for \"{tag}\" must not be empty"
                            ));
                        }
                        other => {
                            return Err(format!(
                                "greeting: the greeting for \"{tag}\" must be a string, not {}",
                                kind(&other)
                            ));
                        }
                    }
                }
            }
            ("default_lang", other) => {
                return Err(format!(
                    "greeting: \"default_lang\" must be a string, not {}",
                    kind(&other)
                ));
            }
            ("greetings", other) => {
                return Err(format!(
                    "greeting: \"greetings\" must be an object of language to word, not {}",
                    kind(&other)
                ));
            }
            (other, _) => {
                return Err(format!(
                    "greeting: unknown config key \"{other}\" (known: \"default_lang\", \"greetings\")"
                ));
            }
        }
    }
    let mut config = Config {
        words,
        default_lang: String::new(),
        default_word: String::new(),
    };
    config.default_word = config
        .word(&default_lang)
        .ok_or_else(|| {
            format!(
                "greeting: \"default_lang\" is \"{default_lang}\", which has no greeting; \
                 add it to \"greetings\""
            )
        })?
        .to_owned();
    config.default_lang = default_lang;
    Ok(config)
}

/// The `greeting` variable for one recipient. `Ok(false)` in the second place means the
/// default word was used because the recipient's language was missing or unknown.
fn greet(config: &Config, recipient: &Recipient) -> Result<(String, bool), Error> {
    let attributes: Value = serde_json::from_str(&recipient.attributes).map_err(|e| {
        Error::Failed(format!(
            "greeting: the attributes of recipient {} are not valid JSON: {e}",
            recipient.id
        ))
    })?;
    let Value::Object(attributes) = attributes else {
        return Err(Error::Failed(format!(
            "greeting: the attributes of recipient {} are {}, not a JSON object",
            recipient.id,
            kind(&attributes)
        )));
    };
    let found = match attributes.get("lang") {
        Some(Value::String(tag)) => config.word(tag),
        _ => None,
    };
    let word = found.unwrap_or(&config.default_word);
    let name = recipient
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let greeting = match name {
        Some(name) => format!("{word} {name}"),
        None => word.to_owned(),
    };
    Ok((greeting, found.is_some()))
}

struct Greeting;

impl Guest for Greeting {
    fn init(config: String) -> Result<(), Error> {
        let config = parse_config(&config).map_err(Error::InvalidConfig)?;
        log(
            LogLevel::Debug,
            &format!(
                "greeting: ready, {} languages, default \"{}\" ({})",
                config.words.len(),
                config.default_lang,
                config.default_word
            ),
        );
        CONFIG.set(config);
        Ok(())
    }

    fn batch(_ctx: CampaignContext, recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        CONFIG.with(|config| {
            let config =
                config.ok_or_else(|| Error::Failed("greeting: batch called before init".into()))?;
            let mut defaulted = 0usize;
            let mut verdicts = Vec::with_capacity(recipients.len());
            for recipient in &recipients {
                let (greeting, known) = greet(config, recipient)?;
                if !known {
                    defaulted += 1;
                }
                let mut variables = Map::new();
                variables.insert("greeting".to_string(), Value::String(greeting));
                verdicts.push(Verdict::Keep(KeepVerdict {
                    variables: Value::Object(variables).to_string(),
                    subject: None,
                    from_name: None,
                }));
            }
            if defaulted > 0 {
                log(
                    LogLevel::Debug,
                    &format!(
                        "greeting: {defaulted} of {} recipients had no known language, \
                         greeted with the default",
                        recipients.len()
                    ),
                );
            }
            Ok(verdicts)
        })
    }
}

export!(Greeting);
