//! A directory in the layout of OPPO's released AndesVL checkpoints (tiny random weights of
//! both tower families, `fixtures/andesvl-released`) goes through the commands a user runs on
//! a downloaded one: `info`, `eval`, `generate --image --chat`, the tiny `sft-vision` recipe (whose
//! checkpoint keeps the released layout and loads again), a LoRA adapter generating beside the
//! released base, and `quantize`.

mod common;
use common::{andes, assert_success, json_stdout, path, repo, train_tiny};

fn released(family: &str) -> std::path::PathBuf {
    repo(&format!("fixtures/andesvl-released/{family}"))
}

#[test]
fn info_and_generate_read_both_released_tower_families() {
    let image = repo("fixtures/vision/images/chelsea.png");
    for (family, tower) in [("aimv2", "aimv2"), ("siglip2", "siglip2_navit_rope_model")] {
        let model = released(family);
        let info = json_stdout(andes(&["info", "--model", path(&model), "--json"]));
        assert_eq!(info["vision"]["model_type"], tower, "{family}");
        let eval = json_stdout(andes(&[
            "eval",
            "--model",
            path(&model),
            "--text",
            path(&repo("datasets/gcide/gcide-eval.txt")),
            "--window",
            "64",
            "--stride",
            "64",
            "--json",
        ]));
        assert!(
            eval["mean_nll"].as_f64().unwrap().is_finite(),
            "{family}: {eval}"
        );
        for think in [false, true] {
            let mut args = vec![
                "generate",
                "--model",
                path(&model),
                "--image",
                path(&image),
                "--prompt",
                "<image>What is this?",
                "--chat",
                "--greedy",
                "--max-new-tokens",
                "3",
                "--json",
            ];
            if think {
                args.push("--think");
            }
            let out = json_stdout(andes(&args));
            // 140×112 canvas of 14-pixel patches (AIMv2) → 20 visual tokens; 160×128 of
            // 16-pixel patches (SigLIP2) → 20 as well; plus the released prompt around them.
            let prompt_tokens = out["prompt_tokens"].as_u64().unwrap();
            assert!(prompt_tokens > 20, "{family}: {out}");
            assert_eq!(
                out["token_ids"].as_array().unwrap().len(),
                3,
                "{family}: {out}"
            );
        }
    }
    let refused = andes(&[
        "generate",
        "--model",
        path(&repo("fixtures/andesvl-tiny")),
        "--prompt",
        "hi",
        "--chat",
        "--think",
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--think") && stderr.contains("released"),
        "{stderr}"
    );
}

#[test]
fn sft_vision_trains_a_released_checkpoint_and_keeps_its_layout() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = released("aimv2");
    train_tiny(
        "sft-vision",
        &run,
        &[
            &format!("model.checkpoint=\"{}\"", path(&model)),
            "train.steps=4",
            "train.batch_size=4",
            "train.eval_every=4",
            "train.checkpoint_every=4",
        ],
    );
    let history = common::losses(&run);
    assert_eq!(history.len(), 4);
    assert!(
        history.iter().all(|(_, loss)| loss.is_finite()),
        "{history:?}"
    );
    let checkpoint = run.join("checkpoints/step-000004");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("config.json")).unwrap()).unwrap();
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config, original,
        "the released config.json is written back as it came"
    );
    let weights = std::fs::read(checkpoint.join("model.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&weights)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    for name in [
        "vision_encoder.trunk.blocks.0.attn.qkv.weight",
        "vision_encoder.preprocessor.pos_embed",
        "mlp.0.weight",
        "language_model.model.layers.1.mlp.down_proj.weight",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    let info = json_stdout(andes(&["info", "--model", path(&checkpoint), "--json"]));
    assert_eq!(info["vision"]["model_type"], "aimv2");
}

#[test]
fn a_lora_adapter_trains_on_a_released_base_and_generates_from_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = released("siglip2");
    train_tiny(
        "lora",
        &run,
        &[
            &format!("model.checkpoint=\"{}\"", path(&model)),
            "train.steps=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
        ],
    );
    let adapter = run.join("checkpoints/step-000002");
    let image = repo("fixtures/vision/images/chelsea.png");
    let out = json_stdout(andes(&[
        "generate",
        "--model",
        path(&model),
        "--adapter",
        path(&adapter),
        "--image",
        path(&image),
        "--prompt",
        "<image>Define it.",
        "--chat",
        "--greedy",
        "--max-new-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(out["token_ids"].as_array().unwrap().len(), 2, "{out}");
}

#[test]
fn a_released_checkpoint_quantizes_its_language_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("package");
    let output = andes(&[
        "quantize",
        "--model",
        path(&released("siglip2")),
        "--calib",
        path(&repo("datasets/gcide/gcide-sample.txt")),
        "--target",
        "dimensity9500",
        "--bpw",
        "4",
        "--out",
        path(&out),
        "--json",
    ]);
    assert_success(&output);
    let verified = json_stdout(andes(&["verify", path(&out)]));
    assert!(
        verified["linears_verified"].as_u64().unwrap() > 0,
        "{verified}"
    );
}

#[test]
fn unsupported_released_configs_are_refused_by_key_before_reading_weights() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("temporal_patch_size", serde_json::json!(2), "video"),
        (
            "interpolate_pe_method",
            serde_json::json!("one_dim"),
            "two_dim",
        ),
        ("hidden_stride", serde_json::json!(3), "2×2"),
    ];
    for (key, value, words) in cases {
        let model = dir.path().join(key);
        std::fs::create_dir_all(&model).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(released("aimv2").join("config.json")).unwrap())
                .unwrap();
        config["vision_config"][key] = value;
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        // no weights at all: the config alone must be refused
        let output = andes(&["info", "--model", path(&model)]);
        assert!(!output.status.success(), "{key}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("vision_config.{key}")) && stderr.contains(words),
            "{key}: {stderr}"
        );
    }
    let model = dir.path().join("internvit");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        r#"{"model_type": "andesvl-internvit-qwen3", "text_config": {}, "vision_config": {}}"#,
    )
    .unwrap();
    let output = andes(&["info", "--model", path(&model)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("model_type"), "{stderr}");
}
