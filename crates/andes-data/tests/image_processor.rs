//! Image preprocessing against the transformers Qwen2-VL image processor on real photos
//! (PNG, JPEG, and the PNG re-encoded as lossless WebP), fixtures from
//! `scripts/fixtures/make_vision_fixtures.py`.

use std::path::{Path, PathBuf};

use andes_data::DataError;
use andes_data::image_processor::ImageProcessor;
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    std::env::var_os("ANDES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
        .join("vision")
}

fn processor() -> ImageProcessor {
    ImageProcessor::from_file(&fixtures().join("preprocess/preprocessor_config.json")).unwrap()
}

fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(&format!("preprocess.{name}")).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// Differences in 8-bit levels of the 0..255 scale, before normalisation. Two steps round
/// differently from transformers: bicubic resizing (torchvision/PIL kernels with 8-bit
/// intermediates there, the `image` crate's Catmull-Rom filter with f32 accumulation here)
/// and JPEG decoding (libjpeg-turbo there, zune-jpeg here: IDCT and chroma upsampling differ
/// by a level). Measured: max 1 level on the PNG and WebP, 2 on the JPEG; mean ≈ 0.1 level.
/// The bound is 2 levels max and 0.25 level mean.
#[test]
fn matches_transformers_qwen2_vl_processor_within_resampling_rounding() {
    let processor = processor();
    for name in ["chelsea.png", "rocket.jpg", "chelsea.webp"] {
        let image = processor
            .load(&fixtures().join("images").join(name))
            .unwrap();
        let (shape, expected) = reference(name);
        assert_eq!(shape, vec![3, image.height, image.width], "{name}");
        let levels: Vec<f32> = image
            .pixels
            .iter()
            .zip(&expected)
            .enumerate()
            .map(|(i, (a, b))| {
                let c = i / (image.height * image.width);
                (a - b).abs() * processor.std[c] / processor.rescale
            })
            .collect();
        let worst = levels.iter().cloned().fold(0.0f32, f32::max);
        let mean = levels.iter().sum::<f32>() / levels.len() as f32;
        eprintln!("{name}: max {worst:.3} levels, mean {mean:.4} levels");
        assert!(
            worst <= 2.0 + 1e-3 && mean <= 0.25,
            "{name}: max {worst} levels, mean {mean}"
        );
    }
}

#[test]
fn smart_resize_matches_the_qwen2_vl_formula() {
    let processor = processor(); // factor 32, 4096..=25600 pixels
    assert_eq!(processor.target_size(300, 451), (128, 192)); // scaled down into max_pixels
    assert_eq!(processor.target_size(48, 16), (128, 64)); // scaled up to min_pixels
    assert_eq!(processor.target_size(80, 112), (64, 128)); // 2.5 → 2 and 3.5 → 4: ties to even
}

#[test]
fn unreadable_images_are_errors_naming_the_file() {
    let processor = processor();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = dir.join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let truncated = dir.join("cut.png");
    let png = std::fs::read(fixtures().join("images/chelsea.png")).unwrap();
    std::fs::write(&truncated, &png[..png.len() / 3]).unwrap();
    for path in [text, truncated, dir.join("missing.jpg")] {
        let error = processor.load(&path).unwrap_err();
        assert!(matches!(error, DataError::Image { .. }));
        assert!(
            error.to_string().contains(path.to_str().unwrap()),
            "{error}"
        );
    }
}
