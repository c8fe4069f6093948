//! Images for the vision tower at native resolution: decode (PNG, JPEG, WebP), resize to a
//! multiple of `patch_size · merge_size` on both sides within `[min_pixels, max_pixels]`
//! keeping the aspect ratio (Qwen2-VL's `smart_resize`), rescale to [0, 1] and normalise per
//! channel, as the checkpoint's `preprocessor_config.json` says.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use serde::Deserialize;

use crate::DataError;

/// `size` as transformers 5 writes it: pixel-count bounds.
#[derive(Debug, Clone, Deserialize)]
struct PixelBounds {
    shortest_edge: usize,
    longest_edge: usize,
}

/// The keys of `preprocessor_config.json` that andes uses (others are ignored).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "default_true")]
    do_resize: bool,
    #[serde(default = "default_true")]
    do_rescale: bool,
    #[serde(default = "default_true")]
    do_normalize: bool,
    #[serde(default = "default_rescale")]
    rescale_factor: f32,
    image_mean: [f32; 3],
    image_std: [f32; 3],
    /// PIL resampling filter code: 2 bilinear, 3 bicubic.
    #[serde(default = "default_resample")]
    resample: u32,
    patch_size: usize,
    #[serde(default = "default_merge")]
    merge_size: usize,
    #[serde(default)]
    size: Option<PixelBounds>,
    #[serde(default)]
    min_pixels: Option<usize>,
    #[serde(default)]
    max_pixels: Option<usize>,
}

fn default_true() -> bool {
    true
}
fn default_rescale() -> f32 {
    1.0 / 255.0
}
fn default_resample() -> u32 {
    3
}
fn default_merge() -> usize {
    2
}

/// Turns image files into normalised pixel arrays whose sides are multiples of
/// `patch_size · merge_size`.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    /// Side of a vision patch in pixels.
    pub patch_size: usize,
    /// Side of the patch neighbourhood the projector merges.
    pub merge_size: usize,
    /// Fewest pixels after resizing.
    pub min_pixels: usize,
    /// Most pixels after resizing.
    pub max_pixels: usize,
    /// Per-channel mean subtracted after rescaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
    /// Multiplier from 8-bit values (1/255), 1 when rescaling is off.
    pub rescale: f32,
    /// Whether to normalise with `mean`/`std`.
    pub normalize: bool,
    /// Whether to resize at all (the image must then already fit the grid).
    pub resize: bool,
    filter: FilterType,
}

