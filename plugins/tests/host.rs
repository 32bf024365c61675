//! The plugin host against real components built from `plugins/examples/`: validation
//! of what an upload may be, the example plugins' answers, and every hostile plugin
//! stopped by the limit meant for it, with the host still serving afterwards.

#[path = "../../tests/support/examples.rs"]
mod examples;

use std::sync::Arc;
use std::time::Duration;

use examples::example_bytes;
use mailing_plugins::{PluginError, PluginHost, PluginLimits, PluginRecipient, Verdict};

fn host(limits: PluginLimits) -> PluginHost {
    PluginHost::new(limits, None).expect("a plugin host")
}

fn recipients(n: usize) -> Vec<PluginRecipient> {
    let langs = ["fr", "de", "en", "es"];
    let plans = ["pro", "free"];
    (0..n)
        .map(|i| PluginRecipient {
            id: i as u64 + 1,
            email: format!("r{i}@example.com"),
            name: (i % 3 != 2).then(|| format!("Name{i}")),
            attributes: serde_json::json!({"lang": langs[i % 4], "plan": plans[i % 2]}).to_string(),
        })
        .collect()
}

fn run(host: &PluginHost, name: &str, config: &str, n: usize) -> mailing_plugins::BatchRun {
    let (_, plugin) = host.validate(&example_bytes(name)).expect("a valid plugin");
    host.run_batch(&plugin, config, 7, "test campaign", &recipients(n))
}

#[test]
fn uploads_that_are_not_personalizer_components_are_refused_with_the_reason() {
    let host = host(PluginLimits {
        max_component_bytes: 4 << 20,
        ..PluginLimits::default()
    });
    assert_eq!(
        host.validate(b"hello, not wasm").unwrap_err(),
        PluginError::NotWasm
    );
    // The smallest valid core module: magic and version 1, no sections.
    let core = b"\0asm\x01\0\0\0";
    let err = host.validate(core).unwrap_err();
    assert_eq!(err, PluginError::CoreModule);
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");

    let err = host.validate(&example_bytes("other-world")).unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld(_)), "{err:?}");
    assert!(
        err.to_string().contains("mailing:plugin/personalize@0.1.0"),
        "the reason names the missing export: {err}"
    );

    let big = vec![0u8; 5 << 20];
    assert!(matches!(
        host.validate(&big).unwrap_err(),
        PluginError::TooLarge { size, max } if size == 5 << 20 && max == 4 << 20
    ));

    // A component header with garbage after it does not compile.
    let mut broken = example_bytes("trivial");
    let half = broken.len() / 2;
    broken.truncate(half);
    assert!(matches!(
        host.validate(&broken).unwrap_err(),
        PluginError::Invalid(_)
    ));

    let (info, _) = host.validate(&example_bytes("trivial")).expect("valid");
    assert_eq!(info.sha256.len(), 64);
}

