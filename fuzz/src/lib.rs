//! Property-based fuzzing of durable's decoders of untrusted bytes.
//!
//! Every target in `tests/decoders.rs` feeds a decoder two kinds of input: arbitrary bytes,
//! and mutations (bit flips, insertions, deletions, truncations, duplicated spans) of the
//! seed corpus kept in `fuzz/corpus/<target>/`. Each case asserts the decoder does not panic,
//! that the memory it allocates is bounded by its input ([`peak_alloc`]), and the target's own
//! properties (round trips, agreement between a fast path and the reference path).
//!
//! `cargo test -p durable-fuzz` is the short run CI does ([`cases`], 256 per target by
//! default); `DURABLE_FUZZ_CASES=100000` makes a long one. A failing case is shrunk by proptest
//! and saved under `fuzz/proptest-regressions/`, which is kept in the repository and replayed
//! first by every later run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use proptest::prelude::*;

/// The number of cases per target: `DURABLE_FUZZ_CASES`, else 256.
pub fn cases() -> u32 {
    std::env::var("DURABLE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The seed inputs of `target` (`fuzz/corpus/<target>/*`), sorted by file name.
///
/// # Panics
/// If the directory is missing or empty: a target without seeds is a mistake.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = manifest_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
    Set(usize, u8),
}

fn apply(mut input: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = input.len();
        match *e {
            Edit::Flip(at, bit) if n > 0 => input[at % n] ^= 1 << (bit % 8),
            Edit::Insert(at, b) => input.insert(at % (n + 1), b),
            Edit::Delete(at, len) if n > 0 => {
                let at = at % n;
                input.drain(at..(at + len % 8 + 1).min(n));
            }
            Edit::Truncate(at) => input.truncate(at % (n + 1)),
            Edit::Duplicate(at, len) if n > 0 => {
                let at = at % n;
                let span: Vec<u8> = input[at..(at + len % 32 + 1).min(n)].to_vec();
                input.splice(at..at, span);
            }
            Edit::Set(at, b) if n > 0 => input[at % n] = b,
            _ => {}
        }
    }
    input
}

/// Bytes a decoder of untrusted input meets: arbitrary bytes (often too short to mean
/// anything), and seeds of `seeds` with a few random edits (bytes that are almost valid,
/// which reach the deep paths). Bytes that matter to text formats (`"`, `\n`, `,`, digits) are
/// favoured as replacement bytes.
pub fn input(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"\"\\{}[]:,\n\r 0123456789-e.ndatidkv".to_vec()),
    ];
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Flip(a, b)),
        (any::<usize>(), byte.clone()).prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, l)| Edit::Delete(a, l)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, l)| Edit::Duplicate(a, l)),
        (any::<usize>(), byte).prop_map(|(a, b)| Edit::Set(a, b)),
    ];
    let mutated = (
        prop::sample::select(seeds.clone()),
        prop::collection::vec(edit, 0..6),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits));
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => prop::sample::select(seeds),
        4 => mutated,
    ]
}

thread_local! {
    /// Bytes allocated minus freed on this thread since [`peak_alloc`] started, its peak, and
    /// whether a measurement is on.
    static NOW: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static ON: Cell<bool> = const { Cell::new(false) };
}

fn track(delta: isize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = ON.try_with(|on| {
        if on.get() {
            let now = NOW.with(|n| {
                n.set(n.get() + delta);
                n.get()
            });
            PEAK.with(|p| p.set(p.get().max(now)));
        }
    });
}

/// The system allocator, counting what each thread allocates during [`peak_alloc`]. A test
/// binary installs it with `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
#[derive(Debug)]
pub struct CountingAlloc;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is arithmetic on const-initialised thread-locals, which never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: as for `System::alloc`; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: as for `System::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: `ptr` and `layout` come from `System`, and the caller upholds `realloc`'s
        // contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Run `f` and return its result with the peak of bytes it held allocated on this thread
/// (0 unless the binary installed [`CountingAlloc`]).
pub fn peak_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    NOW.with(|n| n.set(0));
    PEAK.with(|p| p.set(0));
    ON.with(|o| o.set(true));
    let r = f();
    ON.with(|o| o.set(false));
    let peak = PEAK.with(Cell::get);
    (r, usize::try_from(peak).unwrap_or(0))
}

/// The allocation a decoder may make for `len` bytes of input: a constant for its fixed
/// buffers plus a small multiple of the input (copies, parsed values).
pub fn alloc_bound(len: usize) -> usize {
    256 * 1024 + 16 * len
}

/// This package's directory: `cargo test` sets `CARGO_MANIFEST_DIR` when it runs a test, and
/// that names the checkout being tested even when the binary was built from another checkout
/// sharing the target dir (its compile-time value would name that one).
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    )
}
