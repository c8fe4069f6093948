//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes train`: the tiny recipes' losses, exact kill-and-resume, data-parallel runs, and
//! the errors of bad recipes and data.

mod common;

use common::{andes, json_stdout, losses, metrics, path, repo, train_command, train_tiny};
use std::path::Path;
use std::process::Command;

const SHORT_RUN: [&str; 6] = [
    "--set",
    "train.steps=24",
    "--set",
    "train.checkpoint_every=4",
    "--set",
    "train.eval_every=12",
];

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

/// Runs `recipe` (with `extra` arguments) straight and, in a second directory, kills it with
/// SIGKILL after its first checkpoint and resumes it: the losses must be identical.
fn assert_sigkill_resume_is_exact(recipe: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (straight, interrupted) = (dir.path().join("straight"), dir.path().join("interrupted"));
    let config = path(&repo(recipe)).to_string();
    let status = train_command(&["--config", &config, "--out", path(&straight), "--quiet"])
        .args(SHORT_RUN)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success());

    let mut run = train_command(&["--config", &config, "--out", path(&interrupted), "--quiet"]);
    kill_after_first_checkpoint(run.args(SHORT_RUN).args(extra), &interrupted);

    let status = train_command(&["--resume", path(&interrupted), "--quiet"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(losses(&interrupted), losses(&straight));
}

#[test]
fn train_killed_with_sigkill_and_resumed_reproduces_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/pretrain.toml", &[]);
}

/// A file streamed through a shuffle buffer resumes exactly too: the buffer's records, the
/// reads and draws and the tokens not yet windowed are in the checkpoint.
#[test]
fn a_streamed_run_killed_and_resumed_reproduces_the_uninterrupted_losses() {
    let streamed = ["--set", "data.shuffle_buffer=50"];
    assert_sigkill_resume_is_exact("configs/recipes/tiny/pretrain.toml", &streamed);
}

/// A mixture resumes exactly: each source's position and the draws so far are in the
/// checkpoint. Every step's line names each source's loss, and evaluation each source's
/// held-out loss.
#[test]
fn a_mixture_killed_and_resumed_reproduces_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/mixture.toml", &[]);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny("mixture", &run, &["train.steps=4", "train.eval_every=4"]);
    let lines = metrics(&run);
    let sources = |line: &serde_json::Value, key: &str| -> Vec<String> {
        line[key].as_object().unwrap().keys().cloned().collect()
    };
    assert!(
        lines
            .iter()
            .all(|l| !sources(l, "source_losses").is_empty())
    );
    assert_eq!(
        sources(&lines[3], "eval_source_losses"),
        ["icons", "ocr", "prose"]
    );
}

/// QALFT resumes exactly too: the GPTQ base is rebuilt, the adapter, trained scales and
/// optimizer state come back from the checkpoint.
#[test]
fn qalft_killed_and_resumed_reproduces_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/qalft.toml", &[]);
}

/// QAT resumes exactly: the grid the latent weights train through (scales and zero points) is
/// put back from the checkpoint, not fitted again to the moved weights.
#[test]
fn qat_killed_and_resumed_reproduces_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/qat.toml", &[]);
}

/// MPO (reward shift in the trainer state) and GRPO (completions sampled per step) resume
/// exactly: the same pairs, the same δ, the same sampled completions.
#[test]
fn mpo_and_grpo_killed_and_resumed_reproduce_the_uninterrupted_losses() {
    assert_sigkill_resume_is_exact("configs/recipes/tiny/mpo.toml", &[]);
    assert_sigkill_resume_is_exact("configs/recipes/tiny/grpo.toml", &[]);
}

