//! The AndesVL assembly on the tiny preset: parts loaded from real (tiny) checkpoints, a
//! save/load round trip, visual embeddings spliced exactly at the image spans, text-only
//! rows computing what the plain Qwen3 model computes, and batches mixing text-only and
//! image+text sequences.

use std::path::{Path, PathBuf};

use andes_model::andesvl::{
    AndesVL, AndesVLConfig, ImagePlacement, assemble, load_andesvl, save_andesvl,
};
use andes_model::checkpoint::{SaveDtype, load_qwen3};
use andes_model::generate::token_tensor;
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn preset() -> AndesVLConfig {
    AndesVLConfig::from_file(&root().join("configs/models/andesvl-tiny/config.json")).unwrap()
}

fn tiny(device: &Device) -> AndesVL {
    device.seed(7);
    assemble(
        &preset(),
        Some(&root().join("fixtures/qwen3-tiny-untied-mha-f32")),
        Some(&root().join("fixtures/vision/siglip2-tiny")),
        device,
    )
    .unwrap()
}

fn random_image(height: usize, width: usize, device: &Device) -> Tensor<3> {
    Tensor::random([3, height, width], Distribution::Normal(0.0, 1.0), device)
}

fn tokens(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let width = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), width]), device)
}

fn close(a: Tensor<3>, b: Tensor<3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn assembled_model_round_trips_and_keeps_the_text_model_exact() {
    let device = Device::default();
    let model = tiny(&device);
    let dir = tempfile::tempdir().unwrap();
    save_andesvl(&model, &preset(), dir.path(), SaveDtype::F32).unwrap();
    let (config, reloaded) = load_andesvl(dir.path(), &device, DType::F32).unwrap();
    assert_eq!(config, preset());

    let ids: Vec<u32> = (1..20).collect();
    let image = random_image(64, 96, &device); // 4×6 patches → 6 visual tokens
    let placement = ImagePlacement {
        sequence: 0,
        span: 3..9,
        pixels: image,
    };
    let logits = |m: &AndesVL, images: &[ImagePlacement]| {
        m.forward(
            token_tensor(&ids, &device),
            images,
            &mut m.language_model.new_cache(),
        )
        .unwrap()
    };
    let with_image = logits(&model, std::slice::from_ref(&placement));
    assert_eq!(
        close(with_image.clone(), logits(&reloaded, &[placement])),
        0.0,
        "the saved model computes the same logits"
    );

    let (_, text_model) = load_qwen3(
        &root().join("fixtures/qwen3-tiny-untied-mha-f32"),
        &device,
        DType::F32,
    )
    .unwrap();
    let text_only = text_model
        .forward(token_tensor(&ids, &device), &mut text_model.new_cache())
        .unwrap();
    assert_eq!(close(logits(&model, &[]), text_only.clone()), 0.0);
    // Causal attention: positions before the image see the same context either way.
    let [_, _, vocab] = text_only.dims();
    let prefix = |t: Tensor<3>| t.slice([0..1, 0..3, 0..vocab]);
    assert_eq!(
        close(prefix(with_image.clone()), prefix(text_only.clone())),
        0.0
    );
    assert!(
        close(with_image, text_only) > 1e-3,
        "the image changes later positions"
    );
}

#[test]
fn image_spans_hold_exactly_the_projected_vision_features() {
    let device = Device::default();
    let model = tiny(&device);
    let image = random_image(96, 64, &device); // 6×4 patches → 6 visual tokens
    let visual = model.encode_image(image.clone()).unwrap();
    assert_eq!(visual.dims(), [6, 64]);
    assert_eq!(model.visual_tokens(96, 64), 6);
    let ids: Vec<u32> = (30..42).collect();
    let placement = ImagePlacement {
        sequence: 0,
        span: 4..10,
        pixels: image,
    };
    let embedded = model
        .embed(token_tensor(&ids, &device), &[placement])
        .unwrap();
    let plain = model.language_model.embed(token_tensor(&ids, &device));
    let rows = |t: Tensor<3>, r: std::ops::Range<usize>| t.slice([0..1, r, 0..64]);
    assert_eq!(
        close(rows(embedded.clone(), 4..10), visual.unsqueeze()),
        0.0
    );
    assert_eq!(
        close(rows(embedded.clone(), 0..4), rows(plain.clone(), 0..4)),
        0.0
    );
    assert_eq!(close(rows(embedded, 10..12), rows(plain, 10..12)), 0.0);
}

#[test]
fn one_batch_mixes_text_only_and_image_sequences() {
    let device = Device::default();
    let model = tiny(&device);
    let rows = vec![(1..13).collect::<Vec<u32>>(), (40..52).collect()];
    let image = random_image(64, 64, &device); // 4×4 patches → 4 visual tokens
    let placement = |sequence| ImagePlacement {
        sequence,
        span: 2..6,
        pixels: image.clone(),
    };
    let batch = model
        .forward(
            tokens(&rows, &device),
            &[placement(1)],
            &mut model.language_model.new_cache(),
        )
        .unwrap();
    let alone = |row: &Vec<u32>, images: &[ImagePlacement]| {
        model
            .forward(
                tokens(std::slice::from_ref(row), &device),
                images,
                &mut model.language_model.new_cache(),
            )
            .unwrap()
    };
    let [_, seq, vocab] = batch.dims();
    let row = |r: usize| batch.clone().slice([r..r + 1, 0..seq, 0..vocab]);
    assert!(close(row(0), alone(&rows[0], &[])) < 1e-5);
    assert!(close(row(1), alone(&rows[1], &[placement(0)])) < 1e-5);
}

#[test]
fn misplaced_images_and_mismatched_parts_are_errors() {
    let device = Device::default();
    let model = tiny(&device);
    let wrong_span = ImagePlacement {
        sequence: 0,
        span: 0..5,
        pixels: random_image(64, 64, &device),
    };
    let ids: Vec<u32> = (1..10).collect();
    let error = model
        .embed(token_tensor(&ids, &device), &[wrong_span])
        .unwrap_err()
        .to_string();
    assert!(error.contains("4 visual tokens"), "{error}");

    let error = assemble(
        &preset(),
        None,
        Some(&root().join("fixtures/vision/aimv2-tiny")),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("aimv2-tiny") && error.contains("aimv2_vision_model"),
        "{error}"
    );
    let error = assemble(
        &preset(),
        Some(&root().join("fixtures/qwen3-tiny-tied-gqa-f32")),
        None,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("qwen3-tiny-tied-gqa-f32") && error.contains("text_config"),
        "{error}"
    );
}
