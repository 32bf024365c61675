//! Micro-benchmarks of the send stage's hot paths: rendering a realistic template with
//! and without the compiled-template cache, building the MIME message, encoding a Resend
//! batch request (against serde_json's encoding of the same objects), and the ledger's
//! claim + record round trip for one batch on SQLite.
//!
//! Run: `cargo bench -p mailing-jobs --bench hot_paths`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mailing_jobs::message::{Envelope, build};
use mailing_jobs::provider::Outgoing;
use mailing_jobs::provider::resend::batch_body;
use mailing_jobs::render::{CacheConfig, CampaignVars, RenderContext, Renderer, TemplateSource};
use mailing_jobs::store::deliveries::{AudienceMember, Outcome};
use mailing_jobs::store::subscribers::NewSubscriber;
use mailing_jobs::store::{Store, StoreConfig};

/// A ~6 KB HTML newsletter with a dozen variables, loops and conditionals.
fn template() -> (String, String, String) {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{{ campaign.name }}</title>\
         <style>body{font-family:Helvetica,Arial,sans-serif;color:#222}.card{border:1px solid #ddd;\
         padding:16px;margin:12px 0;border-radius:6px}.cta{background:#0a7;color:#fff;padding:8px 14px}</style>\
         </head><body><h1>Hello {{ subscriber.name }}!</h1>\
         <p>We picked these for you in {{ subscriber.attributes.city }}, based on your interest in \
         {{ subscriber.attributes.interest }}.</p>",
    );
    for i in 0..12 {
        html.push_str(&format!(
            "<div class=\"card\"><h2>Offer {i}: {{{{ subscriber.attributes.interest | upcase }}}} deals</h2>\
             <p>Dear {{{{ subscriber.name }}}}, as a {{{{ subscriber.attributes.tier }}}} member since \
             {{{{ subscriber.attributes.since }}}} you save {{{{ subscriber.attributes.discount }}}}% on item {i}. \
             Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.</p>\
             {{% if subscriber.attributes.tier == \"gold\" %}}<p>Gold bonus applies.</p>{{% endif %}}\
             <a class=\"cta\" href=\"https://shop.example/o/{i}?u={{{{ subscriber.email | url_encode }}}}\">Shop now</a></div>"
        ));
    }
    html.push_str("<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>");
    let subject = "{{ subscriber.name }}, {{ subscriber.attributes.discount }}% off in {{ subscriber.attributes.city }}".into();
    let text = "Hello {{ subscriber.name }}, see {{ unsubscribe_url }}".into();
    (subject, html, text)
}

fn context(i: usize) -> RenderContext {
    let attributes = serde_json::json!({
        "city": "Oslo", "interest": "hiking", "tier": if i.is_multiple_of(2) { "gold" } else { "silver" },
        "since": 2019, "discount": 15
    });
    RenderContext {
        email: format!("user{i}@example.com"),
        name: Some(format!("Subscriber {i}")),
        attributes: attributes.as_object().cloned().unwrap_or_default(),
        campaign: CampaignVars::new(&serde_json::json!({"id": 1, "name": "Spring"})),
        unsubscribe_url: "https://mail.example/unsubscribe/abc.def".into(),
        extra: serde_json::Map::new(),
    }
}

