//! The loader is the part of the runtime that reads untrusted bytes. Seeded mutations of a
//! tiny package and of a bundle of it with an adapter (byte flips, truncations, edits of the safetensors headers and of the
//! manifest, some re-signed so that they pass the checksums and reach the parsers) must each
//! be refused with an error naming the package, or load a package that decodes; never a
//! panic, and never an allocation the package's size does not justify (a counting allocator
//! refuses any single allocation over a bound, which aborts the test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use andes_model::device::parse_device;
use andes_model::generate::Decoding;
use andes_model::quantize::PtqMethod;
use andes_model::sensitivity::SensitivityMeasure;
use andes_package::{
    BundledAdapter, Calibration, PlanSource, QuantizeParams, TrainedAgainst, package_sha256,
    quantize_model, write_package_bundle,
};
use andes_runtime::{RunRequest, Runtime, generate};
use burn::tensor::DType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

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
    make_package(&package);
    assert_mutants_refused_or_unchanged(&package, None, work.path());
}

#[test]
fn mutated_bundles_are_refused_by_name_or_load_and_decode() {
    let work = tempfile::tempdir().unwrap();
    let package = work.path().join("package");
    make_package(&package);
    let bundle = work.path().join("bundle");
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/lora/peft-adapter");
    let trained_against = TrainedAgainst {
        package: package.display().to_string(),
        package_sha256: package_sha256(&package).unwrap(),
    };
    write_package_bundle(
        &bundle,
        &package,
        &[BundledAdapter {
            name: "task",
            dir: &adapter,
            trained_against: Some(trained_against),
            provenance: serde_json::Value::Null,
        }],
    )
    .unwrap();
    assert_mutants_refused_or_unchanged(&bundle, Some("task"), work.path());
}

/// Mutates copies of `original` (a package or a bundle) and loads each, with `adapter`
/// active: refused naming the mutant, or loaded; an unsigned change that loads must decode
/// as the original does; no panic.
fn assert_mutants_refused_or_unchanged(original: &Path, adapter: Option<&str>, work: &Path) {
    let prompt = [11u32, 48, 85, 122];
    let load = |dir: &Path| {
        let mut runtime = Runtime::load(dir)?;
        runtime.use_adapter(adapter.map(Path::new))?;
        Ok::<_, andes_runtime::RuntimeError>(greedy(&runtime, &prompt))
    };
    let expected = load(original).unwrap();
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
        match catch_unwind(AssertUnwindSafe(|| load(&dir))) {
            Err(_) => panics.push(mutation),
            Ok(Err(error)) => {
                let message = error.to_string();
                assert!(
                    message.contains(&dir.display().to_string()),
                    "{mutation}: the error does not name the artifact: {message}"
                );
                refused += 1;
            }
            Ok(Ok(tokens)) => {
                // An unsigned change the loader accepted must not have changed the model.
                if !mutation.re_signed {
                    assert_eq!(
                        tokens, expected,
                        "{mutation}: loaded, but decodes differently"
                    );
                }
                loaded += 1;
            }
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

/// A package of the tiny fixture at about 4 bits per weight, rounded to nearest.
fn make_package(out: &Path) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny-untied-mha-f32");
    let params = QuantizeParams {
        model: fixture.clone(),
        target: "generic-cpu".into(),
        plan: PlanSource::Budget(4.0),
        calibration: Some(Calibration {
            text: fixture.join("eval.txt"),
            windows: 2,
            seq_len: 32,
            images: None,
        }),
        sensitivity: SensitivityMeasure::Hessian,
        method: PtqMethod::Rtn,
        context: 128,
        cache: out.with_extension("cache"),
        device: parse_device("cpu").unwrap(),
        dtype: DType::F32,
        out: out.to_owned(),
    };
    quantize_model(&params).unwrap();
}

fn greedy(runtime: &Runtime, prompt: &[u32]) -> Vec<u32> {
    let request = RunRequest {
        max_new_tokens: 4,
        decoding: Decoding::Greedy,
        stop_tokens: Vec::new(),
        kv_budget: None,
        speculation: None,
    };
    let inputs = runtime.decoder.embed(prompt);
    generate(&runtime.decoder, prompt, inputs, &request)
        .unwrap()
        .token_ids
}

/// What was done to a package, for the failure messages.
#[derive(Debug)]
struct Mutation {
    file: String,
    change: String,
    /// The manifest's checksum of the file was updated to match, as a forger would.
    re_signed: bool,
}

impl std::fmt::Display for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signed = if self.re_signed { ", re-signed" } else { "" };
        write!(f, "{}: {}{signed}", self.file, self.change)
    }
}

