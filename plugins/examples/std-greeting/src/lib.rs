//! `std-greeting`: the plugin of the author's guide (`plugins/README.md`), written with
//! the standard library, as a plugin author outside this repository would write it.
//!
//! It adds `greeting` ("Bonjour Marie", "Hallo Jan", "Hello Ada") from the `lang`
//! attribute and the name, and logs one line per batch. Config: none (`null`); anything
//! else is refused with `invalid-config`. It is its own cargo workspace so that `std`
//! and the `no_std` examples beside it never share a build of `wit-bindgen`.
wit_bindgen::generate!({ path: "../../../wit", world: "personalizer" });

use exports::mailing::plugin::personalize::{CampaignContext, Error, Guest, Recipient, Verdict};
use mailing::plugin::host::{LogLevel, log};
use mailing::plugin::types::KeepVerdict;

struct Greeting;

impl Guest for Greeting {
    fn init(config: String) -> Result<(), Error> {
        match serde_json::from_str::<serde_json::Value>(&config) {
            Ok(serde_json::Value::Null) => Ok(()),
            Ok(_) => Err(Error::InvalidConfig("this plugin takes no config".into())),
            Err(e) => Err(Error::InvalidConfig(format!("not JSON: {e}"))),
        }
    }

    fn batch(ctx: CampaignContext, recipients: Vec<Recipient>) -> Result<Vec<Verdict>, Error> {
        log(
            LogLevel::Info,
            &format!(
                "campaign {}: {} recipients",
                ctx.campaign_id,
                recipients.len()
            ),
        );
        recipients
            .iter()
            .map(|r| {
                let attributes: serde_json::Value = serde_json::from_str(&r.attributes)
                    .map_err(|e| Error::Failed(format!("attributes of {}: {e}", r.id)))?;
                let word = match attributes["lang"].as_str().unwrap_or("en") {
                    l if l.starts_with("fr") => "Bonjour",
                    l if l.starts_with("de") => "Hallo",
                    _ => "Hello",
                };
                let greeting = match &r.name {
                    Some(name) => format!("{word} {name}"),
                    None => word.to_string(),
                };
                Ok(Verdict::Keep(KeepVerdict {
                    variables: serde_json::json!({ "greeting": greeting }).to_string(),
                    subject: None,
                    from_name: None,
                }))
            })
            .collect()
    }
}

export!(Greeting);