#[test]
fn the_example_plugins_answer_per_their_config() {
    let host = host(PluginLimits::default());
    let greeting = run(&host, "greeting", "null", 8);
    let verdicts = greeting.result.expect("greeting runs");
    assert_eq!(verdicts.len(), 8);
    let Verdict::Keep { variables, .. } = &verdicts[0] else {
        panic!("greeting keeps everyone: {verdicts:?}")
    };
    assert_eq!(variables["greeting"], "Bonjour Name0", "{variables:?}");
    let Verdict::Keep { variables, .. } = &verdicts[1] else {
        panic!("{verdicts:?}")
    };
    assert_eq!(variables["greeting"], "Hallo Name1");
    assert!(greeting.fuel_used > 0);

    let filter = run(
        &host,
        "segment-filter",
        r#"{"attribute":"plan","op":"eq","value":"pro"}"#,
        6,
    );
    let verdicts = filter.result.expect("the filter runs");
    for (i, v) in verdicts.iter().enumerate() {
        match (i % 2, v) {
            (0, Verdict::Keep { .. }) => {}
            (1, Verdict::Skip { reason }) => assert!(reason.contains("plan"), "{reason}"),
            other => panic!("recipient {i}: {other:?}"),
        }
    }
    let refused = run(&host, "segment-filter", "null", 2);
    assert!(
        matches!(refused.result, Err(PluginError::InvalidConfig(_))),
        "{:?}",
        refused.result
    );

    let ab = run(&host, "ab-subject", r#"{"subjects":["Alpha","Beta"]}"#, 40);
    let verdicts = ab.result.expect("ab-subject runs");
    let subjects: Vec<_> = verdicts
        .iter()
        .map(|v| match v {
            Verdict::Keep { subject, .. } => subject.clone().expect("a subject"),
            Verdict::Skip { .. } => panic!("ab-subject skips nobody"),
        })
        .collect();
    assert!(subjects.iter().any(|s| s == "Alpha") && subjects.iter().any(|s| s == "Beta"));
    let again = run(&host, "ab-subject", r#"{"subjects":["Alpha","Beta"]}"#, 40);
    let again: Vec<_> = again
        .result
        .expect("runs")
        .into_iter()
        .map(|v| match v {
            Verdict::Keep { subject, .. } => subject.expect("a subject"),
            Verdict::Skip { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(subjects, again, "the split is deterministic by recipient");
}

#[test]
fn an_infinite_loop_runs_out_of_fuel_or_hits_the_deadline() {
    let host1 = host(PluginLimits::default());
    let run1 = run(&host1, "hostile-loop", "null", 3);
    assert!(
        matches!(run1.result, Err(PluginError::OutOfFuel { .. })),
        "{:?}",
        run1.result
    );
    // With fuel out of the way, the epoch deadline stops it.
    let host2 = host(PluginLimits {
        fuel_per_batch: u64::MAX / 2,
        deadline: Duration::from_millis(100),
        ..PluginLimits::default()
    });
    let run2 = run(&host2, "hostile-loop", "null", 3);
    assert!(
        matches!(run2.result, Err(PluginError::Deadline { ms: 100 })),
        "{:?}",
        run2.result
    );
    // Liveness, not speed: the call came back instead of spinning forever.
    assert!(run2.elapsed < Duration::from_secs(10), "{:?}", run2.elapsed);
}

#[test]
fn a_memory_bomb_hits_the_cap_deep_recursion_overflows_a_trap_is_reported() {
    let host = host(PluginLimits {
        memory_bytes: 32 << 20,
        ..PluginLimits::default()
    });
    let memory = run(&host, "hostile-memory", "null", 2);
    assert_eq!(
        memory.result.unwrap_err(),
        PluginError::MemoryLimit { bytes: 32 << 20 }
    );
    let recursion = run(&host, "hostile-recursion", "null", 2);
    assert_eq!(recursion.result.unwrap_err(), PluginError::StackOverflow);
    let trap = run(&host, "hostile-trap", "null", 2);
    assert!(
        matches!(trap.result, Err(PluginError::Trap(_))),
        "{:?}",
        trap.result
    );
    // The host is unharmed: a good plugin still runs on it.
    assert!(run(&host, "trivial", "null", 500).result.is_ok());
}

#[test]
fn oversized_answers_and_inputs_are_refused_and_logs_are_capped() {
    let host = host(PluginLimits {
        // Writing megabytes costs fuel; give it enough to reach the output bound.
        fuel_per_batch: 5_000_000_000,
        max_output_bytes: 1 << 20,
        max_input_bytes: 64 << 10,
        ..PluginLimits::default()
    });
    let huge = run(&host, "hostile-huge-output", "null", 2);
    let err = huge.result.unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Malformed(_) | PluginError::MemoryLimit { .. }
        ),
        "{err:?}"
    );
    let (_, plugin) = host.validate(&example_bytes("trivial")).expect("valid");
    let too_many = host.run_batch(&plugin, "null", 1, "c", &recipients(2000));
    assert!(
        matches!(too_many.result, Err(PluginError::InputTooLarge { max, .. }) if max == 64 << 10),
        "{:?}",
        too_many.result
    );

    let flood = run(&host, "hostile-log-flood", "null", 2);
    assert!(flood.result.is_ok(), "{:?}", flood.result);
    let limits = PluginLimits::default();
    assert_eq!(flood.logs.len(), limits.max_log_lines);
    assert!(flood.dropped_logs > 0);
    assert!(
        flood
            .logs
            .iter()
            .all(|l| l.message.len() <= limits.max_log_line_bytes + '…'.len_utf8())
    );
}

#[test]
fn more_callers_than_instances_wait_their_turn() {
    let host = Arc::new(host(PluginLimits {
        max_instances: 2,
        ..PluginLimits::default()
    }));
    let (_, plugin) = host.validate(&example_bytes("greeting")).expect("valid");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (host, plugin) = (host.clone(), plugin.clone());
            std::thread::spawn(move || host.run_batch(&plugin, "null", 1, "c", &recipients(50)))
        })
        .collect();
    for t in threads {
        let run = t.join().expect("no panic");
        assert_eq!(run.result.expect("runs").len(), 50);
    }
}

#[test]
fn compiled_components_are_cached_on_disk_by_hash_and_engine() {
    let dir = tempfile::tempdir().expect("tmp");
    let bytes = example_bytes("trivial");
    let first =
        PluginHost::new(PluginLimits::default(), Some(dir.path().to_path_buf())).expect("host");
    let (info, _) = first.validate(&bytes).expect("valid");
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .expect("cache dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].starts_with(&info.sha256) && cached[0].ends_with(".cwasm"));

    // A second host (another process, a restart) loads the artifact and runs it.
    let second =
        PluginHost::new(PluginLimits::default(), Some(dir.path().to_path_buf())).expect("host");
    let plugin = second
        .load(&info.sha256, &bytes)
        .expect("loads from the cache");
    assert!(
        second
            .run_batch(&plugin, "null", 1, "c", &recipients(3))
            .result
            .is_ok()
    );

    // A corrupted artifact is discarded and the component compiled again.
    std::fs::write(dir.path().join(&cached[0]), b"garbage").expect("write");
    let third =
        PluginHost::new(PluginLimits::default(), Some(dir.path().to_path_buf())).expect("host");
    assert!(third.load(&info.sha256, &bytes).is_ok());
}

#[test]
fn a_plugin_written_with_std_gets_wasi_with_nothing_granted() {
    // std-greeting is the author's guide plugin: built with `std`, it imports WASI.
    let host = host(PluginLimits::default());
    let greeted = run(&host, "std-greeting", "null", 4);
    let verdicts = greeted.result.expect("std-greeting runs");
    let Verdict::Keep { variables, .. } = &verdicts[0] else {
        panic!("{verdicts:?}")
    };
    assert_eq!(variables["greeting"], "Bonjour Name0");
    assert!(
        greeted
            .logs
            .iter()
            .any(|l| l.message.contains("4 recipients")),
        "its log line is captured: {:?}",
        greeted.logs
    );
    let refused = run(&host, "std-greeting", r#"{"x":1}"#, 1);
    assert!(matches!(refused.result, Err(PluginError::InvalidConfig(_))));
}

#[test]
fn the_javascript_greeting_answers_like_the_rust_one() {
    // Built by plugins/examples/build-js.sh (npm), which CI runs.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dist/js/js_greeting.wasm");
    if !path.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing: CI must run plugins/examples/build-js.sh",
            path.display()
        );
        eprintln!(
            "SKIPPED: {} is not built (run plugins/examples/build-js.sh)",
            path.display()
        );
        return;
    }
    let js = std::fs::read(&path).expect("read");
    // A JavaScript engine inside: a bigger component, more memory and fuel.
    let host = host(PluginLimits {
        max_component_bytes: 32 << 20,
        memory_bytes: 256 << 20,
        fuel_per_batch: 5_000_000_000,
        deadline: Duration::from_secs(30),
        ..PluginLimits::default()
    });
    let (_, plugin) = host
        .validate(&js)
        .expect("the JS component implements the world");
    let input = recipients(12);
    let from_js = host.run_batch(&plugin, "null", 1, "c", &input);
    let (_, rust) = host.validate(&example_bytes("greeting")).expect("valid");
    let from_rust = host.run_batch(&rust, "null", 1, "c", &input);
    assert_eq!(
        from_js.result.expect("the JS plugin runs"),
        from_rust.result.expect("the Rust plugin runs")
    );
}