/// One preprocessed image: `[3, height, width]` values, row-major per channel.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// The file it came from.
    pub source: PathBuf,
    /// Channel-major pixel values.
    pub pixels: Vec<f32>,
    /// Height in pixels (a multiple of patch · merge).
    pub height: usize,
    /// Width in pixels (a multiple of patch · merge).
    pub width: usize,
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json`; errors name the file and key.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::ImageConfig {
            path: path.to_owned(),
            key: String::new(),
            message: e.to_string(),
        })?;
        let mut de = serde_json::Deserializer::from_str(&text);
        let raw: RawConfig =
            serde_path_to_error::deserialize(&mut de).map_err(|e| DataError::ImageConfig {
                path: path.to_owned(),
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        let fail = |key: &str, message: String| DataError::ImageConfig {
            path: path.to_owned(),
            key: key.into(),
            message,
        };
        let filter = match raw.resample {
            2 => FilterType::Triangle,
            3 => FilterType::CatmullRom,
            other => {
                return Err(fail(
                    "resample",
                    format!("{other}: expected 2 (bilinear) or 3 (bicubic)"),
                ));
            }
        };
        let (min_pixels, max_pixels) = match (raw.size, raw.min_pixels, raw.max_pixels) {
            (_, Some(min), Some(max)) => (min, max),
            (Some(size), _, _) => (size.shortest_edge, size.longest_edge),
            _ => {
                return Err(fail(
                    "size",
                    "expected size.shortest_edge/longest_edge or min_pixels/max_pixels".into(),
                ));
            }
        };
        if raw.patch_size == 0 || raw.merge_size == 0 {
            return Err(fail(
                "patch_size",
                "patch and merge sizes must be ≥ 1".into(),
            ));
        }
        if min_pixels > max_pixels || max_pixels == 0 {
            return Err(fail(
                "size",
                format!("min {min_pixels} > max {max_pixels} pixels"),
            ));
        }
        if raw.image_std.iter().any(|s| *s <= 0.0) {
            return Err(fail("image_std", "every std must be > 0".into()));
        }
        Ok(Self {
            patch_size: raw.patch_size,
            merge_size: raw.merge_size,
            min_pixels,
            max_pixels,
            mean: raw.image_mean,
            std: raw.image_std,
            rescale: if raw.do_rescale {
                raw.rescale_factor
            } else {
                1.0
            },
            normalize: raw.do_normalize,
            resize: raw.do_resize,
            filter,
        })
    }

    /// The `(height, width)` an image of `height × width` is resized to: each side the
    /// nearest multiple of `patch · merge` (ties to even, as Python's `round`), then scaled
    /// down or up by a common factor when the area leaves `[min_pixels, max_pixels]`.
    pub fn target_size(&self, height: usize, width: usize) -> (usize, usize) {
        let factor = (self.patch_size * self.merge_size) as f64;
        let (h, w) = (height as f64, width as f64);
        let mut h_bar = (h / factor).round_ties_even() * factor;
        let mut w_bar = (w / factor).round_ties_even() * factor;
        if h_bar * w_bar > self.max_pixels as f64 {
            let beta = (h * w / self.max_pixels as f64).sqrt();
            h_bar = factor.max((h / beta / factor).floor() * factor);
            w_bar = factor.max((w / beta / factor).floor() * factor);
        } else if h_bar * w_bar < self.min_pixels as f64 {
            let beta = (self.min_pixels as f64 / (h * w)).sqrt();
            h_bar = (h * beta / factor).ceil() * factor;
            w_bar = (w * beta / factor).ceil() * factor;
        }
        (h_bar.max(factor) as usize, w_bar.max(factor) as usize)
    }

    /// Decodes, resizes and normalises the image at `path`.
    pub fn load(&self, path: &Path) -> Result<ProcessedImage, DataError> {
        let fail = |message: String| DataError::Image {
            path: path.to_owned(),
            message,
        };
        let reader = image::ImageReader::open(path)
            .map_err(|e| fail(e.to_string()))?
            .with_guessed_format()
            .map_err(|e| fail(e.to_string()))?;
        if reader.format().is_none() {
            return Err(fail(
                "not a PNG, JPEG or WebP image (unrecognised file signature)".into(),
            ));
        }
        let decoded = reader
            .decode()
            .map_err(|e| fail(format!("cannot decode: {e}")))?;
        let rgb = decoded.to_rgb8();
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        if width == 0 || height == 0 {
            return Err(fail("the image has no pixels".into()));
        }
        if width.max(height) > 200 * width.min(height) {
            return Err(fail(format!("aspect ratio {width}×{height} exceeds 200:1")));
        }
        let (target_h, target_w) = if self.resize {
            self.target_size(height, width)
        } else {
            let factor = self.patch_size * self.merge_size;
            if !height.is_multiple_of(factor) || !width.is_multiple_of(factor) {
                return Err(fail(format!(
                    "do_resize is off but {width}×{height} is not a multiple of {factor}"
                )));
            }
            (height, width)
        };
        let resized = if (target_h, target_w) == (height, width) {
            rgb
        } else {
            image::imageops::resize(&rgb, target_w as u32, target_h as u32, self.filter)
        };
        let plane = target_h * target_w;
        let mut pixels = vec![0.0f32; 3 * plane];
        for (i, pixel) in resized.pixels().enumerate() {
            for c in 0..3 {
                let value = pixel.0[c] as f32 * self.rescale;
                pixels[c * plane + i] = if self.normalize {
                    (value - self.mean[c]) / self.std[c]
                } else {
                    value
                };
            }
        }
        Ok(ProcessedImage {
            source: path.to_owned(),
            pixels,
            height: target_h,
            width: target_w,
        })
    }
}

impl ProcessedImage {
    /// Number of visual tokens the image becomes after the projector's merge.
    pub fn visual_tokens(&self, patch_size: usize, merge_size: usize) -> usize {
        (self.height / patch_size) * (self.width / patch_size) / (merge_size * merge_size)
    }
}
