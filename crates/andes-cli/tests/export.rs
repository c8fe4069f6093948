//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes export` (and `verify` of the bundle): QALFT adapters into a 1+N bundle, and the
//! refusal of adapters on different quantized bases.

mod common;

use common::{andes, json_stdout, losses, path, repo, train_command};
use std::path::Path;

/// Trains the tiny qalft recipe for `steps` into `run` with extra overrides; panics on failure.
fn train_qalft(run: &Path, steps: usize, extra: &[&str]) {
    let config = path(&repo("configs/recipes/tiny/qalft.toml")).to_string();
    let steps = format!("train.steps={steps}");
    let output = train_command(&["--config", &config, "--out", path(run), "--quiet"])
        .args(["--set", &steps, "--set", "train.checkpoint_every=100"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn qalft_loss_falls_and_the_adapter_exports_into_a_verified_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("qalft");
    train_qalft(&run, 30, &[]);
    let history = losses(&run);
    let mean = |l: &[(u64, f64)]| l.iter().map(|x| x.1).sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&history[..3]), mean(&history[history.len() - 3..]));
    assert!(last < first - 0.05, "loss did not fall: {first} → {last}");
    let quantization: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("quantization.json")).unwrap())
            .unwrap();
    let bpw = quantization["bpw_linears"].as_f64().unwrap();
    assert!((2.25..2.5).contains(&bpw), "int2-g64-asym costs {bpw} bpw");

    let bundle = dir.path().join("bundle");
    let out = json_stdout(andes(&[
        "export",
        "--adapters",
        path(&run),
        "--out",
        path(&bundle),
        "--dequantized-base",
    ]));
    assert_eq!(out["adapters"][0], "define");
    for file in [
        "manifest.json",
        "base/quantized_linears.safetensors",
        "base/bit_plan.json",
        "adapters/define/adapter_config.json",
        "adapters/define/adapter_model.safetensors",
        "base-dequantized/model.safetensors",
    ] {
        assert!(bundle.join(file).exists(), "{file}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["base"]["bpw_linears"].as_f64().unwrap(), bpw);
    let verified = json_stdout(andes(&["verify", path(&bundle)]));
    assert_eq!(verified["files_verified"], 7);
    // The bundle's float rendering of the quantized base plus its PEFT adapter scores the
    // held-out conversations exactly as the QALFT run itself did at its last step.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let run_eval_loss = last["eval_loss"].as_f64().unwrap();
    let bundle_eval = json_stdout(andes(&[
        "eval",
        "--model",
        path(&bundle.join("base-dequantized")),
        "--adapter",
        path(&bundle.join("adapters/define")),
        "--chat",
        path(&repo("datasets/sft/gcide-define-eval.jsonl")),
        "--window",
        "64",
        "--json",
    ]));
    let bundle_loss = bundle_eval["mean_nll"].as_f64().unwrap();
    assert!(
        (bundle_loss - run_eval_loss).abs() < 1e-9 * run_eval_loss,
        "bundle {bundle_loss} vs run {run_eval_loss}"
    );
    // One changed byte in an adapter is caught and named.
    let weights = bundle.join("adapters/define/adapter_model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let output = andes(&["verify", path(&bundle)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("adapter_model.safetensors") && stderr.contains("differs"),
        "{stderr}"
    );
}

#[test]
fn a_bundle_of_adapters_on_different_quantized_bases_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train_qalft(&a, 2, &["--set", "quant.init=\"rtn\""]);
    // Another data order trains other scales.
    let other = [
        "--set",
        "quant.init=\"rtn\"",
        "--set",
        "lora.name=\"other\"",
        "--set",
        "seed=1",
    ];
    train_qalft(&b, 2, &other);
    let output = andes(&[
        "export",
        "--adapters",
        path(&a),
        path(&b),
        "--out",
        path(&dir.path().join("bundle")),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another quantized base"), "{stderr}");
    // With the scales frozen both adapters share one base: a 1+N bundle.
    let (c, d) = (dir.path().join("c"), dir.path().join("d"));
    let frozen = [
        "--set",
        "quant.learn_scales=false",
        "--set",
        "quant.init=\"rtn\"",
    ];
    train_qalft(&c, 2, &frozen);
    train_qalft(
        &d,
        2,
        &[&frozen[..], &["--set", "lora.name=\"other\""]].concat(),
    );
    let out = json_stdout(andes(&[
        "export",
        "--adapters",
        path(&c),
        path(&d),
        "--out",
        path(&dir.path().join("bundle")),
    ]));
    assert_eq!(out["adapters"], serde_json::json!(["define", "other"]));
}
