//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes convert`: a bf16 copy of a checkpoint reloads and evaluates close to the original.

mod common;

use common::{andes, fixture, json_stdout, path};
use std::path::Path;

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
