//! The limits a bench run measures beside the engine, each alone, so the end-to-end
//! figure can be read against them: Liquid rendering on one core, the chosen plugin on
//! one core, the queue backend's round trip for empty jobs, and how fast the sink takes
//! messages from the real provider client.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mailing_jobs::message::{Envelope, MessageForm, outgoing};
use mailing_jobs::provider::{Outgoing, Provider};
use mailing_jobs::queue::Queue;
use mailing_jobs::render::{CacheConfig, Renderer};
use mailing_plugins::{PluginHost, PluginLimits, Verdict};

use super::audience::{self, Newsletter};

/// How long each in-process limit is measured.
pub const MEASURE_FOR: Duration = Duration::from_secs(2);

/// Messages per second Liquid renders (subject, HTML, text) on one core, the compiled
/// template taken from the cache per message as the send stage does.
pub fn render_only_per_sec(newsletter: &Newsletter) -> anyhow::Result<f64> {
    let renderer = Renderer::new(CacheConfig {
        enabled: true,
        ttl: Duration::from_secs(3600),
        capacity: 10,
    });
    let contexts: Vec<_> = (0..1000)
        .map(|i| audience::render_context(i, "Bench"))
        .collect();
    let mut done = 0_u64;
    let started = Instant::now();
    let mut next = contexts.iter().cycle();
    while started.elapsed() < MEASURE_FOR {
        for ctx in next.by_ref().take(100) {
            let compiled = renderer
                .compiled(1, 1, newsletter.source())
                .context("the bench template does not compile")?;
            let body = compiled
                .render(ctx)
                .context("the bench template does not render")?;
            std::hint::black_box(body);
            done += 1;
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Recipients per second the plugin decides on one core, in batches of 500 through
/// `PluginHost::run_batch` (a fresh instance per batch, as in the send stage).
pub fn plugin_only_per_sec(limits: PluginLimits, wasm: &[u8]) -> anyhow::Result<f64> {
    let host = PluginHost::new(limits, None).context("starting the plugin host")?;
    let (_, plugin) = host.validate(wasm).context("the plugin is not valid")?;
    let recipients = audience::plugin_recipients(500);
    let mut done = 0_u64;
    let started = Instant::now();
    while started.elapsed() < MEASURE_FOR {
        let run = host.run_batch(&plugin, "null", 1, "Bench", &recipients);
        let verdicts = run.result.context("the plugin failed on the bench batch")?;
        let kept = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Keep { .. }))
            .count();
        done += kept as u64;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Empty jobs per second through push and consume on the queue's backend.
pub async fn queue_noop_jobs_per_sec(queue: &Queue, concurrency: usize) -> anyhow::Result<f64> {
    let result = mailing_jobs::queue::probe::noop_round_trip(
        queue,
        2000,
        concurrency,
        Duration::from_secs(120),
    )
    .await
    .context("measuring the queue's round trip")?;
    Ok(result.jobs_per_sec())
}

/// 500 rendered messages of the bench newsletter, as the send stage hands a batch to a
/// provider.
pub fn sample_batch(newsletter: &Newsletter, form: MessageForm) -> anyhow::Result<Vec<Outgoing>> {
    let renderer = Renderer::new(CacheConfig {
        enabled: true,
        ttl: Duration::from_secs(3600),
        capacity: 10,
    });
    let compiled = renderer.compiled(1, 1, newsletter.source())?;
    (0..500)
        .map(|i| {
            let ctx = audience::render_context(i, "Bench");
            let body = compiled.render(&ctx)?;
            let key = format!("sinkprobe{i:08}");
            let to = audience::email(i);
            Ok(outgoing(
                &Envelope {
                    from: "Shop <news@shop.example>",
                    reply_to: None,
                    to_email: &to,
                    to_name: ctx.name.as_deref(),
                    delivery_key: &key,
                    unsubscribe_url: Some(&ctx.unsubscribe_url),
                    unsubscribe_mailto: None,
                },
                body,
                None,
                form,
            )?)
        })
        .collect()
}

/// Messages per second the provider client and the sink exchange, with `workers`
/// batches of 500 in flight, each sent `concurrency` requests at a time (the engine's
/// own settings), for [`MEASURE_FOR`].
pub async fn sink_accept_per_sec(
    provider: Provider,
    batch: Vec<Outgoing>,
    workers: usize,
    concurrency: usize,
    fresh_keys: bool,
) -> anyhow::Result<f64> {
    let (provider, batch) = (Arc::new(provider), Arc::new(batch));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..workers.max(1) {
        let (provider, mut batch, accepted) = (provider.clone(), batch.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while started.elapsed() < MEASURE_FOR {
                // With `fresh_keys`, new delivery keys every round, as a campaign's
                // batches have: the HTTP sink answers a request whose Idempotency-Key it
                // has seen without counting it, which is not the accepting it is here to
                // measure. (The outbox keeps writing the same files.)
                round += 1;
                if fresh_keys {
                    // Each task's own copy, made at its first round; shared otherwise.
                    for (i, m) in Arc::make_mut(&mut batch).iter_mut().enumerate() {
                        m.delivery_key.clear();
                        let _ = write!(m.delivery_key, "sinkprobe-{task}-{round}-{i}");
                    }
                }
                let results = provider.send_batch(&batch, concurrency).await;
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    return Err(anyhow::anyhow!("the sink refused a message: {e}"));
                }
                accepted.fetch_add(results.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a sink probe task panicked")??;
    }
    Ok(accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
