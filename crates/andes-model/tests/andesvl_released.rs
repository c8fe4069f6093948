//! OPPO's released AndesVL layout against a plain-PyTorch reference written after the public
//! modeling code: tiny random checkpoints of both tower families (AIMv2 with window attention
//! in one block and full attention in the other, SigLIP2 with its bicubic-sampled positions)
//! load as released (config.json, tensor names, fused qkv, `[1, N, D]` position table), and
//! the tower features, the projector output and the logits of a prompt showing two images of
//! different aspect ratios match. Fixtures: `scripts/fixtures/make_andesvl_released_fixtures.py`.

mod common;
use common::relative_error;

use std::ops::Range;
use std::path::{Path, PathBuf};

use andes_model::andesvl::{AndesVLLayout, ImagePlacement, load_andesvl};
use andes_model::checkpoint::SafetensorsShards;
use andes_model::kv_cache::KvCache;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

fn fixtures() -> PathBuf {
    std::env::var_os("ANDES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
        .join("andesvl-released")
}

fn read(reference: &mut SafetensorsShards, name: &str) -> TensorData {
    let shape = reference.shape(name).unwrap().0.to_vec();
    reference.read_f32(name, &shape).unwrap()
}

fn values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn assert_close(what: &str, found: TensorData, expected: TensorData) {
    assert_eq!(found.shape(), expected.shape(), "{what}: shape");
    let error = relative_error(&values(found), &values(expected));
    eprintln!("{what}: relative error {error:e}");
    assert!(error <= 1e-4, "{what}: relative error {error:e}");
}

/// Runs of `token` in `ids`, in order.
fn spans(ids: &[i64], token: i64) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        match spans.last_mut() {
            Some(span) if id == token && span.end == i => span.end = i + 1,
            _ if id == token => spans.push(i..i + 1),
            _ => {}
        }
    }
    spans
}

fn assert_family_matches(family: &str) {
    let device = Device::default();
    let (config, model) = load_andesvl(&fixtures().join(family), &device, DType::F32).unwrap();
    assert!(matches!(config.layout, AndesVLLayout::Released(_)));
    let mut reference = SafetensorsShards::open_file(&fixtures().join("reference.safetensors"))
        .expect("reference outputs");
    let mut images = Vec::new();
    for image in ["a", "b"] {
        let pixels: Tensor<3> = Tensor::from_data(
            read(&mut reference, &format!("{family}.{image}.pixels")),
            &device,
        );
        let features = model
            .vision_encoder
            .forward(pixels.clone().unsqueeze())
            .unwrap()
            .squeeze_dim::<2>(0);
        assert_close(
            &format!("{family} image {image} tower features"),
            features.into_data(),
            read(&mut reference, &format!("{family}.{image}.features")),
        );
        assert_close(
            &format!("{family} image {image} projector output"),
            model.encode_image(pixels.clone()).unwrap().into_data(),
            read(&mut reference, &format!("{family}.{image}.projected")),
        );
        images.push(pixels);
    }
    let ids: Vec<i64> = values(read(&mut reference, &format!("{family}.tokens")))
        .into_iter()
        .map(|id| id as i64)
        .collect();
    let placements = spans(&ids, config.image_token_id as i64)
        .into_iter()
        .zip(images)
        .map(|(span, pixels)| ImagePlacement {
            sequence: 0,
            span,
            pixels,
        })
        .collect::<Vec<_>>();
    assert_eq!(placements.len(), 2, "two image spans in the prompt");
    let tokens: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device);
    let mut cache = KvCache::new(config.text_config.num_hidden_layers);
    let logits = model.forward(tokens, &placements, &mut cache).unwrap();
    assert_close(
        &format!("{family} logits with two images"),
        logits.into_data(),
        read(&mut reference, &format!("{family}.logits")),
    );
}

#[test]
fn released_aimv2_layout_matches_the_reference_with_window_attention() {
    assert_family_matches("aimv2");
}

#[test]
fn released_siglip2_layout_matches_the_reference() {
    assert_family_matches("siglip2");
}
