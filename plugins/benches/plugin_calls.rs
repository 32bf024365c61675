//! What a plugin costs: the `trivial` example (keeps everyone with `{}`) called
//!
//! * in batch mode, on 500 recipients at once (how the pipeline calls plugins): the
//!   reported time divided by 500 is the cost per recipient;
//! * once per recipient (a fresh instance for each): what batch mode saves;
//! * on no recipients: a fresh instance, `init` and an empty `batch`, i.e. the fixed
//!   cost of one call.
//!
//! `cargo bench -p mailing-plugins --bench plugin_calls`

#[path = "../../tests/support/examples.rs"]
mod examples;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mailing_plugins::{PluginHost, PluginLimits, PluginRecipient};

fn recipients(n: usize) -> Vec<PluginRecipient> {
    (0..n)
        .map(|i| PluginRecipient {
            id: i as u64 + 1,
            email: format!("user{i}@example.com"),
            name: Some(format!("User {i}")),
            attributes: format!(r#"{{"lang":"fr","plan":"pro","n":{i}}}"#),
        })
        .collect()
}

fn plugin_calls(c: &mut Criterion) {
    let host = PluginHost::new(PluginLimits::default(), None).expect("host");
    let mut group = c.benchmark_group("plugin");
    for name in ["trivial", "greeting"] {
        let (_, plugin) = host
            .validate(&examples::example_bytes(name))
            .expect("a valid plugin");
        let batch = recipients(500);
        group.throughput(Throughput::Elements(batch.len() as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{name}/batch"), 500),
            &batch,
            |b, batch| {
                // The pipeline hands its recipients over (`run_batch_owned`): copying
                // them is set-up, not the plugin's cost.
                b.iter_batched(
                    || batch.clone(),
                    |batch| {
                        let run = host.run_batch_owned(&plugin, "null", 1, "bench", batch);
                        assert!(run.result.is_ok());
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let one = recipients(1);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new(format!("{name}/per_recipient"), 1),
            &one,
            |b, one| {
                // The pipeline hands its recipients over (`run_batch_owned`): copying
                // them is set-up, not the plugin's cost.
                b.iter_batched(
                    || one.clone(),
                    |one| {
                        let run = host.run_batch_owned(&plugin, "null", 1, "bench", one);
                        assert!(run.result.is_ok());
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    let (_, trivial) = host
        .validate(&examples::example_bytes("trivial"))
        .expect("a valid plugin");
    group.throughput(Throughput::Elements(1));
    group.bench_function("trivial/instantiate_and_empty_call", |b| {
        b.iter(|| {
            let run = host.run_batch(&trivial, "null", 1, "bench", &[]);
            assert!(run.result.is_ok());
        })
    });
    group.finish();
}

criterion_group!(benches, plugin_calls);
criterion_main!(benches);
