//! The loader is the part of the runtime that reads untrusted bytes. Seeded mutations of a
//! tiny package and of a bundle of it with an adapter (byte flips, truncations, edits of the safetensors headers and of the
//! manifest, some re-signed so that they pass the checksums and reach the parsers) must each
//! be refused with an error naming the package, or load a package that decodes; never a
//! panic, and never an allocation the package's size does not justify (a counting allocator
//! refuses any single allocation over a bound, which aborts the test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::SeedableRng;
use rand::rngs::StdRng;

#[path = "support/mutation.rs"]
mod mutation;

use mutation::{Outcome, artifact_files, check, copy_dir, load, make_bundle, make_package, mutate};

/// Refuses any single allocation over [`LARGEST_ALLOCATION`], so a header that declares a
/// huge tensor cannot make the loader reserve memory the file does not hold.
struct Bounded;

/// Far above what loading the ~0.3 MB package allocates at once, far below what a forged
/// shape would ask.
const LARGEST_ALLOCATION: usize = 64 << 20;

static LARGEST_SEEN: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, refusing (null) only oversized requests.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_SEEN.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > LARGEST_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_SEEN.fetch_max(new_size, Ordering::Relaxed);
        if new_size > LARGEST_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's pointer and layout, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// Mutations tried of each artifact; each loads the mutant once (a few milliseconds).
const MUTATIONS: u64 = 3000;

#[test]
fn mutated_packages_are_refused_by_name_or_load_and_decode() {
    let work = tempfile::tempdir().unwrap();
    let package = work.path().join("package");
    make_package(&root(), &package);
    assert_mutants_refused_or_unchanged(&package, None, work.path());
}

#[test]
fn mutated_bundles_are_refused_by_name_or_load_and_decode() {
    let work = tempfile::tempdir().unwrap();
    let package = work.path().join("package");
    make_package(&root(), &package);
    let bundle = work.path().join("bundle");
    make_bundle(&root(), &package, &bundle);
    assert_mutants_refused_or_unchanged(&bundle, Some("task"), work.path());
}

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Mutates copies of `original` (a package or a bundle) and loads each, with `adapter`
/// active: each follows `mutation::check`'s rule; no panic.
fn assert_mutants_refused_or_unchanged(original: &Path, adapter: Option<&str>, work: &Path) {
    let expected = load(original, adapter).unwrap();
    let files = artifact_files(original, Path::new(""));

    let (mut refused, mut loaded, mut panics) = (0, 0, Vec::new());
    for seed in 0..MUTATIONS {
        let dir = work.join(format!("mutant-{seed}"));
        copy_dir(original, &dir);
        let mut rng = StdRng::seed_from_u64(seed);
        let mutation = mutate(&dir, &files, &mut rng);
        if std::env::var_os("ANDES_MUTATION_LOG").is_some() {
            eprintln!("{seed}: {mutation}");
        }
        match catch_unwind(AssertUnwindSafe(|| {
            check(&dir, adapter, &mutation, &expected)
        })) {
            Err(_) => panics.push(mutation),
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::Loaded) => loaded += 1,
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "{}: {MUTATIONS} mutations, {refused} refused, {loaded} loaded, {} panicked; largest \
         allocation {} bytes",
        original.display(),
        panics.len(),
        LARGEST_SEEN.load(Ordering::Relaxed)
    );
    assert!(panics.is_empty(), "panicked on: {panics:#?}");
    assert!(
        refused > MUTATIONS as usize / 2,
        "most mutations should be refused"
    );
}
