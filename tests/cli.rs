//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints, checked against the
//! transformers references in `fixtures/*/reference.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: [&str; 4] = [
    "qwen3-tiny-tied-gqa-f32",
    "qwen3-tiny-untied-mha-f32",
    "qwen3-tiny-bf16-sharded",
    "qwen3-tiny-linear-rope-f32",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn andes(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_andes"))
        .args(args)
        .output()
        .expect("the andes binary runs")
}

fn json_stdout(output: Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "andes failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_json_greedy_matches_transformers_ids() {
    for name in FIXTURES {
        let reference = reference(name);
        let dir = fixture(name);
        let out = json_stdout(andes(&[
            "generate",
            "--model",
            path(&dir),
            "--prompt",
            reference["prompt"].as_str().unwrap(),
            "--max-new-tokens",
            "20",
            "--greedy",
            "--json",
        ]));
        assert_eq!(out["token_ids"], reference["greedy_ids"], "{name}");
        assert_eq!(out["text"], reference["greedy_text"], "{name}");
    }
}

#[test]
fn eval_perplexity_matches_transformers_within_1e_4() {
    for name in FIXTURES {
        let reference = reference(name);
        let dir = fixture(name);
        let out = json_stdout(andes(&[
            "eval",
            "--model",
            path(&dir),
            "--text",
            path(&dir.join("eval.txt")),
            "--window",
            "128",
            "--stride",
            "64",
            "--json",
        ]));
        assert_eq!(out["tokens"], reference["eval_num_tokens"], "{name}");
        assert_eq!(out["scored_tokens"], reference["eval_tokens"], "{name}");
        let ours = out["perplexity"].as_f64().unwrap();
        let theirs = reference["eval_perplexity"].as_f64().unwrap();
        assert!(
            ((ours - theirs) / theirs).abs() <= 1e-4,
            "{name}: perplexity {ours} vs transformers {theirs}"
        );
    }
}

#[test]
fn sampling_is_reproducible_from_the_seed() {
    let dir = fixture("qwen3-tiny-untied-mha-f32");
    let run = |seed: &str| {
        json_stdout(andes(&[
            "generate",
            "--model",
            path(&dir),
            "--prompt",
            "Water",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0.9",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--json",
        ]))["token_ids"]
            .clone()
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn converted_bf16_checkpoint_reloads_and_stays_close() {
    let dir = fixture("qwen3-tiny-untied-mha-f32");
    let out = tempfile::tempdir().unwrap();
    let converted = andes(&[
        "convert",
        "--model",
        path(&dir),
        "--out",
        path(out.path()),
        "--save-dtype",
        "bf16",
    ]);
    assert!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let eval = |model: &Path| {
        json_stdout(andes(&[
            "eval",
            "--model",
            path(model),
            "--text",
            path(&dir.join("eval.txt")),
            "--window",
            "128",
            "--stride",
            "64",
            "--json",
        ]))["mean_nll"]
            .as_f64()
            .unwrap()
    };
    let (float, rounded) = (eval(&dir), eval(out.path()));
    // bf16 keeps 8 bits of mantissa: the NLL moves, but by far less than a percent.
    assert!(
        float != rounded && ((float - rounded) / float).abs() < 1e-2,
        "{float} vs {rounded}"
    );
}

#[test]
fn info_counts_parameters_of_the_checkpoint() {
    let dir = fixture("qwen3-tiny-tied-gqa-f32");
    let out = json_stdout(andes(&["info", "--model", path(&dir), "--json"]));
    // Sum of the tensor sizes in model.safetensors (tied: no lm_head.weight).
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let stored: u64 = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| {
            v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    assert_eq!(out["parameters"].as_u64().unwrap(), stored);
}

#[test]
fn device_not_compiled_in_is_a_clear_error() {
    let dir = fixture("qwen3-tiny-tied-gqa-f32");
    let output = andes(&[
        "generate",
        "--model",
        path(&dir),
        "--prompt",
        "a",
        "--device",
        "tpu",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("device `tpu` is unknown"), "{stderr}");
    if !cfg!(feature = "wgpu") {
        let output = andes(&[
            "generate",
            "--model",
            path(&dir),
            "--prompt",
            "a",
            "--device",
            "wgpu",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("--features wgpu"),
            "{stderr}"
        );
    }
}

#[test]
fn missing_model_directory_names_the_file() {
    let output = andes(&["generate", "--model", "/nonexistent/model", "--prompt", "a"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/model/config.json"),
        "{stderr}"
    );
}
