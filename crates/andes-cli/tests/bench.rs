//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes bench`: `bench forward --replay`, `bench train`.

mod common;

use common::{andes, fixture, json_stdout, path};

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

#[test]
fn bench_train_reports_its_precision_and_starts_at_the_uniform_loss() {
    let config = fixture("qwen3-tiny-untied-mha-f32").join("config.json");
    let report = json_stdout(andes(&[
        "bench",
        "train",
        "--config",
        path(&config),
        "--precision",
        "bf16-mixed",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--steps",
        "1",
    ]));
    assert_eq!(report["precision"], "bf16-mixed");
    assert_eq!(report["device"], "cpu");
    assert!(report.get("dtype").is_none(), "{report}");
    // transformers' initialisation (N(0, 0.02²)) starts a model near ln(vocab), as PyTorch's
    // peer does; Burn's defaults start far above it.
    let loss = report["final_loss"].as_f64().unwrap();
    let uniform = 512f64.ln();
    assert!(
        (loss - uniform).abs() < 0.3,
        "first loss {loss}, ln 512 = {uniform}"
    );
}

/// `bench train --replay` trains as the eager bench does: burn's capture runs the step four
/// times on the CPU (three warm-ups and the recording, rerun here), so the replayed steps'
/// losses are the eager run's fifth and later, with the in-place AdamW in place of Burn's.
#[test]
fn bench_train_replay_continues_the_eager_runs_losses() {
    let config = fixture("qwen3-tiny-untied-mha-f32").join("config.json");
    let bench = |steps: &str, replay: bool| {
        let mut args = vec![
            "bench",
            "train",
            "--config",
            path(&config),
            "--precision",
            "f32",
            "--seq-len",
            "16",
            "--batch",
            "2",
            "--warmup",
            "0",
            "--steps",
            steps,
        ];
        if replay {
            args.push("--replay");
        }
        json_stdout(andes(&args))
    };
    let losses = |report: &serde_json::Value| -> Vec<f64> {
        report["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|loss| loss.as_f64().unwrap())
            .collect()
    };
    let eager = bench("7", false);
    let replayed = bench("3", true);
    assert_eq!(replayed["replay"]["on_device"], false, "{replayed}");
    assert!(replayed["host_ms"].is_null(), "{replayed}");
    assert!(
        eager["host_ms"]["forward"].as_f64().unwrap() > 0.0,
        "{eager}"
    );
    let (eager, replayed) = (losses(&eager), losses(&replayed));
    assert!(
        eager[6] < eager[0] - 0.05,
        "the eager run did not learn: {eager:?}"
    );
    for (step, (replayed, eager)) in replayed.iter().zip(&eager[4..]).enumerate() {
        assert!(
            (replayed - eager).abs() < 1e-4 * eager.abs(),
            "replayed step {step}: {replayed} vs eager {eager}"
        );
    }
}