fn render(c: &mut Criterion) {
    let (subject, html, text) = template();
    let source = TemplateSource {
        subject: &subject,
        html: &html,
        text: Some(&text),
    };
    let cached = Renderer::new(CacheConfig {
        enabled: true,
        ttl: Duration::from_secs(3600),
        capacity: 100,
    });
    let uncached = Renderer::new(CacheConfig {
        enabled: false,
        ttl: Duration::from_secs(3600),
        capacity: 100,
    });
    let ctx = context(7);
    let mut group = c.benchmark_group("render");
    group.bench_function("with_cache", |b| {
        b.iter(|| {
            cached
                .compiled(1, 1, source)
                .and_then(|t| t.render(&ctx))
                .map(|r| r.html.len())
        })
    });
    group.bench_function("without_cache", |b| {
        b.iter(|| {
            uncached
                .compiled(1, 1, source)
                .and_then(|t| t.render(&ctx))
                .map(|r| r.html.len())
        })
    });
    group.finish();

    let compiled = cached.compiled(1, 1, source).expect("template compiles");
    let body = compiled.render(&ctx).expect("renders");
    c.bench_function("mime_build", |b| {
        b.iter(|| {
            build(
                &Envelope {
                    from: "Shop <news@shop.example>",
                    reply_to: None,
                    to_email: "user7@example.com",
                    to_name: Some("Subscriber 7"),
                    delivery_key: "0123456789abcdef0123456789abcdef",
                    unsubscribe_url: Some("https://mail.example/unsubscribe/abc.def"),
                    unsubscribe_mailto: None,
                },
                &body,
            )
            .map(|m| m.formatted().len())
        })
    });

    // A Resend batch request of 100 of these messages.
    let message = Outgoing {
        from_header: "Shop <news@shop.example>".into(),
        to_header: "Subscriber 7 <user7@example.com>".into(),
        subject: body.subject.clone(),
        html: body.html.clone(),
        text: body.text.clone(),
        list_unsubscribe: "<https://mail.example/unsubscribe/abc.def>".into(),
        ..Outgoing::default()
    };
    let messages: Vec<&Outgoing> = std::iter::repeat_n(&message, 100).collect();
    let emails: Vec<SerdeEmail<'_>> = messages.iter().map(|m| SerdeEmail::of(m)).collect();
    let expected = batch_body(&messages);
    assert_eq!(
        expected,
        serde_json::to_vec(&emails).expect("encodes"),
        "the two encodings agree"
    );
    let mut group = c.benchmark_group("resend_body_100");
    group.bench_function("batch_body", |b| b.iter(|| batch_body(&messages).len()));
    // Into a buffer of the body's size, as `batch_body` allocates.
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(expected.capacity());
            serde_json::to_writer(&mut out, &emails).map(|()| out.len())
        })
    });
    group.finish();
}

/// The Resend email object encoded by serde_json, the reference for `batch_body`.
#[derive(serde::Serialize)]
struct SerdeEmail<'a> {
    from: &'a str,
    to: [&'a str; 1],
    subject: &'a str,
    html: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    headers: std::collections::BTreeMap<&'static str, &'a str>,
}

impl<'a> SerdeEmail<'a> {
    fn of(m: &'a Outgoing) -> Self {
        SerdeEmail {
            from: &m.from_header,
            to: [&m.to_header],
            subject: &m.subject,
            html: &m.html,
            text: m.text.as_deref(),
            headers: [
                ("List-Unsubscribe", m.list_unsubscribe.as_str()),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ]
            .into(),
        }
    }
}

fn ledger(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("mailing-bench-{}", std::process::id()));
    let store = runtime.block_on(async {
        let store = Store::connect(&StoreConfig {
            url: format!("sqlite://{}/bench.sqlite3", dir.display()),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(10),
        })
        .await
        .expect("store");
        let list = store.create_list("bench", None).await.expect("list");
        let rows: Vec<NewSubscriber> = (0..500)
            .map(|i| NewSubscriber {
                email: format!("user{i}@example.com"),
                name: None,
                attributes: None,
            })
            .collect();
        store
            .add_subscribers(list.id, &rows)
            .await
            .expect("subscribers");
        let template = store
            .create_template("t", "s", "h", None)
            .await
            .expect("template");
        let campaign = store
            .create_campaign(&mailing_jobs::store::campaigns::NewCampaign {
                name: "bench".into(),
                template_id: template.id,
                list_ids: vec![list.id],
                from: "a@b.example".into(),
                reply_to: None,
                provider: "file".into(),
                plugins: vec![],
                send_at: None,
            })
            .await
            .expect("campaign");
        (store, campaign.id)
    });
    let (store, campaign) = store;
    let members: Vec<AudienceMember> = runtime
        .block_on(store.audience_page(campaign, 0, 500))
        .expect("audience");
    let mut batch = 0;
    c.bench_function("ledger_plan_claim_record_500", |b| {
        b.iter(|| {
            runtime.block_on(async {
                // A fresh batch number per iteration: new rows only for the first one;
                // later ones exercise the conflict path, as a re-run of plan would.
                store
                    .insert_deliveries(campaign, batch, &members)
                    .await
                    .expect("insert");
                let claimed = store.claim_batch(campaign, 0, None).await.expect("claim");
                let outcomes: Vec<(i64, Outcome)> = claimed
                    .iter()
                    .map(|r| {
                        (
                            r.delivery_id,
                            Outcome::Retry {
                                error: "bench".into(),
                            },
                        )
                    })
                    .collect();
                store
                    .record_outcomes(&outcomes, 1_000_000)
                    .await
                    .expect("record");
                batch += 1;
                claimed.len()
            })
        })
    });
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, render, ledger);
criterion_main!(benches);
