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
