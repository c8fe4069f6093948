//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes train` of a LoRA adapter against a package (`[model] package`): the base it trains
//! is the package's, bit for bit; the adapter scores with `andes eval --model PKG --adapter`
//! as training scored it; and the refusals (a package of another model, a stage that is not
//! `lora`); an AndesVL adapter trained against an AndesVL package; an adapter that starts at
//! the package's quantization residual; an adapter distilled from the float model.

mod common;

use andes_model::Model;
use andes_train::recipe::Recipe;
use burn::tensor::{DType, Device};
use common::{eval_nll, fixture, package_of, path, repo, text_logits, train_command, train_lora};

#[test]
fn a_lora_run_against_a_package_trains_the_packages_base() {
    let dir = tempfile::tempdir().unwrap();
    let package = package_of(
        "qwen3-tiny-untied-mha-f32",
        "1.8",
        &dir.path().join("package"),
    );

    // With no adapter, the base an adapter run trains is the package as `andes eval --model
    // PKG` runs it, bit for bit, and not the float checkpoint.
    let device = Device::flex();
    // Recipes name repository-relative paths; this test runs in the crate's directory.
    let model = fixture("qwen3-tiny-untied-mha-f32");
    let overrides = [
        format!("model.package=\"{}\"", path(&package)),
        format!("model.checkpoint=\"{}\"", path(&model)),
    ];
    let recipe = Recipe::load(&repo("configs/recipes/tiny/lora.toml"), &overrides).unwrap();
    let (_, base) = andes_train::adapters::load_base(&recipe, &device, DType::F32).unwrap();
    let (_, shipped, _) = andes_package::load_model(&package, &device, DType::F32).unwrap();
    let (_, float) = Model::load(&model, &device, DType::F32).unwrap();
    let trained_on = text_logits(&base, &device);
    assert_eq!(trained_on, text_logits(&shipped, &device));
    let gap = trained_on
        .iter()
        .zip(text_logits(&float, &device))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(gap > 1e-2, "1.8 bpw should move the logits, moved {gap}");

    // The adapter scores the held-out conversations on the package exactly as training did.
    let run = dir.path().join("run");
    let output = train_lora(&run, &package, 8, &[]);
    common::assert_success(&output);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let run_eval_loss = last["eval_loss"].as_f64().unwrap();
    let adapter = run.join("checkpoints/step-000008");
    let package_loss = eval_nll(&package, path(&adapter));
    assert!(
        (package_loss - run_eval_loss).abs() < 1e-9 * run_eval_loss,
        "andes eval on the package {package_loss} vs the run {run_eval_loss}"
    );
}

/// `[distill]` against a package: at step 1 the zero-update adapter leaves the package's base
/// as it is, so the loss is `0.5·NLL + 0.5·KL(float ‖ package)` with the KL positive; with the
/// float-trained adapter on the teacher, the KL is taken against the float pair instead; and
/// an adapter on the float base distils from that pair too.
#[test]
fn an_adapter_on_a_package_distilled_from_the_float_model_adds_the_kl_term() {
    let dir = tempfile::tempdir().unwrap();
    let package = package_of(
        "qwen3-tiny-untied-mha-f32",
        "1.8",
        &dir.path().join("package"),
    );
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        common::assert_success(&train_lora(&out, &package, 4, extra));
        common::losses(&out)[0].1
    };
    let nll = run("plain", &[]);
    let mixed = run("distilled", &["--set", "distill.weight=0.5"]);
    assert!(
        mixed.is_finite() && mixed < nll && mixed > 0.5 * nll,
        "{nll} vs {mixed}"
    );

    let float = dir.path().join("float");
    let config = path(&repo("configs/recipes/tiny/lora.toml")).to_string();
    let output = train_command(&["--config", &config, "--out", path(&float), "--quiet"])
        .args([
            "--set",
            "train.steps=4",
            "--set",
            "train.checkpoint_every=4",
        ])
        .output()
        .unwrap();
    common::assert_success(&output);
    let teacher_adapter = format!(
        "distill.teacher_adapter=\"{}\"",
        path(&float.join("checkpoints/step-000004"))
    );
    let taught = run(
        "taught",
        &["--set", "distill.weight=0.5", "--set", &teacher_adapter],
    );
    assert!(
        taught.is_finite() && taught > 0.5 * nll && (taught - mixed).abs() > 1e-6,
        "{taught} against {mixed} without the teacher's adapter"
    );

    // The like-for-like reference: the same distillation for an adapter on the float base,
    // whose step 1 is 0.5·NLL + 0.5·KL(float + adapter ‖ float).
    let float_nll = common::losses(&float)[0].1;
    let reference = dir.path().join("reference");
    let output = train_command(&["--config", &config, "--out", path(&reference), "--quiet"])
        .args(["--set", "train.steps=1", "--set", "distill.weight=0.5"])
        .args(["--set", &teacher_adapter])
        .output()
        .unwrap();
    common::assert_success(&output);
    let mixed = common::losses(&reference)[0].1;
    assert!(
        mixed < float_nll && mixed > 0.5 * float_nll,
        "{float_nll} vs {mixed}"
    );
}

