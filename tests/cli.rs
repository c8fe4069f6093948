//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints, checked against the
//! transformers references in `fixtures/*/reference.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FIXTURES: [&str; 4] = [
    "qwen3-tiny-tied-gqa-f32",
    "qwen3-tiny-untied-mha-f32",
    "qwen3-tiny-bf16-sharded",
    "qwen3-tiny-linear-rope-f32",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn andes(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_andes"))
        .args(args)
        .output()
        .expect("the andes binary runs")
}

fn json_stdout(output: Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "andes failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

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
fn eval_perplexity_matches_transformers_within_1e_4() {
    for name in FIXTURES {
        let reference = reference(name);
        let dir = fixture(name);
        let out = json_stdout(andes(&[
            "eval",
            "--model",
            path(&dir),
            "--text",
            path(&dir.join("eval.txt")),
            "--window",
            "128",
            "--stride",
            "64",
            "--json",
        ]));
        assert_eq!(out["tokens"], reference["eval_num_tokens"], "{name}");
        assert_eq!(out["scored_tokens"], reference["eval_tokens"], "{name}");
        let ours = out["perplexity"].as_f64().unwrap();
        let theirs = reference["eval_perplexity"].as_f64().unwrap();
        assert!(
            ((ours - theirs) / theirs).abs() <= 1e-4,
            "{name}: perplexity {ours} vs transformers {theirs}"
        );
    }
}

/// `--documents` scores the stream `andes train` packs from a text file, each line a document
/// ended by <|endoftext|> (blank lines skipped): the same as `--text` of the lines joined by
/// that token, and not the file as it stands, whose newlines are tokens of their own.
#[test]
fn eval_documents_scores_the_lines_as_training_documents() {
    let model = fixture("qwen3-tiny-untied-mha-f32");
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        "Abandon: To give up wholly.",
        "Abase: To lower or depress.",
        "Abate: To lessen.",
    ];
    let documents = dir.path().join("documents.txt");
    std::fs::write(
        &documents,
        format!("{}\n\n{}\n{}\n", lines[0], lines[1], lines[2]),
    )
    .unwrap();
    let joined = dir.path().join("joined.txt");
    std::fs::write(&joined, lines.map(|l| format!("{l}<|endoftext|>")).concat()).unwrap();
    let eval = |flag: &str, file: &Path| {
        json_stdout(andes(&[
            "eval",
            "--model",
            path(&model),
            flag,
            path(file),
            "--window",
            "16",
            "--json",
        ]))
    };
    let (by_documents, by_joined) = (eval("--documents", &documents), eval("--text", &joined));
    assert_eq!(by_documents["tokens"], by_joined["tokens"]);
    assert_eq!(by_documents["mean_nll"], by_joined["mean_nll"]);
    let as_it_stands = eval("--text", &documents);
    assert_ne!(as_it_stands["mean_nll"], by_documents["mean_nll"]);
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
fn converted_bf16_checkpoint_reloads_and_stays_close() {
    let dir = fixture("qwen3-tiny-untied-mha-f32");
    let out = tempfile::tempdir().unwrap();
    let converted = andes(&[
        "convert",
        "--model",
        path(&dir),
        "--out",
        path(out.path()),
        "--save-dtype",
        "bf16",
    ]);
    assert!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    let eval = |model: &Path| {
        json_stdout(andes(&[
            "eval",
            "--model",
            path(model),
            "--text",
            path(&dir.join("eval.txt")),
            "--window",
            "128",
            "--stride",
            "64",
            "--json",
        ]))["mean_nll"]
            .as_f64()
            .unwrap()
    };
    let (float, rounded) = (eval(&dir), eval(out.path()));
    // bf16 keeps 8 bits of mantissa: the NLL moves, but by far less than a percent.
    assert!(
        float != rounded && ((float - rounded) / float).abs() < 1e-2,
        "{float} vs {rounded}"
    );
}

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

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Every line of a run's `metrics.jsonl`.
fn metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    metrics(run_dir)
        .iter()
        .map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap()))
        .collect()
}

