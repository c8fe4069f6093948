//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes bench`: `bench forward --replay`.

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