/// `[lora] init = "quantization-residual"`: after one step at a negligible learning rate the
/// package with its adapter computes nearer to the float model it was quantized from than the
/// package alone, and so does a `qalft` base with its adapter; a float base refuses the key.
#[test]
fn an_adapter_started_at_the_quantization_residual_begins_nearer_the_float_model() {
    let dir = tempfile::tempdir().unwrap();
    let package = package_of(
        "qwen3-tiny-untied-mha-f32",
        "1.8",
        &dir.path().join("package"),
    );
    let run = dir.path().join("run");
    let residual = ["--set", "lora.init=\"quantization-residual\""];
    let output = train_lora(
        &run,
        &package,
        1,
        &[&residual[..], &["--set", "optimizer.lr=1e-12"]].concat(),
    );
    common::assert_success(&output);
    let device = Device::flex();
    let started = andes_train::adapters::load_adapter_run(&run, &device).unwrap();
    let started = Model::from_parts(started.model, None);
    let (_, shipped, _) = andes_package::load_model(&package, &device, DType::F32).unwrap();
    let (_, float) =
        Model::load(&fixture("qwen3-tiny-untied-mha-f32"), &device, DType::F32).unwrap();
    let float = text_logits(&float, &device);
    let distance = |model: &Model| {
        let logits = text_logits(model, &device);
        logits
            .iter()
            .zip(&float)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    let (repaired, base) = (distance(&started), distance(&shipped));
    assert!(
        repaired < 0.9 * base,
        "package + adapter {repaired}, package {base}"
    );

    // `qalft`: the base it quantizes itself (int2, learned scales), measured against the
    // recipe's own float checkpoint.
    let run = dir.path().join("qalft");
    let overrides = [
        "lora.init=\"quantization-residual\"",
        "optimizer.lr=1e-12",
        "train.steps=1",
    ];
    common::train_tiny("qalft", &run, &overrides);
    let mut started = andes_train::adapters::load_adapter_run(&run, &device)
        .unwrap()
        .model;
    let repaired = distance(&Model::from_parts(started.clone(), None));
    started.set_active_adapter(None).unwrap();
    let base = distance(&Model::from_parts(started, None));
    assert!(
        repaired < 0.9 * base,
        "qalft base + adapter {repaired}, base {base}"
    );

    let config = path(&repo("configs/recipes/tiny/lora.toml")).to_string();
    let output = train_command(&[
        "--config",
        &config,
        "--out",
        path(&dir.path().join("float")),
    ])
    .args(residual)
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("lora.init") && stderr.contains("base is float"),
        "{stderr}"
    );
}

#[test]
fn a_package_of_another_model_or_for_another_stage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = package_of("qwen3-tiny-tied-gqa-f32", "1.8", &dir.path().join("other"));
    let output = train_lora(&dir.path().join("run"), &other, 2, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("manifest.json") && stderr.contains("config.json has sha256"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("run/checkpoints").exists(),
        "nothing is written"
    );

    let config = path(&repo("configs/recipes/tiny/pretrain.toml")).to_string();
    let package = format!("model.package=\"{}\"", path(&other));
    let output = train_command(&["--config", &config, "--out", path(&dir.path().join("pre"))])
        .args(["--set", &package])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("model.package") && stderr.contains("stage pretrain"),
        "{stderr}"
    );
}

#[test]
fn an_andesvl_adapter_trained_against_its_package_scores_as_training_did() {
    let dir = tempfile::tempdir().unwrap();
    let package = package_of("andesvl-tiny", "1.8", &dir.path().join("package"));
    let run = dir.path().join("run");
    let digits = |split: &str| {
        path(&repo(&format!("datasets/images/digits/chat-{split}.jsonl"))).to_string()
    };
    let overrides = [
        format!("model.checkpoint=\"{}\"", path(&fixture("andesvl-tiny"))),
        format!("data.train=\"{}\"", digits("train")),
        format!("data.eval=\"{}\"", digits("eval")),
        "data.seq_len=48".to_string(),
    ];
    let sets: Vec<&str> = overrides
        .iter()
        .flat_map(|o| ["--set", o.as_str()])
        .collect();
    common::assert_success(&train_lora(&run, &package, 8, &sets));
    let metrics = common::metrics(&run);
    let run_eval_loss = metrics.last().unwrap()["eval_loss"].as_f64().unwrap();

    // The package with the run's adapter, scored by the run's own held-out objective: the
    // same loss, so the vision side stayed the package's and the adapter is all that trained.
    let checkpoint = run.join("checkpoints/step-000008");
    let recipe = Recipe::load(&checkpoint.join("recipe.toml"), &[]).unwrap();
    let device = Device::flex();
    let (config, mut model, _) = andes_package::load_model(&package, &device, DType::F32).unwrap();
    let language_model = model.language_model_mut();
    andes_model::lora::peft::import_peft_adapter(language_model, &checkpoint, "digits").unwrap();
    language_model.set_active_adapter(Some("digits")).unwrap();
    let tokenizer = andes_data::TextTokenizer::from_model_dir(&checkpoint).unwrap();
    let objective =
        andes_train::objective::for_recipe(&recipe, &tokenizer, &config, &device).unwrap();
    let loss = objective.evaluate(&model).unwrap().unwrap().loss.unwrap();
    assert!(
        (loss - run_eval_loss).abs() < 1e-9 * run_eval_loss,
        "package + adapter {loss} vs the run {run_eval_loss}"
    );
}
