//! `andes train` at each `[train] precision`: bf16-mixed follows f32's loss curve within
//! bf16's rounding while its master weights, and so its checkpoints, stay f32; pure bf16
//! trains too; activation checkpointing changes the memory, not the losses.

mod common;

use std::path::Path;

use common::{losses, train_tiny};

/// Trains the tiny pretrain recipe for 12 steps at `precision` into `run`.
fn train_at(precision: &str, run: &Path) -> Vec<f64> {
    train_with(&[&format!("train.precision=\"{precision}\"")], run)
}

/// Trains the tiny pretrain recipe for 12 steps with `overrides` into `run`; its losses.
fn train_with(overrides: &[&str], run: &Path) -> Vec<f64> {
    let mut all = vec!["train.steps=12", "train.checkpoint_every=12"];
    all.extend(overrides);
    train_tiny("pretrain", run, &all);
    losses(run).into_iter().map(|(_, loss)| loss).collect()
}

/// The dtypes of the tensors of a checkpoint's `model.safetensors`.
fn checkpoint_dtypes(run: &Path) -> Vec<String> {
    let bytes = std::fs::read(run.join("checkpoints/step-000012/model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut dtypes: Vec<String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(_, tensor)| tensor["dtype"].as_str().unwrap().to_string())
        .collect();
    dtypes.dedup();
    dtypes
}

#[test]
fn bf16_mixed_tracks_f32_losses_and_keeps_f32_master_weights() {
    let dir = tempfile::tempdir().unwrap();
    let f32_losses = train_at("f32", &dir.path().join("f32"));
    let mixed = dir.path().join("mixed");
    let mixed_losses = train_at("bf16-mixed", &mixed);
    assert_ne!(f32_losses, mixed_losses, "bf16-mixed ran in f32");
    for (step, (a, b)) in f32_losses.iter().zip(&mixed_losses).enumerate() {
        assert!(
            (a - b).abs() < 0.02 * a,
            "step {step}: f32 {a} vs bf16-mixed {b}"
        );
    }
    assert!(mixed_losses[11] < mixed_losses[0] - 0.5, "{mixed_losses:?}");
    assert_eq!(checkpoint_dtypes(&mixed), ["F32"]);
    let recipe = std::fs::read_to_string(mixed.join("recipe.toml")).unwrap();
    assert!(recipe.contains("precision = \"bf16-mixed\""), "{recipe}");
}

#[test]
fn pure_bf16_trains() {
    let dir = tempfile::tempdir().unwrap();
    let losses = train_at("bf16", dir.path());
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[11] < losses[0] - 0.5, "{losses:?}");
}

#[test]
fn activation_checkpointing_keeps_the_losses() {
    let dir = tempfile::tempdir().unwrap();
    let kept = train_with(&[], &dir.path().join("kept"));
    let recomputed = train_with(
        &["train.activation_checkpointing=true"],
        &dir.path().join("recomputed"),
    );
    for (step, (a, b)) in kept.iter().zip(&recomputed).enumerate() {
        assert!((a - b).abs() <= 1e-5 * a, "step {step}: {a} vs {b}");
    }
}
