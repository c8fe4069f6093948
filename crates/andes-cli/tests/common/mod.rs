//! Helpers shared by the end-to-end tests of the `andes` binary: running it, reading its
//! JSON output, the paths of the fixtures and of the repository, and the tiny training runs.
//! Each file of `tests/` is its own test binary that uses `mod common;`.

// Each test binary uses only a subset of these helpers; the rest would be dead code there.
#![allow(dead_code)]

use andes_model::Model;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FIXTURES: [&str; 4] = [
    "qwen3-tiny-tied-gqa-f32",
    "qwen3-tiny-untied-mha-f32",
    "qwen3-tiny-bf16-sharded",
    "qwen3-tiny-linear-rope-f32",
];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

pub fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn andes(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_andes"))
        .args(args)
        .output()
        .expect("the andes binary runs")
}

pub fn json_stdout(output: Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "andes failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Every line of a run's `metrics.jsonl`.
pub fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

pub fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    metrics(run_dir)
        .iter()
        .map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap()))
        .collect()
}

/// Panics with the command's stderr unless it succeeded.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs the tiny pretrain recipe from the repository root (recipes name repo-relative paths).
pub fn train_command(extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_andes"));
    command.current_dir(repo("")).arg("train").args(extra);
    command
}

/// Trains the tiny recipe `name` into `run` with `key=value` overrides; panics with the
/// run's stderr when it fails.
pub fn train_tiny(name: &str, run: &Path, overrides: &[&str]) {
    let config = path(&repo(&format!("configs/recipes/tiny/{name}.toml"))).to_string();
    let mut command = train_command(&["--config", &config, "--out", path(run), "--quiet"]);
    for assignment in overrides {
        command.args(["--set", assignment]);
    }
    let output = command.output().unwrap();
    assert_success(&output);
}

/// Fixture `model` quantized for the Dimensity 9500 at `bpw` bits per weight into `out`.
pub fn package_of(model: &str, bpw: &str, out: &Path) -> PathBuf {
    let calibration = repo("datasets/gcide/gcide-sample.txt");
    let output = andes(&[
        "quantize",
        "--model",
        path(&fixture(model)),
        "--calib",
        path(&calibration),
        "--cache",
        path(&out.with_extension("cache")),
        "--target",
        "dimensity9500",
        "--bpw",
        bpw,
        "--out",
        path(out),
    ]);
    assert_success(&output);
    out.to_owned()
}

/// `andes train` of the tiny lora recipe against `package` for `steps` steps (held-out
/// evaluation and a checkpoint every 4), with `extra` arguments; its output.
pub fn train_lora(
    run: &Path,
    package: &Path,
    steps: usize,
    extra: &[&str],
) -> std::process::Output {
    let config = path(&repo("configs/recipes/tiny/lora.toml")).to_string();
    let (package, steps) = (
        format!("model.package=\"{}\"", path(package)),
        format!("train.steps={steps}"),
    );
    train_command(&["--config", &config, "--out", path(run), "--quiet"])
        .args([
            "--set",
            &package,
            "--set",
            &steps,
            "--set",
            "train.eval_every=4",
        ])
        .args(["--set", "train.checkpoint_every=4"])
        .args(extra)
        .output()
        .unwrap()
}

/// The tiny model's package at 1.8 bpw under `dir/package`, two LoRA runs trained against it
/// for 4 steps (`dir/a`: "define"; `dir/b`: "other", at lr 1e-2), and their bundle under
/// `dir/bundle`: the package, the first run, the bundle, and `andes export`'s JSON.
pub fn two_adapter_bundle(dir: &Path) -> (PathBuf, PathBuf, PathBuf, serde_json::Value) {
    let package = package_of("qwen3-tiny-untied-mha-f32", "1.8", &dir.join("package"));
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert_success(&train_lora(&a, &package, 4, &[]));
    let other = ["--set", "lora.name=\"other\"", "--set", "optimizer.lr=1e-2"];
    assert_success(&train_lora(&b, &package, 4, &other));
    let bundle = dir.join("bundle");
    let out = json_stdout(andes(&[
        "export",
        "--package",
        path(&package),
        "--adapters",
        path(&a),
        path(&b),
        "--out",
        path(&bundle),
    ]));
    (package, a, bundle, out)
}

/// The logits of a fixed 16-token prompt through text model `model`, flattened.
pub fn text_logits(model: &Model, device: &Device) -> Vec<f32> {
    let Model::Text(model) = model else {
        panic!("a text model")
    };
    let ids: Vec<i64> = (0..16).map(|i| (i * 37 + 5) % 500).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 16]), device);
    let out = model.forward(tokens, &mut model.new_cache()).unwrap();
    out.into_data().try_to_vec::<f32>().unwrap()
}

/// `andes eval`'s mean NLL of the held-out conversations on `model` with `adapter`.
pub fn eval_nll(model: &Path, adapter: &str) -> f64 {
    let eval = json_stdout(andes(&[
        "eval",
        "--model",
        path(model),
        "--adapter",
        adapter,
        "--chat",
        path(&repo("datasets/sft/gcide-define-eval.jsonl")),
        "--window",
        "64",
        "--json",
    ]));
    eval["mean_nll"].as_f64().unwrap()
}