/// Runs the tiny pretrain recipe from the repository root (recipes name repo-relative paths).
fn train_command(extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_andes"));
    command.current_dir(repo("")).arg("train").args(extra);
    command
}

const SHORT_RUN: [&str; 6] = [
    "--set",
    "train.steps=24",
    "--set",
    "train.checkpoint_every=4",
    "--set",
    "train.eval_every=12",
];

/// Trains the tiny recipe `name` into `run` with `key=value` overrides; panics with the
/// run's stderr when it fails.
fn train_tiny(name: &str, run: &Path, overrides: &[&str]) {
    let config = path(&repo(&format!("configs/recipes/tiny/{name}.toml"))).to_string();
    let mut command = train_command(&["--config", &config, "--out", path(run), "--quiet"]);
    for assignment in overrides {
        command.args(["--set", assignment]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts `run` (a SHORT_RUN training into `run_dir`) and kills it with SIGKILL as soon as its
/// first checkpoint exists, asserting that steps were left to resume.
fn kill_after_first_checkpoint(run: &mut Command, run_dir: &Path) {
    let mut child = run.spawn().unwrap();
    let latest = run_dir.join("checkpoints/latest");
    while !latest.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        losses(run_dir).len() < 24,
        "the kill came after the run ended; nothing was resumed"
    );
}

/// Runs `recipe` straight and, in a second directory, kills it with SIGKILL after its first
/// checkpoint and resumes it: the losses must be identical.
fn assert_sigkill_resume_is_exact(recipe: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (straight, interrupted) = (dir.path().join("straight"), dir.path().join("interrupted"));
    let config = path(&repo(recipe)).to_string();
    let status = train_command(&["--config", &config, "--out", path(&straight), "--quiet"])
        .args(SHORT_RUN)
        .status()
        .unwrap();
    assert!(status.success());

    let mut run = train_command(&["--config", &config, "--out", path(&interrupted), "--quiet"]);
    kill_after_first_checkpoint(run.args(SHORT_RUN), &interrupted);

    let status = train_command(&["--resume", path(&interrupted), "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(losses(&interrupted), losses(&straight));
}

#[test]
fn train_killed_with_sigkill_and_resumed_reproduces_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/pretrain.toml");
}

/// QALFT resumes exactly too: the GPTQ base is rebuilt, the adapter, trained scales and
/// optimizer state come back from the checkpoint.
#[test]
fn qalft_killed_and_resumed_reproduces_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/qalft.toml");
}

/// MPO (reward shift in the trainer state) and GRPO (completions sampled per step) resume
/// exactly: the same pairs, the same δ, the same sampled completions.
#[test]
fn mpo_and_grpo_killed_and_resumed_reproduce_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/mpo.toml");
    assert_sigkill_resume_is_exact("configs/recipes/tiny/grpo.toml");
}

/// Data-parallel training over two CPU replicas deals each step's two micro-batches one to a
/// replica and sums their gradients: the losses are those of one device on the same step's
/// examples. Killed after its first checkpoint, the two-replica run resumes on one device
/// and still ends on the single-device losses; one checkpoint per step is written either way.
#[test]
fn data_parallel_training_matches_one_device_and_resumes_on_another_count() {
    let dir = tempfile::tempdir().unwrap();
    let (single, parallel, switched) = (
        dir.path().join("single"),
        dir.path().join("parallel"),
        dir.path().join("switched"),
    );
    let config = path(&repo("configs/recipes/tiny/pretrain.toml")).to_string();
    let run = |out: &Path, devices: &str| {
        let mut command = train_command(&["--config", &config, "--out", path(out), "--quiet"]);
        command.args(SHORT_RUN).args(["--devices", devices]);
        command
    };
    assert!(run(&single, "1").status().unwrap().success());
    assert!(run(&parallel, "2").status().unwrap().success());
    let close = |a: &[(u64, f64)], b: &[(u64, f64)]| {
        assert_eq!(a.len(), b.len());
        for ((step, x), (_, y)) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * x.abs(), "step {step}: {x} vs {y}");
        }
    };
    let single_losses = losses(&single);
    close(&losses(&parallel), &single_losses);
    // The run records the devices it was given, and its checkpoints are written once.
    let recipe = std::fs::read_to_string(parallel.join("recipe.toml")).unwrap();
    assert!(recipe.contains(r#"device = "cpu,cpu""#), "{recipe}");
    let checkpoints = std::fs::read_dir(parallel.join("checkpoints"))
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name() != "latest")
        .count();
    assert_eq!(checkpoints, 6, "one checkpoint per 4 of 24 steps");

    kill_after_first_checkpoint(&mut run(&switched, "2"), &switched);
    let status = train_command(&["--resume", path(&switched), "--devices", "1", "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    close(&losses(&switched), &single_losses);

    let refused = train_command(&["--config", &config, "--out", path(&dir.path().join("x"))])
        .args(["--devices", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("train.grad_accum") && stderr.contains("at least 3"),
        "{stderr}"
    );
}

/// Every stage that shards draws the whole step on each replica: GRPO numbers a completion's
/// seed by its slot in the step, whichever replica samples it, and image-text SFT divides by
/// the step's token count. On two CPU replicas both give the losses (and GRPO the rewards) of
/// one device on the same step.
#[test]
fn grpo_and_image_sft_train_data_parallel_like_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 2] = [
        ("grpo", &["grpo.group_size=4", "train.batch_size=2"]),
        ("sft-vision", &["train.batch_size=4"]),
    ];
    for (recipe, overrides) in cases {
        let config = path(&repo(&format!("configs/recipes/tiny/{recipe}.toml"))).to_string();
        let run = |devices: &str| {
            let out = dir.path().join(format!("{recipe}-{devices}"));
            let mut command = train_command(&["--config", &config, "--out", path(&out), "--quiet"]);
            for assignment in overrides
                .iter()
                .chain(&["train.steps=3", "train.grad_accum=2"])
            {
                command.args(["--set", assignment]);
            }
            let output = command.args(["--devices", devices]).output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            metrics(&out)
        };
        let (single, parallel) = (run("1"), run("2"));
        assert_eq!(single.len(), 3);
        for (one, two) in single.iter().zip(&parallel) {
            for key in ["loss", "reward"] {
                let (Some(a), Some(b)) = (one[key].as_f64(), two[key].as_f64()) else {
                    assert_eq!(one[key], two[key], "{recipe} {key}");
                    continue;
                };
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1e-3),
                    "{recipe} {key}: {a} vs {b}"
                );
            }
            assert_eq!(one["tokens"], two["tokens"], "{recipe}: tokens of the step");
        }
    }
}

