//! The synthetic audience and newsletter of a bench run: subscribers with varied
//! attributes (`lang`, `plan`, `orders`, `country`, `city`, `since`), a ~7 KB HTML
//! template with a dozen Liquid variables, loops, conditionals and filters, and the same
//! data shaped for the renderer and the plugin host (the in-process limits).

use mailing_jobs::render::{CampaignVars, RenderContext, TemplateSource};
use mailing_jobs::store::subscribers::NewSubscriber;
use mailing_plugins::PluginRecipient;

const LANGS: &[&str] = &["en", "fr", "de", "es", "it", "pt-BR", "nl", "sv"];
const PLANS: &[&str] = &["free", "pro", "team", "enterprise"];
const COUNTRIES: &[&str] = &["FR", "US", "DE", "ES", "IT", "BR", "NL", "SE", "GB", "JP"];
const CITIES: &[&str] = &[
    "Paris", "Boston", "Berlin", "Madrid", "Rome", "Recife", "Utrecht",
];
const NAMES: &[&str] = &[
    "Ada", "Marie", "Jürgen", "Lucía", "Giulia", "João", "Sanne", "Olle",
];

/// The address of synthetic subscriber `i` (0-based).
pub fn email(i: usize) -> String {
    format!("bench{i}@bench.example")
}

fn name(i: usize) -> Option<String> {
    (i % 7 != 6).then(|| format!("{} {}", NAMES[i % NAMES.len()], i))
}

fn attributes(i: usize) -> serde_json::Map<String, serde_json::Value> {
    let value = serde_json::json!({
        "lang": LANGS[i % LANGS.len()],
        "plan": PLANS[(i / 3) % PLANS.len()],
        "orders": (i * 7) % 53,
        "country": COUNTRIES[(i / 5) % COUNTRIES.len()],
        "city": CITIES[(i / 2) % CITIES.len()],
        "since": 2010 + (i % 15),
        "discount": 5 + (i % 6) * 5,
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// Subscribers `from..to`, ready for `Store::add_subscribers`.
pub fn subscribers(from: usize, to: usize) -> Vec<NewSubscriber> {
    (from..to)
        .map(|i| NewSubscriber {
            email: email(i),
            name: name(i),
            attributes: Some(attributes(i)),
        })
        .collect()
}

/// The same subscribers as the plugin host sees them.
pub fn plugin_recipients(n: usize) -> Vec<PluginRecipient> {
    (0..n)
        .map(|i| PluginRecipient {
            id: i as u64 + 1,
            email: email(i),
            name: name(i),
            attributes: serde_json::Value::Object(attributes(i)).to_string(),
        })
        .collect()
}

/// The same subscribers as the renderer sees them, in campaign `name`.
pub fn render_context(i: usize, campaign: &str) -> RenderContext {
    RenderContext {
        email: email(i),
        name: name(i),
        attributes: attributes(i),
        campaign: CampaignVars::new(&serde_json::json!({"id": 1, "name": campaign})),
        unsubscribe_url: format!("http://127.0.0.1/unsubscribe/{i}.abcdefabcdefabcdef"),
        extra: serde_json::Map::new(),
    }
}

/// The newsletter: (subject, html, text).
pub struct Newsletter {
    /// Subject line source.
    pub subject: String,
    /// HTML source.
    pub html: String,
    /// Text source.
    pub text: String,
}

impl Newsletter {
    /// The template of every bench run (about 7 KB of HTML).
    pub fn new() -> Self {
        let mut html = String::from(
            "<!doctype html><html lang=\"{{ subscriber.attributes.lang }}\"><head><meta charset=\"utf-8\">\
             <title>{{ campaign.name }}</title><style>body{font-family:Helvetica,Arial,sans-serif;color:#222;\
             margin:0;padding:0}.wrap{max-width:640px;margin:0 auto}.card{border:1px solid #ddd;padding:16px;\
             margin:12px 0;border-radius:6px}.cta{background:#0a7;color:#fff;padding:8px 14px;text-decoration:none}\
             .foot{color:#888;font-size:12px}</style></head><body><div class=\"wrap\">\
             <h1>{% if greeting %}{{ greeting }}{% else %}Hello {{ subscriber.name | default: \"there\" }}{% endif %}!</h1>\
             <p>News for our {{ subscriber.attributes.plan | capitalize }} members in {{ subscriber.attributes.city }} \
             ({{ subscriber.attributes.country }}). You have placed {{ subscriber.attributes.orders }} orders since \
             {{ subscriber.attributes.since }}.</p>",
        );
        for i in 0..12 {
            html.push_str(&format!(
                "<div class=\"card\"><h2>Offer {i}: {{{{ subscriber.attributes.plan | upcase }}}} picks</h2>\
                 <p>Dear {{{{ subscriber.name | default: \"customer\" }}}}, as a member since \
                 {{{{ subscriber.attributes.since }}}} you save {{{{ subscriber.attributes.discount }}}}% on item {i} \
                 in {{{{ subscriber.attributes.city }}}}. Lorem ipsum dolor sit amet, consectetur adipiscing elit, \
                 sed do eiusmod tempor incididunt ut labore.</p>\
                 {{% if subscriber.attributes.plan == \"enterprise\" %}}<p>Your account manager will call.</p>\
                 {{% elsif subscriber.attributes.orders > 20 %}}<p>Loyalty bonus applies.</p>{{% endif %}}\
                 <a class=\"cta\" href=\"https://shop.example/o/{i}?u={{{{ subscriber.email | url_encode }}}}&l={{{{ subscriber.attributes.lang }}}}\">Shop now</a></div>"
            ));
        }
        html.push_str(
            "<p class=\"foot\">You receive this as {{ subscriber.email }}. \
             <a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></div></body></html>",
        );
        Newsletter {
            subject: "{{ subscriber.name | default: \"Friend\" }}, {{ subscriber.attributes.discount }}% off in {{ subscriber.attributes.city }}".into(),
            html,
            text: "Hello {{ subscriber.name }}, {{ subscriber.attributes.discount }}% off this week. Unsubscribe: {{ unsubscribe_url }}".into(),
        }
    }

    /// Borrowed, for the renderer.
    pub fn source(&self) -> TemplateSource<'_> {
        TemplateSource {
            subject: &self.subject,
            html: &self.html,
            text: Some(&self.text),
        }
    }
}
