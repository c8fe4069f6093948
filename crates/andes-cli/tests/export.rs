//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes export` (and `verify` of the bundle): QALFT adapters into a 1+N bundle, and the
//! refusal of adapters on different quantized bases; a package and the adapters trained
//! against it into one bundle (`--package`), run by name and switched, and the refusal of
//! adapters trained against another base.

mod common;

use andes_package::{Bundle, package_sha256};
use burn::tensor::{DType, Device};
use common::{
    andes, eval_nll, json_stdout, losses, package_of, path, repo, text_logits, train_command,
    train_lora,
};
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
    common::assert_success(&output);
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
    let adapter = bundle.join("adapters/define");
    let bundle_loss = eval_nll(&bundle.join("base-dequantized"), path(&adapter));
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

#[test]
fn a_package_bundle_runs_its_adapters_by_name_and_switches_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let (package, a, bundle, out) = common::two_adapter_bundle(dir.path());
    assert_eq!(out["adapters"], serde_json::json!(["define", "other"]));
    assert_eq!(out["package_sha256"], package_sha256(&package).unwrap());
    let verified = json_stdout(andes(&["verify", path(&bundle)]));
    assert_eq!(verified["package_sha256"], out["package_sha256"]);
    assert_eq!(verified["adapter_files_verified"], 4);

    // The bundle's adapter by name scores as the package plus the run's own adapter does.
    let run_adapter = a.join("checkpoints/step-000004");
    assert_eq!(
        eval_nll(&bundle, "define"),
        eval_nll(&package, path(&run_adapter))
    );

    // One base, loaded once; switching A -> B -> A gives A's exact outputs back.
    let device = Device::flex();
    let mut loaded = Bundle::load(&bundle, &device, DType::F32).unwrap();
    loaded.activate(Some("define")).unwrap();
    let first = text_logits(loaded.model(), &device);
    loaded.activate(Some("other")).unwrap();
    assert_ne!(first, text_logits(loaded.model(), &device));
    loaded.activate(Some("define")).unwrap();
    assert_eq!(first, text_logits(loaded.model(), &device));
    let unknown = loaded.activate(Some("missing")).unwrap_err().to_string();
    assert!(
        unknown.contains("no adapter `missing`") && unknown.contains("define, other"),
        "{unknown}"
    );

    // A changed byte of the package inside the bundle is caught and named.
    let plan = bundle.join("package/bit_plan.json");
    let mut bytes = std::fs::read(&plan).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&plan, bytes).unwrap();
    let output = andes(&["verify", path(&bundle)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bit_plan.json") && stderr.contains("differs"),
        "{stderr}"
    );
}

#[test]
fn a_package_bundle_refuses_adapters_trained_against_another_base() {
    let dir = tempfile::tempdir().unwrap();
    let model = "qwen3-tiny-untied-mha-f32";
    let package = package_of(model, "1.8", &dir.path().join("package"));
    let other = package_of(model, "3", &dir.path().join("other"));
    let run = dir.path().join("run");
    common::assert_success(&train_lora(&run, &other, 2, &[]));
    let bundle = dir.path().join("bundle");
    let export = |run: &Path| {
        andes(&[
            "export",
            "--package",
            path(&package),
            "--adapters",
            path(run),
            "--out",
            path(&bundle),
        ])
    };
    let output = export(&run);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for hash in [
        package_sha256(&package).unwrap(),
        package_sha256(&other).unwrap(),
    ] {
        assert!(stderr.contains(&hash), "{stderr}");
    }
    assert!(!bundle.exists(), "nothing is written");

    // An adapter trained on the float model names that, too.
    let float = dir.path().join("float");
    common::train_tiny("lora", &float, &["train.steps=2"]);
    let output = export(&float);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("trained on a float model"), "{stderr}");
    assert!(!bundle.exists(), "nothing is written");
}