/// At the first step the policy is its reference, so every implicit reward is 0 and DPO's
/// loss is −log σ(0) = ln 2 exactly; MPO's default adds 2·ln 2 · 0.2 and the chosen NLL.
#[test]
fn dpo_starts_at_ln_2_against_its_own_reference() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(
        "mpo",
        &run,
        &[
            "train.steps=1",
            "mpo.preference_weight=1.0",
            "mpo.quality_weight=0.0",
            "mpo.sft_weight=0.0",
        ],
    );
    let (_, loss) = losses(&run)[0];
    assert!(
        (loss - std::f64::consts::LN_2).abs() < 1e-6,
        "DPO loss {loss}"
    );
}

/// The alignment recipe trains the vision tower and projector of the tiny AndesVL on
/// image-caption pairs with the language model frozen: every `language_model.*` tensor of the
/// checkpoint is bit-identical to the starting one, the vision side moved, and the
/// checkpoint generates from an image on its own.
#[test]
fn align_trains_the_vision_side_only_and_the_checkpoint_generates_from_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny("align", &run, &["train.steps=6", "train.eval_every=3"]);
    let history = losses(&run);
    assert!(
        history[5].1 < history[0].1,
        "loss did not fall: {history:?}"
    );
    let checkpoint = run.join("checkpoints/step-000006");
    let before = std::fs::read(repo("fixtures/andesvl-tiny/model.safetensors")).unwrap();
    let after = std::fs::read(checkpoint.join("model.safetensors")).unwrap();
    let (before, after) = (
        safetensors::SafeTensors::deserialize(&before).unwrap(),
        safetensors::SafeTensors::deserialize(&after).unwrap(),
    );
    let mut moved = Vec::new();
    for (name, tensor) in before.tensors() {
        let trained = after.tensor(&name).unwrap();
        if name.starts_with("language_model.") {
            assert_eq!(tensor.data(), trained.data(), "{name} changed");
        } else if tensor.data() != trained.data() {
            moved.push(name);
        }
    }
    assert!(
        moved.iter().any(|n| n.starts_with("vision_encoder.")),
        "{moved:?}"
    );
    assert!(moved.iter().any(|n| n.starts_with("mlp.")), "{moved:?}");
    let image = repo("datasets/images/digits/png/0007.png");
    let out = json_stdout(andes(&[
        "generate",
        "--model",
        path(&checkpoint),
        "--image",
        path(&image),
        "--prompt",
        "",
        "--max-new-tokens",
        "4",
        "--greedy",
        "--json",
    ]));
    assert!(!out["token_ids"].as_array().unwrap().is_empty());
}

