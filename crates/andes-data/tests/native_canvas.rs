//! The released AndesVL preprocessing (`native_preprocess`: resize, then centre on a canvas
//! of the mean colour) against the reference script's port of it: the canvas geometry for
//! many image sizes exactly, and the pixels of a real photo within resampling rounding.
//! Fixtures: `scripts/fixtures/make_andesvl_released_fixtures.py`.

use std::path::{Path, PathBuf};

use andes_data::image_processor::{ImageProcessor, native_canvas};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    std::env::var_os("ANDES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
}

#[test]
fn canvas_geometry_matches_native_preprocess_for_every_size() {
    let path = fixtures().join("andesvl-released/preprocess.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() > 50);
    let pair = |v: &serde_json::Value| {
        (
            v[0].as_u64().unwrap() as usize,
            v[1].as_u64().unwrap() as usize,
        )
    };
    for case in &cases {
        let (w, h) = pair(&case["size"]);
        let base = case["base"].as_u64().unwrap() as usize;
        let max_size = case["max_size"].as_u64().unwrap() as usize;
        let layout = native_canvas(w, h, base, max_size);
        let expected = (
            pair(&case["canvas"]),
            pair(&case["resized"]),
            pair(&case["offset"]),
        );
        assert_eq!(
            (layout.canvas, layout.resized, layout.offset),
            expected,
            "{w}×{h}, base {base}, max_size {max_size}"
        );
    }
}

/// In 8-bit levels before normalisation. The canvas and its colour are exact; inside the
/// photo PIL's bicubic filter (8-bit fixed-point taps) and the `image` crate's Catmull-Rom
/// (f32 accumulation) round differently. Measured: max 1 level, mean 0.1 level.
#[test]
fn released_preprocessing_matches_pil_within_resampling_rounding() {
    let bytes = std::fs::read(fixtures().join("andesvl-released/reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&bytes).unwrap();
    for family in ["aimv2", "siglip2"] {
        let config = fixtures().join(format!(
            "andesvl-released/{family}/preprocessor_config.json"
        ));
        let processor = ImageProcessor::from_file(&config).unwrap();
        assert!(
            processor.canvas.is_some(),
            "a CLIPImageProcessor config takes the canvas"
        );
        let image = processor
            .load(&fixtures().join("vision/images/chelsea.png"))
            .unwrap();
        let view = reference.tensor(&format!("{family}.a.pixels")).unwrap();
        assert_eq!(view.shape(), [3, image.height, image.width], "{family}");
        let expected: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let plane = image.height * image.width;
        let levels: Vec<f32> = image
            .pixels
            .iter()
            .zip(&expected)
            .enumerate()
            .map(|(i, (a, b))| (a - b).abs() * processor.std[i / plane] / processor.rescale)
            .collect();
        let worst = levels.iter().cloned().fold(0.0f32, f32::max);
        let mean = levels.iter().sum::<f32>() / levels.len() as f32;
        eprintln!("{family}: max {worst:.3} levels, mean {mean:.4} levels");
        assert!(
            worst <= 2.0 + 1e-3 && mean <= 0.25,
            "{family}: max {worst}, mean {mean}"
        );
    }
}
