//! Seeded mutations of a package or a bundle and the rule every mutant must follow, shared by
//! the mutation test (`tests/package_mutations.rs`, choices from a seeded generator) and the
//! fuzzer (`fuzz/fuzz_targets/package_loader.rs`, choices from libFuzzer's bytes, so its
//! coverage guidance steers the mutations): a mutant is refused with an error naming it, or
//! it loads; an unsigned change that loads decodes as the original does.

use std::path::{Path, PathBuf};

use andes_model::device::parse_device;
use andes_model::generate::Decoding;
use andes_model::quantize::PtqMethod;
use andes_model::sensitivity::SensitivityMeasure;
use andes_package::{
    BundledAdapter, Calibration, PlanSource, QuantizeParams, TrainedAgainst, package_sha256,
    quantize_model, write_package_bundle,
};
use andes_runtime::{RunRequest, Runtime, RuntimeError, generate};
use burn::tensor::DType;
use rand::Rng;
use sha2::{Digest, Sha256};

/// The prompt every mutant decodes.
const PROMPT: [u32; 4] = [11, 48, 85, 122];

/// What loading a mutant came to, when it followed the rule.
pub enum Outcome {
    /// Refused with an error that names the mutant.
    Refused,
    /// Loaded and decoded.
    Loaded,
}

/// Loads `dir` (a package or a bundle) with `adapter` active and decodes the prompt greedily.
pub fn load(dir: &Path, adapter: Option<&str>) -> Result<Vec<u32>, RuntimeError> {
    let mut runtime = Runtime::load(dir)?;
    runtime.use_adapter(adapter.map(Path::new))?;
    Ok(greedy(&runtime, &PROMPT))
}

/// Loads the mutant at `dir` and checks the rule against the original's tokens `expected`,
/// panicking with the mutation where it is broken.
pub fn check(dir: &Path, adapter: Option<&str>, mutation: &Mutation, expected: &[u32]) -> Outcome {
    match load(dir, adapter) {
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains(&dir.display().to_string()),
                "{mutation}: the error does not name the artifact: {message}"
            );
            Outcome::Refused
        }
        Ok(tokens) => {
            // An unsigned change the loader accepted must not have changed the model.
            if !mutation.re_signed {
                assert_eq!(
                    tokens, expected,
                    "{mutation}: loaded, but decodes differently"
                );
            }
            Outcome::Loaded
        }
    }
}

/// A bundle at `out` of `package` and the PEFT fixture adapter of the repository at `root`,
/// named `task`.
pub fn make_bundle(root: &Path, package: &Path, out: &Path) {
    let adapter = root.join("fixtures/lora/peft-adapter");
    let trained_against = TrainedAgainst {
        package: package.display().to_string(),
        package_sha256: package_sha256(package).unwrap(),
    };
    write_package_bundle(
        out,
        package,
        &[BundledAdapter {
            name: "task",
            dir: &adapter,
            trained_against: Some(trained_against),
            provenance: serde_json::Value::Null,
        }],
    )
    .unwrap();
}

/// A package at `out` of the tiny fixture of the repository at `root`, at about 4 bits per
/// weight, rounded to nearest.
pub fn make_package(root: &Path, out: &Path) {
    let fixture = root.join("fixtures/qwen3-tiny-untied-mha-f32");
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
pub struct Mutation {
    pub file: String,
    pub change: String,
    /// The manifest's checksum of the file was updated to match, as a forger would.
    pub re_signed: bool,
}

impl std::fmt::Display for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signed = if self.re_signed { ", re-signed" } else { "" };
        write!(f, "{}: {}{signed}", self.file, self.change)
    }
}

/// Every file under `dir`, by `/`-separated path relative to it (`prefix` for the recursion).
pub fn artifact_files(dir: &Path, prefix: &Path) -> Vec<String> {
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

pub fn copy_dir(from: &Path, to: &Path) {
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
pub fn mutate(dir: &Path, files: &[String], rng: &mut impl Rng) -> Mutation {
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
fn edit_number(bytes: &mut Vec<u8>, rng: &mut impl Rng) -> String {
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