/// Conversations that show images need a vision-language checkpoint: on the text model the
/// run stops at the first such record, naming the file and line.
#[test]
fn image_conversations_on_a_text_model_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = path(&repo("configs/recipes/tiny/sft.toml")).to_string();
    let data = "data.train=datasets/images/digits/chat-train.jsonl";
    let output = train_command(&["--config", &config, "--out", path(dir.path()), "--quiet"])
        .args(["--set", data, "--set", "train.steps=1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("chat-train.jsonl:1:") && stderr.contains("vision-language"),
        "{stderr}"
    );
}

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

#[test]
fn train_loss_falls_and_the_checkpoint_generates() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny("sft", &run, &["train.steps=30", "train.eval_every=15"]);
    let history = losses(&run);
    let first: f64 = history[..3].iter().map(|l| l.1).sum::<f64>() / 3.0;
    let last: f64 = history[history.len() - 3..]
        .iter()
        .map(|l| l.1)
        .sum::<f64>()
        / 3.0;
    assert!(last < first * 0.9, "loss did not fall: {first} → {last}");
    assert!(run.join("loss.svg").exists());
    let checkpoint = run.join("checkpoints/step-000030");
    let out = json_stdout(andes(&[
        "generate",
        "--model",
        path(&checkpoint),
        "--prompt",
        "Define Water.",
        "--chat",
        "--max-new-tokens",
        "8",
        "--greedy",
        "--json",
    ]));
    assert!(!out["token_ids"].as_array().unwrap().is_empty());
}

#[test]
fn recipe_with_unknown_key_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(repo("configs/recipes/tiny/pretrain.toml")).unwrap();
    std::fs::write(
        &recipe,
        text.replace("grad_clip = 1.0", "grad_clip = 1.0\nmomentum = 0.9"),
    )
    .unwrap();
    let output = train_command(&[
        "--config",
        path(&recipe),
        "--out",
        path(&dir.path().join("r")),
    ])
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("momentum"),
        "{stderr}"
    );
}

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
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
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

