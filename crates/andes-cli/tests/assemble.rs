//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes assemble`: an AndesVL model from the tiny Qwen3 and SigLIP2 checkpoints, generating
//! from images, and the image errors of `generate`.

mod common;

use common::{andes, fixture, json_stdout, path, repo};
use std::path::Path;
use std::process::Output;

/// `andes assemble` of the tiny AndesVL preset from the tiny Qwen3 and SigLIP2 checkpoints.
fn assemble_tiny_andesvl(out: &Path, seed: &str) {
    let output = andes(&[
        "assemble",
        "--preset",
        path(&repo("configs/models/andesvl-tiny")),
        "--text",
        path(&fixture("qwen3-tiny-untied-mha-f32")),
        "--vision",
        path(&repo("fixtures/vision/siglip2-tiny")),
        "--seed",
        seed,
        "--out",
        path(out),
    ]);
    common::assert_success(&output);
}

fn generate_with_images(model: &Path, images: &[&str], prompt: &str) -> Output {
    let mut args = vec!["generate", "--model", path(model), "--prompt", prompt];
    args.extend(["--chat", "--greedy", "--max-new-tokens", "8", "--json"]);
    for image in images {
        args.extend(["--image", image]);
    }
    andes(&args)
}

#[test]
fn assembled_andesvl_generates_from_several_images() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("andesvl-tiny");
    assemble_tiny_andesvl(&model, "3");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(model.join(file).exists(), "{file}");
    }
    let images = repo("fixtures/vision/images");
    let (cat, rocket, webp) = (
        images.join("chelsea.png"),
        images.join("rocket.jpg"),
        images.join("chelsea.webp"),
    );
    let two = json_stdout(generate_with_images(
        &model,
        &[path(&cat), path(&rocket)],
        "Compare <image> and <image>.",
    ));
    assert_eq!(two["token_ids"].as_array().unwrap().len(), 8);
    let text_only = json_stdout(generate_with_images(&model, &[], "Compare them."));
    // 96×128 pixels after resizing → 6×8 patches → 12 visual tokens per image.
    let prompt_tokens = |v: &serde_json::Value| v["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens(&two) >= prompt_tokens(&text_only) + 24);
    let once = json_stdout(generate_with_images(&model, &[path(&cat)], "Describe."));
    assert_ne!(
        once["token_ids"], text_only["token_ids"],
        "the image conditions the output"
    );
    // The lossless WebP copy decodes to the same pixels, hence the same tokens.
    let from_webp = json_stdout(generate_with_images(&model, &[path(&webp)], "Describe."));
    assert_eq!(once["token_ids"], from_webp["token_ids"]);
}

#[test]
fn image_errors_name_the_file_or_the_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("andesvl-tiny");
    assemble_tiny_andesvl(&model, "0");
    let bad = dir.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 truncated").unwrap();
    let output = generate_with_images(&model, &[path(&bad)], "Describe.");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("broken.jpg"),
        "{stderr}"
    );

    let cat = repo("fixtures/vision/images/chelsea.png");
    let output = generate_with_images(&model, &[path(&cat)], "<image> and <image>");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 `<image>` placeholder(s) but 1 image(s)"),
        "{stderr}"
    );

    let text_model = fixture("qwen3-tiny-untied-mha-f32");
    let output = generate_with_images(&text_model, &[path(&cat)], "Describe.");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--image needs an AndesVL model directory"),
        "{stderr}"
    );
}