/// Every file under `dir`, by `/`-separated path relative to it (`prefix` for the recursion).
fn artifact_files(dir: &Path, prefix: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.join(prefix)).unwrap() {
        let relative = prefix.join(entry.unwrap().file_name());
        if dir.join(&relative).is_dir() {
            files.extend(artifact_files(dir, &relative));
        } else {
            files.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Applies one seeded mutation to a file of `dir`.
fn mutate(dir: &Path, files: &[String], rng: &mut StdRng) -> Mutation {
    let file = files[rng.random_range(0..files.len())].clone();
    let path: PathBuf = dir.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    let change = match rng.random_range(0..5) {
        0 => {
            let at = rng.random_range(0..bytes.len());
            let bit = rng.random_range(0..8);
            bytes[at] ^= 1 << bit;
            format!("bit {bit} of byte {at} flipped")
        }
        1 => {
            let length = rng.random_range(0..bytes.len());
            bytes.truncate(length);
            format!("truncated to {length} bytes")
        }
        2 => {
            // a byte of the leading region: a safetensors header, the start of a JSON file
            let at = rng.random_range(0..bytes.len().min(512));
            let value = rng.random();
            bytes[at] = value;
            format!("byte {at} set to {value}")
        }
        3 => edit_number(&mut bytes, rng),
        _ => {
            let at = rng.random_range(0..bytes.len());
            let length = rng.random_range(1..64).min(bytes.len() - at);
            bytes.drain(at..at + length);
            format!("{length} bytes removed at {at}")
        }
    };
    std::fs::write(&path, &bytes).unwrap();
    let re_signed = !file.ends_with("manifest.json") && rng.random_bool(0.5);
    if re_signed {
        re_sign(dir, &file, &bytes);
    }
    Mutation {
        file,
        change,
        re_signed,
    }
}

/// Replaces one decimal number in the file's leading text (a safetensors header's shapes and
/// offsets, a JSON file's sizes) with another, often huge, number.
fn edit_number(bytes: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let head = bytes.len().min(64 << 10);
    let numbers: Vec<(usize, usize)> = {
        let mut found = Vec::new();
        let mut i = 0;
        while i < head {
            if bytes[i].is_ascii_digit() {
                let start = i;
                while i < head && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                found.push((start, i));
            }
            i += 1;
        }
        found
    };
    if numbers.is_empty() {
        return "no number to edit".into();
    }
    let (start, end) = numbers[rng.random_range(0..numbers.len())];
    let replacement = match rng.random_range(0..4) {
        0 => "0".to_string(),
        1 => u64::MAX.to_string(),
        2 => (1u64 << rng.random_range(20..62)).to_string(),
        _ => rng.random_range(0..100_000u64).to_string(),
    };
    let before = String::from_utf8_lossy(&bytes[start..end]).into_owned();
    bytes.splice(start..end, replacement.bytes());
    format!("number {before} at {start} replaced by {replacement}")
}

/// Updates the sha256 of `file` (a path under `dir`) in the manifest that covers it: a
/// bundle's package files in `package/manifest.json`, its adapters' in the bundle's
/// `manifest.json` (by path under `adapters/`), a package's in its own.
fn re_sign(dir: &Path, file: &str, bytes: &[u8]) {
    let (manifest_path, key) = match (
        file.strip_prefix("package/"),
        file.strip_prefix("adapters/"),
    ) {
        (Some(inner), _) => (dir.join("package/manifest.json"), inner),
        (_, Some(adapter)) => (dir.join("manifest.json"), adapter),
        _ => (dir.join("manifest.json"), file),
    };
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let digest = format!("{:x}", Sha256::digest(bytes));
    if let Some(entry) = manifest["files"].get_mut(key) {
        *entry = serde_json::Value::String(digest);
    }
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}