/// Data-parallel training over two CPU replicas deals each step's two micro-batches one to a
/// replica and sums their gradients (in buckets, large or small): the losses are those of one
/// device on the same step's examples. Killed after its first checkpoint, the two-replica run resumes on one device
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
    let close = assert_close_losses;
    let single_losses = losses(&single);
    close(&losses(&parallel), &single_losses);
    // Gradients summed in buckets of 10 KiB (dozens a step) instead of the one 25 MiB bucket
    // the tiny model fills: the same losses.
    let bucketed = dir.path().join("bucketed");
    let mut small_buckets = run(&bucketed, "2");
    small_buckets.args(["--set", "train.bucket_mb=0.01"]);
    assert!(small_buckets.status().unwrap().success());
    close(&losses(&bucketed), &single_losses);
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

/// Two runs' losses, step by step, agree to 1e-5 of their size (float rounding of a
/// different order of summation or update).
fn assert_close_losses(a: &[(u64, f64)], b: &[(u64, f64)]) {
    assert_eq!(a.len(), b.len());
    for ((step, x), (_, y)) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "step {step}: {x} vs {y}");
    }
}

/// A step captured once and replayed (`train.replay = true`; on the CPU each replay reruns the
/// captured step) trains as the eager step does: the tiny pretraining (two micro-batches a
/// step, clipping) and QALFT (an adapter over a fake-quantized int2 base) end on the eager
/// runs' losses, the capture's own runs leaving no trace. Eager and replayed runs resume from each
/// other's checkpoints on the uninterrupted losses (one optimizer layout). Runs that cannot
/// replay are refused, saying why.
#[test]
fn a_replayed_run_trains_as_the_eager_one_and_they_resume_from_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let run = |recipe: &str, out: &Path, replay: bool, extra: &[&str]| {
        let config = path(&repo(&format!("configs/recipes/tiny/{recipe}.toml"))).to_string();
        let mut command = train_command(&["--config", &config, "--out", path(out), "--quiet"]);
        command
            .args(SHORT_RUN)
            .args(["--set", &format!("train.replay={replay}")])
            .args(extra);
        command
    };
    for recipe in ["pretrain", "qalft"] {
        let (eager, replayed) = (
            dir.path().join(format!("{recipe}-eager")),
            dir.path().join(format!("{recipe}-replayed")),
        );
        // Learned scales stay fixed here: the replayed update rounds differently in the last
        // bit, and a last-bit change of a trained int2 scale flips weights' rounding, which
        // the run then amplifies (to 2.6e-4 of the loss within eight steps).
        let steps: &[&str] = match recipe {
            "qalft" => &[
                "--set",
                "train.steps=8",
                "--set",
                "quant.learn_scales=false",
            ],
            _ => &[],
        };
        for (out, replay, mode) in [(&eager, false, "eager"), (&replayed, true, "rerun")] {
            let outcome = json_stdout(run(recipe, out, replay, steps).output().unwrap());
            assert_eq!(outcome["step_mode"], mode);
        }
        assert_close_losses(&losses(&replayed), &losses(&eager));
    }
    let eager_losses = losses(&dir.path().join("pretrain-eager"));
    for (first, then) in [(false, true), (true, false)] {
        let crossed = dir.path().join(format!("crossed-{first}"));
        kill_after_first_checkpoint(&mut run("pretrain", &crossed, first, &[]), &crossed);
        let output = train_command(&["--resume", path(&crossed), "--quiet"])
            .args(["--set", &format!("train.replay={then}")])
            .output()
            .unwrap();
        common::assert_success(&output);
        assert_close_losses(&losses(&crossed), &eager_losses);
    }
    let refusals = [
        ("mixture", &[][..], "image"),
        ("pretrain", &["--devices", "2"][..], "data-parallel"),
        ("lora", &["--set", "lora.dropout=0.1"][..], "dropout"),
        (
            "sft",
            &["--set", "data.packing=\"padding_free\""][..],
            "packed apart",
        ),
    ];
    for (recipe, extra, why) in refusals {
        let out = dir.path().join(format!("refused-{recipe}"));
        let output = run(recipe, &out, true, extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("train.replay") && stderr.contains(why),
            "{recipe}: {stderr}"
        );
    }
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
            common::assert_success(&output);
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
