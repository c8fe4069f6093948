//! The runtime's loader under libFuzzer: each input is a mutation program run on a copy of a
//! tiny package or of a bundle of it with an adapter (the first choice picks which), the
//! choices of `mutate` (which file, which change, where, re-signed or not) read from the
//! input's bytes, so libFuzzer's coverage guidance steers them into the parsers. Every mutant
//! must follow the mutation test's rule (`crates/andes-runtime/tests/support/mutation.rs`):
//! refused with an error naming it, or loaded, an unsigned change decoding as the original.
//! A panic, a hang (`-timeout`) or an allocation over `-malloc_limit_mb` is a finding.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rand::RngCore;

#[path = "../../crates/andes-runtime/tests/support/mutation.rs"]
mod mutation;

/// The two originals, made once a process, with their files and greedy tokens.
struct Originals {
    work: PathBuf,
    artifacts: [(PathBuf, Option<&'static str>, Vec<String>, Vec<u32>); 2],
}

fn originals() -> &'static Originals {
    static ORIGINALS: OnceLock<Originals> = OnceLock::new();
    ORIGINALS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let work = std::env::temp_dir().join(format!("andes-fuzz-{}", std::process::id()));
        let (package, bundle) = (work.join("package"), work.join("bundle"));
        mutation::make_package(&root, &package);
        mutation::make_bundle(&root, &package, &bundle);
        let artifact = |dir: PathBuf, adapter: Option<&'static str>| {
            let files = mutation::artifact_files(&dir, Path::new(""));
            let tokens = mutation::load(&dir, adapter).unwrap();
            (dir, adapter, files, tokens)
        };
        Originals {
            artifacts: [artifact(package, None), artifact(bundle, Some("task"))],
            work,
        }
    })
}

/// The input's bytes as a source of choices, zeros once they run out.
struct Choices<'a>(&'a [u8]);

impl RngCore for Choices<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, out: &mut [u8]) {
        let taken = out.len().min(self.0.len());
        out[..taken].copy_from_slice(&self.0[..taken]);
        out[taken..].fill(0);
        self.0 = &self.0[taken..];
    }
}

fuzz_target!(|data: &[u8]| {
    let originals = originals();
    let mut choices = Choices(data);
    let (original, adapter, files, expected) =
        &originals.artifacts[(choices.next_u32() % 2) as usize];
    let dir = originals.work.join("mutant");
    let _ = std::fs::remove_dir_all(&dir);
    mutation::copy_dir(original, &dir);
    let mutation = mutation::mutate(&dir, files, &mut choices);
    mutation::check(&dir, *adapter, &mutation, expected);
});