fn quantize_tiny(out: &Path, extra: &[&str]) -> Output {
    let cache = out.with_extension("cache");
    let (model, calib) = (
        fixture("qwen3-tiny-untied-mha-f32"),
        repo("datasets/gcide/gcide-sample.txt"),
    );
    let mut args = vec![
        "quantize",
        "--model",
        path(&model),
        "--calib",
        path(&calib),
        "--cache",
        path(&cache),
        "--out",
        path(out),
        "--json",
    ];
    args.extend(extra);
    andes(&args)
}

#[test]
fn quantize_for_dimensity9500_at_1_8_bpw_verifies_and_rejects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("pkg");
    let summary = json_stdout(quantize_tiny(
        &package,
        &["--target", "dimensity9500", "--bpw", "1.8"],
    ));
    let bpw = summary["bpw"].as_f64().unwrap();
    assert!(bpw <= 1.8 && bpw > 1.5, "bpw over the linears {bpw}");
    assert!(
        summary["bpw_package"].as_f64().unwrap() > bpw,
        "embeddings are in f16"
    );
    let verified = json_stdout(andes(&["verify", path(&package)]));
    assert_eq!(verified["linears_verified"], 14);
    // Every tensor of every weight file starts on the profile's 64-byte alignment; odd-sized
    // packed rows need fillers for that.
    for file in ["quantized_linears.safetensors", "float_tensors.safetensors"] {
        let bytes = std::fs::read(package.join(file)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        for (name, entry) in header.iter().filter(|(n, _)| !n.starts_with("__")) {
            let start = 8 + header_len + entry["data_offsets"][0].as_u64().unwrap() as usize;
            assert_eq!(start % 64, 0, "{file}: `{name}` starts at byte {start}");
        }
        if file.starts_with("quantized") {
            assert!(header.keys().any(|n| n.starts_with("__pad__.")));
        }
    }
    let inspected = json_stdout(andes(&["inspect", path(&package), "--json"]));
    assert_eq!(inspected["bpw"], summary["bpw"]);
    assert!(
        inspected["cost_estimate"]["decode_tokens_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // The package evaluates exactly like the float model quantized in memory by its plan
    // (float parts kept in f32 for the comparison: the shipped profile stores them in f16).
    let f32_profile = dir.path().join("d9500-f32.toml");
    let profile = std::fs::read_to_string(repo("configs/targets/dimensity9500.toml")).unwrap();
    std::fs::write(
        &f32_profile,
        profile.replace("precision = \"f16\"", "precision = \"f32\""),
    )
    .unwrap();
    let eval = |model: &Path, extra: &[&str]| {
        let mut args = vec!["eval", "--model", path(model), "--json", "--text"];
        let text = repo("datasets/gcide/gcide-eval.txt");
        args.push(path(&text));
        args.extend(extra);
        json_stdout(andes(&args))
    };
    let plan = package.join("bit_plan.json");
    let rtn_package = dir.path().join("pkg-rtn");
    json_stdout(quantize_tiny(
        &rtn_package,
        &[
            "--target",
            path(&f32_profile),
            "--plan",
            path(&plan),
            "--init",
            "rtn",
        ],
    ));
    let from_package = eval(&rtn_package, &[]);
    let in_memory = eval(
        &fixture("qwen3-tiny-untied-mha-f32"),
        &["--plan", path(&plan), "--init", "rtn"],
    );
    assert_eq!(from_package["mean_nll"], in_memory["mean_nll"]);
    assert_eq!(from_package["bpw_linears"], in_memory["bpw_linears"]);

    // A flipped byte, a truncated file, an extra file: each rejected, naming the file.
    let tampered = dir.path().join("tampered");
    std::fs::rename(&rtn_package, &tampered).unwrap();
    let file = tampered.join("quantized_linears.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();
    let output = andes(&["verify", path(&tampered)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("quantized_linears.safetensors"),
        "{stderr}"
    );
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let output = andes(&["verify", path(&tampered)]);
    assert!(!output.status.success());
}

/// The tensors of a safetensors file, by name, as (dtype, shape, bytes).
fn tensors(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let value = (
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                view.data().to_vec(),
            );
            (name, value)
        })
        .collect()
}

/// `andes quantize MODEL` for dimensity9500 at 3 bpw, calibrated on 8 windows of 64 tokens
/// of the held-out GCIDE prose, sensitivities cached in `cache`, plus `extra` arguments.
fn quantize_at_3_bpw(model: &Path, out: &Path, cache: &Path, extra: &[&str]) -> Output {
    let calib = repo("datasets/gcide/gcide-eval.txt");
    let mut args = vec![
        "quantize",
        "--model",
        path(model),
        "--target",
        "dimensity9500",
        "--bpw",
        "3",
        "--calib",
        path(&calib),
        "--seq-len",
        "64",
        "--calib-windows",
        "8",
        "--cache",
        path(cache),
        "--out",
        path(out),
        "--json",
    ];
    args.extend(extra);
    andes(&args)
}

/// An AndesVL model quantizes as its language model does (the tiny AndesVL's language model
/// is the tiny Qwen3 fixture: same plan, the same packed-linear and float files byte for byte),
/// its vision tower and projector ship in f16, and the package verifies and generates from an
/// image.
#[test]
fn an_andesvl_package_quantizes_its_language_model_and_keeps_the_vision_side() {
    let dir = tempfile::tempdir().unwrap();
    let (vl, lm) = (dir.path().join("vl"), dir.path().join("lm"));
    let cache = dir.path().join("cache");
    let quantize =
        |model: &Path, out: &Path| json_stdout(quantize_at_3_bpw(model, out, &cache, &[]));
    let vl_summary = quantize(&repo("fixtures/andesvl-tiny"), &vl);
    let lm_summary = quantize(&fixture("qwen3-tiny-untied-mha-f32"), &lm);
    assert_eq!(vl_summary["bpw"], lm_summary["bpw"]);
    // Byte for byte: two processes (two hash seeds) write the same files.
    for file in ["quantized_linears.safetensors", "float_tensors.safetensors"] {
        let (a, b) = (std::fs::read(vl.join(file)), std::fs::read(lm.join(file)));
        assert!(a.unwrap() == b.unwrap(), "{file} differs");
    }
    let vision = tensors(&vl.join("vision_tensors.safetensors"));
    let source = tensors(&repo("fixtures/andesvl-tiny/model.safetensors"));
    let expected: Vec<&String> = source
        .keys()
        .filter(|name| !name.starts_with("language_model."))
        .collect();
    assert_eq!(vision.keys().collect::<Vec<_>>(), expected);
    for (name, (dtype, shape, bytes)) in &vision {
        assert_eq!(dtype, "F16", "{name}");
        let (_, source_shape, source_bytes) = &source[name];
        assert_eq!(shape, source_shape, "{name}");
        let halves = source_bytes.chunks(4).map(|b| {
            let value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            half::f16::from_f32(value).to_le_bytes()
        });
        assert!(
            halves.flatten().eq(bytes.iter().copied()),
            "{name} is not the f16 of the source"
        );
    }
    assert!(vl_summary["weights"]["vision_parameters"].as_u64().unwrap() > 0);
    let verified = json_stdout(andes(&["verify", path(&vl)]));
    assert_eq!(verified["linears_verified"], 14);
    let image = repo("datasets/images/digits/png/0007.png");
    let out = json_stdout(andes(&[
        "generate",
        "--model",
        path(&vl),
        "--image",
        path(&image),
        "--prompt",
        "Which digit?",
        "--max-new-tokens",
        "3",
        "--greedy",
        "--json",
    ]));
    assert!(!out["token_ids"].as_array().unwrap().is_empty());
}

/// `--calib-images` adds image-text records to an AndesVL model's calibration: its language
/// model's GPTQ codes change (the linears saw visual tokens too) and the manifest names the
/// file; on a text model the flag is refused.
#[test]
fn image_calibration_moves_the_andesvl_codes_and_is_refused_on_text_models() {
    let dir = tempfile::tempdir().unwrap();
    let images = repo("datasets/images/digits/chat-train.jsonl");
    let cache = dir.path().join("cache");
    let quantize = |model: &Path, out: &Path, with_images: bool| {
        let gptq = ["--sensitivity", "hessian", "--init", "gptq"];
        let images = [
            "--calib-images",
            path(&images),
            "--calib-image-records",
            "8",
        ];
        let extra: Vec<&str> = gptq
            .iter()
            .chain(if with_images { &images[..] } else { &[] })
            .copied()
            .collect();
        quantize_at_3_bpw(model, out, &cache, &extra)
    };
    let andesvl = repo("fixtures/andesvl-tiny");
    let (text, both) = (dir.path().join("text"), dir.path().join("both"));
    json_stdout(quantize(&andesvl, &text, false));
    json_stdout(quantize(&andesvl, &both, true));
    let codes = |pkg: &Path| std::fs::read(pkg.join("quantized_linears.safetensors")).unwrap();
    assert!(
        codes(&text) != codes(&both),
        "image calibration changed no code"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(both.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["quantization"]["calibration_image_records"], 8);
    let refused = quantize(
        &fixture("qwen3-tiny-untied-mha-f32"),
        &dir.path().join("no"),
        true,
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("calibrates AndesVL models"), "{stderr}");
}

#[test]
fn quantize_refuses_bad_budgets_calibration_and_targets_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    let stderr = |output: Output| {
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = stderr(quantize_tiny(
        &out,
        &["--target", "dimensity9500", "--bpw", "1.0"],
    ));
    assert!(
        error.contains("below the smallest the allowed formats reach"),
        "{error}"
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let error = stderr(andes(&[
        "quantize",
        "--model",
        path(&fixture("qwen3-tiny-untied-mha-f32")),
        "--target",
        "dimensity9500",
        "--bpw",
        "1.8",
        "--calib",
        path(&empty),
        "--out",
        path(&out),
    ]));
    assert!(error.contains("empty.txt"), "{error}");
    let error = stderr(quantize_tiny(&out, &["--target", "tpu9000", "--bpw", "4"]));
    assert!(
        error.contains("tpu9000") && error.contains("dimensity9500"),
        "{error}"
    );
    let small = dir.path().join("small.toml");
    let profile = std::fs::read_to_string(repo("configs/targets/dimensity9500.toml")).unwrap();
    let profile = profile.replace(
        "memory_gib = { value = 4,",
        "memory_gib = { value = 0.0001,",
    );
    std::fs::write(&small, profile).unwrap();
    let error = stderr(quantize_tiny(
        &out,
        &["--target", path(&small), "--bpw", "1.8"],
    ));
    assert!(
        error.contains("does not fit") && error.contains("MiB"),
        "{error}"
    );
    assert!(!out.exists(), "nothing is left behind");
    assert!(!dir.path().join(".tmp-pkg").exists());
}

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
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
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

/// `bench forward --replay` decodes through the replayed decoder (on the CPU the captured step
/// reruns) and says so; a decode longer than the model's positions is refused, naming the limit.
#[test]
fn bench_forward_replay_reports_the_replayed_decoder_and_refuses_too_long_a_decode() {
    let config = fixture("qwen3-tiny-tied-gqa-f32").join("config.json");
    let bench = |decode_tokens: &str| {
        andes(&[
            "bench",
            "forward",
            "--config",
            path(&config),
            "--prompt-len",
            "16",
            "--decode-tokens",
            decode_tokens,
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--replay",
        ])
    };
    let report = json_stdout(bench("8"));
    assert_eq!(report["decoder"], "replayed graph");
    assert!(report["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    let output = bench("100000");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_position_embeddings"), "{stderr}");
}
