//! The vision towers against transformers: tiny random SigLIP2 (a full image-text checkpoint,
//! text tower ignored) and AIMv2 (native resolution, with a pooling head to ignore), each on
//! two real photos resized to patch grids of different aspect ratios; and the 2D rotary
//! tables against Qwen2-VL's. Fixtures: `scripts/fixtures/make_vision_fixtures.py`.

mod common;
use common::relative_error;

use std::path::{Path, PathBuf};

use andes_model::checkpoint::SafetensorsShards;
use andes_model::vision::{load_vision_tower, rope_2d_tables};
use burn::tensor::{DType, Device, Tensor, TensorData};

fn fixtures() -> PathBuf {
    std::env::var_os("ANDES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
        .join("vision")
}

fn reference() -> SafetensorsShards {
    SafetensorsShards::open_file(&fixtures().join("reference.safetensors")).unwrap()
}

fn read(reference: &mut SafetensorsShards, name: &str) -> TensorData {
    let shape = reference.shape(name).unwrap().0.to_vec();
    reference.read_f32(name, &shape).unwrap()
}

fn values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn assert_tower_matches(tower_dir: &str, family: &str) {
    let device = Device::default();
    let (_, tower) = load_vision_tower(&fixtures().join(tower_dir), &device, DType::F32).unwrap();
    let mut reference = reference();
    for image in ["a", "b"] {
        let pixels = read(&mut reference, &format!("{family}.{image}.pixels"));
        let expected = read(&mut reference, &format!("{family}.{image}.features"));
        let features = tower
            .forward(Tensor::<4>::from_data(pixels, &device))
            .unwrap();
        assert_eq!(features.dims().to_vec(), expected.shape().to_vec());
        let error = relative_error(&values(features.into_data()), &values(expected));
        eprintln!("{family} image {image}: relative error {error:e}");
        assert!(
            error <= 1e-4,
            "{family} image {image}: relative error {error:e}"
        );
    }
}

#[test]
fn siglip2_tower_matches_transformers_at_two_aspect_ratios() {
    assert_tower_matches("siglip2-tiny", "siglip2");
}

#[test]
fn aimv2_native_tower_matches_transformers_at_two_aspect_ratios() {
    assert_tower_matches("aimv2-tiny", "aimv2");
}

#[test]
fn rope_2d_tables_match_qwen2_vl_vision_rotary() {
    let device = Device::default();
    let mut reference = reference();
    let (cos, sin) = rope_2d_tables(3, 5, 16, 10000.0, &device);
    for (ours, name) in [(cos, "rope2d.cos"), (sin, "rope2d.sin")] {
        let expected = values(read(&mut reference, name));
        let ours = values(ours.into_data());
        let worst = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "{name}: max difference {worst:e}");
    }
}

#[test]
fn pixel_shuffle_and_projector_match_pytorch_for_both_variants() {
    use andes_model::checkpoint::load_parameters_named;
    use andes_model::projector::{Projector, ProjectorConfig};

    let device = Device::default();
    let mut reference = reference();
    let input = read(&mut reference, "projector.input");
    for (variant, layer_norm, intermediate_size) in
        [("andesvl", false, None), ("layernorm", true, Some(24))]
    {
        let config = ProjectorConfig {
            merge_size: 2,
            layer_norm,
            intermediate_size,
        };
        let projector = Projector::new(&config, 32, 24, &device);
        let projector = load_parameters_named(projector, &mut reference, DType::F32, &|name| {
            format!("projector.{variant}.mlp.{}", config.checkpoint_name(name))
        })
        .unwrap();
        let features = Tensor::<2>::from_data(input.clone(), &device).unsqueeze::<3>();
        let output = projector.forward(features, 4, 6).unwrap();
        let expected = read(&mut reference, &format!("projector.{variant}.output"));
        assert_eq!(output.dims()[1..].to_vec(), expected.shape().to_vec());
        let error = relative_error(&values(output.into_data()), &values(expected));
        assert!(error <= 1e-5, "{variant}: relative error {error:e}");
    }
}
