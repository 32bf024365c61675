//! The small `no_std` runtime that every example plugin links (`use guest_rt as _;`).
//!
//! Why the plugins are `no_std`: with `std`, a `wasm32-wasip2` component imports about a
//! dozen `wasi:cli/*` and `wasi:io/*` interfaces (std writes panic messages to stderr,
//! reads the environment, ...). The host links WASI 0.2 with nothing granted, so such a
//! plugin would run too, but a `no_std` one imports only what the `personalizer` world
//! names (`mailing:plugin/types`, plus `mailing:plugin/host` when it logs), is about a
//! third of the size (`trivial`: 13 KiB instead of 44 KiB) and relies on nothing beyond
//! the contract.
//!
//! `std` normally brings what this crate provides instead:
//! * a global allocator: `dlmalloc`, growing linear memory with `memory.grow`. When the
//!   host refuses to grow memory, allocation fails and the instance traps;
//! * a panic handler: it executes `unreachable`, so a panic is a trap, which the host
//!   treats as a failed batch. Plugins report expected problems as `error` values and
//!   do not panic on input;
//! * `cabi_realloc`, the export through which the host copies strings and lists into
//!   the guest (on `wasm32-wasip2`, `wit-bindgen` expects wasi-libc to define it);
//! * `memcmp` and `bcmp`, which LLVM calls to compare slices (wasi-libc defines them;
//!   `memcpy`, `memmove` and `memset` compile to wasm bulk-memory instructions). Without
//!   them the module would import `env::memcmp` and could not become a component.
//!
//! It also offers [`InstanceState`], a place to keep what `init` parsed for the `batch`
//! calls of the same instance (`std`'s `Mutex` and `thread_local!` are not available).
//!
//! No configuration.
#![no_std]

#[cfg(target_feature = "atomics")]
compile_error!("guest-rt assumes a single-threaded instance (no `atomics` target feature)");

extern crate alloc;

use alloc::alloc::{Layout, alloc, realloc};
use core::cell::RefCell;

/// A value kept by one instance between calls, typically the config that `init` parsed.
///
/// The host may create a fresh instance at any time, but it always calls `init` on an
/// instance before its first `batch`, so this is only a cache of that instance's config.
pub struct InstanceState<T>(RefCell<Option<T>>);

// SAFETY: a component instance built for wasm32-wasip2 without the `atomics` target
// feature (checked above) runs on one thread, and the host makes one call at a time into
// it, so the `RefCell` is never touched from two threads.
unsafe impl<T> Sync for InstanceState<T> {}

impl<T> InstanceState<T> {
    /// An empty state, for a `static`.
    pub const fn new() -> Self {
        Self(RefCell::new(None))
    }

    /// Replaces the value (a second `init` replaces the first one's config).
    pub fn set(&self, value: T) {
        *self.0.borrow_mut() = Some(value);
    }

    /// Runs `f` with the value, or with `None` when `set` was never called.
    pub fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        f(self.0.borrow().as_ref())
    }
}

impl<T> Default for InstanceState<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocation function, as `wit-bindgen` defines it for other targets.
///
/// # Safety
/// Called by the component runtime only, with the canonical ABI's arguments: `old_ptr`
/// and `old_len` describe a block this function returned before (or are 0), and `align`
/// is a power of two.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        // Out of memory (or over the host's cap): trap rather than hand back null.
        core::arch::wasm32::unreachable();
    }
    ptr
}

/// `memcmp` from C, for the compiler's slice and string comparisons.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, and the caller guarantees n readable bytes behind both pointers.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp` from C: like `memcmp`, but only zero versus non-zero matters.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract as memcmp's.
    unsafe { memcmp(a, b, n) }
}
