//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes generate`: greedy ids against the transformers references in
//! `fixtures/*/reference.json`, seeded sampling, and the errors of an unknown device or a
//! missing model directory.

mod common;

use common::{FIXTURES, andes, fixture, json_stdout, path, reference};

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
