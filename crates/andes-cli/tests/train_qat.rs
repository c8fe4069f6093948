//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! The `qat` stage: its loss falls as every weight trains through the 2-bit grid, its
//! checkpoint packs with `andes quantize --plan CKPT/bit_plan.json` to exactly the weights
//! training computed with, and a budget or another plan is refused for it; distillation from
//! the float model adds its KL term to the loss; an AndesVL's language model trains through
//! its grid on image conversations and packs the same way.

mod common;

use andes_model::Model;
use andes_model::quantize::load_grid;
use burn::tensor::{DType, Device, Tensor};
use common::{andes, assert_success, path, repo, train_command};
use std::path::Path;

/// Every quantized linear's weight as the forward pass multiplies by it, `[in, out]`, in model
/// order.
fn linear_weights(model: &Model, fake_quantized: bool) -> Vec<Vec<f32>> {
    let model = model.language_model();
    let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
    model
        .adapted_linears()
        .map(|(_, _, linear)| match fake_quantized {
            true => values(linear.effective_weight()),
            false => values(linear.base_layer.weight.val()),
        })
        .collect()
}

fn quantize(checkpoint: &Path, plan: &[&str], out: &Path) -> std::process::Output {
    let mut args = vec![
        "quantize",
        "--model",
        path(checkpoint),
        "--target",
        "dimensity9500",
    ];
    args.extend(plan);
    args.extend(["--out", path(out)]);
    andes(&args)
}

#[test]
fn a_qat_checkpoint_packs_to_exactly_the_weights_training_computed_with() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("qat");
    let config = path(&repo("configs/recipes/tiny/qat.toml")).to_string();
    let output = train_command(&["--config", &config, "--out", path(&run), "--quiet"])
        .output()
        .unwrap();
    assert_success(&output);
    let losses = common::losses(&run);
    let mean = |l: &[(u64, f64)]| l.iter().map(|x| x.1).sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&losses[..3]), mean(&losses[losses.len() - 3..]));
    assert!(
        last < first - 0.2,
        "QAT loss did not fall: {first} -> {last}"
    );

    let checkpoint = run.join("checkpoints/step-000040");
    let package = dir.path().join("package");
    let plan = checkpoint.join("bit_plan.json");
    assert_success(&quantize(&checkpoint, &["--plan", path(&plan)], &package));

    // The training model: the checkpoint's latent weights through its saved grid.
    let device = Device::flex();
    let (_, mut trained) = Model::load(&checkpoint, &device, DType::F32).unwrap();
    load_grid(trained.language_model_mut(), &checkpoint, false).unwrap();
    let (_, shipped, _) = andes_package::load_model(&package, &device, DType::F32).unwrap();
    let (computed, packed) = (
        linear_weights(&trained, true),
        linear_weights(&shipped, false),
    );
    assert_eq!(computed.len(), 14);
    assert!(
        computed == packed,
        "the package's weights differ from training's"
    );
    // The grid moved the weights off the latent ones: the comparison above is not vacuous.
    assert!(linear_weights(&trained, false) != packed);

    // A budget, or a plan with other formats, is refused naming what to pass.
    let refused = quantize(&checkpoint, &["--bpw", "1.8"], &dir.path().join("budget"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--plan"),
        "{stderr}"
    );
    let other = dir.path().join("other_plan.json");
    let text = std::fs::read_to_string(&plan).unwrap();
    let edited = text.replacen("int2-g64-asym", "int4-channel-sym", 1);
    std::fs::write(&other, edited).unwrap();
    let refused = quantize(
        &checkpoint,
        &["--plan", path(&other)],
        &dir.path().join("other"),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("trained it through int2-g64-asym"),
        "{stderr}"
    );
    assert!(!dir.path().join("other").exists(), "nothing is written");
}

#[test]
fn qat_distilled_from_the_float_model_adds_the_kl_term() {
    let dir = tempfile::tempdir().unwrap();
    let config = path(&repo("configs/recipes/tiny/qat.toml")).to_string();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let output = train_command(&["--config", &config, "--out", path(&out), "--quiet"])
            .args(["--set", "train.steps=2", "--set", "train.eval_every=2"])
            .args(extra)
            .output()
            .unwrap();
        assert_success(&output);
        common::losses(&out)
    };
    let plain = run("plain", &[]);
    let distilled = run("distilled", &["--set", "distill.weight=0.5"]);
    // Step 1 starts from the same GPTQ base: 0.5·NLL + 0.5·KL(float ‖ 2-bit), with KL > 0.
    let (nll, mixed) = (plain[0].1, distilled[0].1);
    assert!(
        mixed.is_finite() && mixed < nll && mixed > 0.5 * nll,
        "{nll} vs {mixed}"
    );
}

#[test]
fn an_andesvl_qat_checkpoint_packs_its_language_model_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("qat");
    let config = path(&repo("configs/recipes/tiny/qat.toml")).to_string();
    let digits =
        |split: &str| format!("data.{split}=\"datasets/images/digits/chat-{split}.jsonl\"");
    let output = train_command(&["--config", &config, "--out", path(&run), "--quiet"])
        .args([
            "--set",
            "model.checkpoint=\"fixtures/andesvl-tiny\"",
            "--set",
            "data.format=\"chat\"",
        ])
        .args([
            "--set",
            &digits("train"),
            "--set",
            &digits("eval"),
            "--set",
            "data.seq_len=48",
        ])
        .args([
            "--set",
            "quant.init=\"rtn\"",
            "--set",
            "train.steps=4",
            "--set",
            "train.eval_every=4",
        ])
        .output()
        .unwrap();
    assert_success(&output);
    let checkpoint = run.join("checkpoints/step-000004");
    let package = dir.path().join("package");
    let plan = checkpoint.join("bit_plan.json");
    assert_success(&quantize(&checkpoint, &["--plan", path(&plan)], &package));

    let device = Device::flex();
    let (_, mut trained) = Model::load(&checkpoint, &device, DType::F32).unwrap();
    assert!(matches!(trained, Model::VisionLanguage(_)));
    load_grid(trained.language_model_mut(), &checkpoint, false).unwrap();
    let (_, shipped, _) = andes_package::load_model(&package, &device, DType::F32).unwrap();
    assert!(
        matches!(shipped, Model::VisionLanguage(_)),
        "the package keeps the vision side"
    );
    assert!(linear_weights(&trained, true) == linear_weights(&shipped, false));
}
