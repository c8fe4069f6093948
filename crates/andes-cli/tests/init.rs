//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes init`: a seeded random checkpoint that loads.

mod common;

use common::{andes, fixture, json_stdout, path};
use std::path::Path;

#[test]
fn init_writes_a_seeded_random_checkpoint_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let config = fixture("qwen3-tiny-tied-gqa-f32").join("config.json");
    let init = |out: &Path, seed: &str| {
        let output = andes(&[
            "init",
            "--config",
            path(&config),
            "--tokenizer",
            path(&fixture("tokenizer")),
            "--seed",
            seed,
            "--out",
            path(out),
        ]);
        common::assert_success(&output);
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    assert_eq!(init(&a, "1"), init(&b, "1"), "same seed, same weights");
    assert_ne!(init(&a, "1"), init(&c, "2"));
    let info = json_stdout(andes(&["info", "--model", path(&a), "--json"]));
    let reference = json_stdout(andes(&[
        "info",
        "--model",
        path(&fixture("qwen3-tiny-tied-gqa-f32")),
        "--json",
    ]));
    assert_eq!(info["parameters"].as_u64(), Some(131_520));
    assert_eq!(info["parameters"], reference["parameters"]);
}
