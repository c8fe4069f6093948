//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes info`: parameter counts of a Qwen3 checkpoint and of an AndesVL directory.

mod common;

use common::{andes, fixture, json_stdout, path, repo};
use std::path::Path;

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

/// `info` describes an AndesVL directory (the whole model's parameters, the tower), and the
/// text commands run its language model: `eval` on the tiny AndesVL equals `eval` on the tiny
/// Qwen3 it was assembled from.
#[test]
fn info_and_eval_read_an_andesvl_directory() {
    let andesvl = repo("fixtures/andesvl-tiny");
    let info = json_stdout(andes(&["info", "--model", path(&andesvl), "--json"]));
    assert_eq!(info["vision"]["model_type"], "siglip2_vision_model");
    let text_only = json_stdout(andes(&[
        "info",
        "--model",
        path(&fixture("qwen3-tiny-untied-mha-f32")),
        "--json",
    ]));
    assert!(info["parameters"].as_u64() > text_only["parameters"].as_u64());
    let eval = |model: &Path| {
        json_stdout(andes(&[
            "eval",
            "--model",
            path(model),
            "--text",
            path(&repo("datasets/gcide/gcide-eval.txt")),
            "--window",
            "64",
            "--stride",
            "64",
            "--json",
        ]))["mean_nll"]
            .clone()
    };
    assert_eq!(eval(&andesvl), eval(&fixture("qwen3-tiny-untied-mha-f32")));
}
