//! The process's memory allocator: mimalloc, set up to hand freed memory back.
//!
//! Rendering, request bodies and SQLite rows are allocated on one thread and freed on
//! another; glibc's malloc spent ~19% of `serve`'s CPU on them, plus the futex
//! wake-ups of its arena locks. With mimalloc `serve` uses 6–21% less CPU per message
//! and sends a 1,000,000-recipient campaign 10–30% faster (BENCHMARKS.md, fourteenth
//! stop). Its defaults keep freed memory: a whole arena committed up front and purged
//! a second after it is freed: 100–116 MiB at 100,000 recipients against 59–63 MiB
//! with glibc. Committing on demand and purging at once brings it to 66 MiB.
//!
//! The arena is reserved at the process's first allocation, before `main`, so the
//! options are set from a constructor that runs after mimalloc's own (which has the
//! earliest priority) and before Rust's runtime allocates. `MIMALLOC_ARENA_EAGER_COMMIT`
//! and `MIMALLOC_PURGE_DELAY` in the environment still win.

use std::ffi::c_int;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e` (`mimalloc.h` of the
/// `libmimalloc-sys` in Cargo.lock). The bindings leave option numbers unnamed on
/// purpose; a test checks the numbers against the options' names.
const MI_ARENA_EAGER_COMMIT: c_int = 4;
/// mimalloc's default for it: eager where the OS overcommits (Linux).
const EAGER_WHERE_OVERCOMMIT: std::ffi::c_long = 2;
/// `mi_option_purge_delay`: milliseconds before freed memory is returned.
const MI_PURGE_DELAY: c_int = 15;
/// mimalloc's default for it.
const PURGE_AFTER_MS: std::ffi::c_long = 1000;

#[allow(unsafe_code)]
unsafe extern "C" {
    fn mi_option_get(option: c_int) -> std::ffi::c_long;
    fn mi_option_set(option: c_int, value: std::ffi::c_long);
}

/// Runs from `.init_array`, before `main` and before the first allocation.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static COMMIT_ON_DEMAND: extern "C" fn() = commit_on_demand;

#[allow(unsafe_code)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
extern "C" fn commit_on_demand() {
    // SAFETY: reads and sets one allocator option; no allocation, no other thread yet.
    // An environment setting was read by mimalloc's own constructor and is kept.
    unsafe {
        if mi_option_get(MI_ARENA_EAGER_COMMIT) == EAGER_WHERE_OVERCOMMIT {
            mi_option_set(MI_ARENA_EAGER_COMMIT, 0);
        }
        if mi_option_get(MI_PURGE_DELAY) == PURGE_AFTER_MS {
            mi_option_set(MI_PURGE_DELAY, 0);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn freed_memory_is_committed_on_demand_and_purged_at_once() {
        // SAFETY: reads allocator options.
        let (eager, delay) = unsafe {
            (
                mi_option_get(MI_ARENA_EAGER_COMMIT),
                mi_option_get(MI_PURGE_DELAY),
            )
        };
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert_eq!(eager, 0, "the constructor did not run before this test");
        }
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(delay, 0, "the constructor did not run before this test");
        }
    }

    #[test]
    fn the_option_numbers_are_mimalloc_s() {
        // With MIMALLOC_VERBOSE set, mimalloc prints its options by number at start-up
        // (this test binary links it as the engine does).
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = std::process::Command::new(exe)
            .arg("--list")
            .env("MIMALLOC_VERBOSE", "1")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let names: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("option '"))
            .filter_map(|l| l.split('\'').next())
            .collect();
        for (number, name) in [
            (MI_ARENA_EAGER_COMMIT, "arena_eager_commit"),
            (MI_PURGE_DELAY, "purge_delay"),
        ] {
            assert_eq!(names.get(number as usize), Some(&name), "{names:?}");
        }
    }
}
