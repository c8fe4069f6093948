//! Images for the vision tower at native resolution: decode (PNG, JPEG, WebP), bring both
//! sides to multiples of `patch_size · merge_size` keeping the aspect ratio, rescale to
//! [0, 1] and normalise per channel, as the checkpoint's `preprocessor_config.json` says.
//! Two ways to reach the grid, chosen by that file: Qwen2-VL's `smart_resize` (resize within
//! `[min_pixels, max_pixels]`), or, for a `CLIPImageProcessor` config as OPPO's released
//! AndesVL checkpoints ship, their `native_preprocess` (resize, then centre on a canvas of the
//! mean colour; [`native_canvas`]).

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use serde::Deserialize;

use crate::DataError;

/// `size` as transformers 5 writes it: pixel-count bounds (a CLIP processor writes
/// `{"shortest_edge": -1}` there, which bounds nothing).
#[derive(Debug, Clone, Deserialize)]
struct PixelBounds {
    #[serde(default)]
    shortest_edge: Option<i64>,
    #[serde(default)]
    longest_edge: Option<i64>,
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
    #[serde(default)]
    image_processor_type: Option<String>,
    #[serde(default)]
    hidden_stride: Option<usize>,
    /// andes key for the released layout: `native_preprocess`'s `max_size` (the side of the
    /// largest square area), 733 (the released `chat`'s default) when absent.
    #[serde(default)]
    max_size: Option<usize>,
}

/// The image processor class of OPPO's released AndesVL checkpoints.
const RELEASED_PROCESSOR: &str = "CLIPImageProcessor";
/// `native_preprocess`'s default `max_size` in the released `chat`.
const RELEASED_MAX_SIZE: usize = 733;
/// `native_preprocess`'s longest side before anything else.
const RELEASED_MAX_RESOLUTION: usize = 4172;
/// `native_preprocess`'s fewest visual tokens.
const RELEASED_MIN_TOKENS: usize = 4;

/// The released AndesVL preprocessing: a canvas whose sides are multiples of `base`.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeCanvas {
    /// `patch_size · hidden_stride`.
    pub base: usize,
    /// The side of the largest square area an image keeps.
    pub max_size: usize,
    /// The canvas colour: the mean, in 8-bit (truncated, as `int(x * 255)`).
    pub background: [u8; 3],
}

/// Where an image lands on its canvas: all `(width, height)` or `(x, y)` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanvasLayout {
    /// The canvas.
    pub canvas: (usize, usize),
    /// The resized image.
    pub resized: (usize, usize),
    /// The resized image's top-left corner on the canvas.
    pub offset: (usize, usize),
}

/// `native_preprocess` of the released `modeling_andesvl.py`, geometry only: an image larger
/// than `max_size²` is fitted into the box `get_scaled_img_size` gives (each side rounded
/// up to the next multiple of `base`), one smaller than 4 visual tokens likewise into a box
/// of `(2·base)²`; any other gets one `base` more on each side than its multiple below (a
/// side already a multiple still gains a full `base`, as the code computes it) and is scaled
/// to touch the canvas; the image is centred (offsets rounded down).
pub fn native_canvas(width: usize, height: usize, base: usize, max_size: usize) -> CanvasLayout {
    let (mut w, mut h) = (width, height);
    if w.max(h) > RELEASED_MAX_RESOLUTION {
        let scale = RELEASED_MAX_RESOLUTION as f64 / w.max(h) as f64;
        (w, h) = ((w as f64 * scale) as usize, (h as f64 * scale) as usize);
    }
    if w * h > max_size * max_size {
        return fitted_canvas(w, h, base, max_size);
    }
    if w * h < base * base * RELEASED_MIN_TOKENS {
        let min_side = (base as f64 * (RELEASED_MIN_TOKENS as f64).sqrt()) as usize;
        return fitted_canvas(w, h, base, min_side);
    }
    let canvas = (w + base - w % base, h + base - h % base);
    let scale = (canvas.0 as f64 / w as f64).min(canvas.1 as f64 / h as f64);
    let resized = ((w as f64 * scale) as usize, (h as f64 * scale) as usize);
    centred(canvas, resized)
}

/// `max_preprocess` with `get_scaled_img_size(upper=True)`.
fn fitted_canvas(width: usize, height: usize, base: usize, max_size: usize) -> CanvasLayout {
    let limit = RELEASED_MAX_RESOLUTION;
    let (mut w, mut h) = (width, height);
    if w.max(h) > limit {
        let scale = limit as f64 / w.max(h) as f64;
        (w, h) = ((w as f64 * scale) as usize, (h as f64 * scale) as usize);
    }
    let area = (max_size * max_size) as f64;
    let aspect = w as f64 / h as f64;
    let fit = |side: f64| (side.floor() as usize).min(limit).max(base);
    let round_up = |side: usize| (side + (base - side % base)).min(limit);
    let box_w = round_up(fit((area * aspect).sqrt()));
    let box_h = round_up(fit((area / aspect).sqrt()));
    let scale = (box_w as f64 / w as f64).min(box_h as f64 / h as f64);
    let resized = (
        (w as f64 * scale).round_ties_even().max(1.0) as usize,
        (h as f64 * scale).round_ties_even().max(1.0) as usize,
    );
    centred((box_w, box_h), resized)
}

fn centred(canvas: (usize, usize), resized: (usize, usize)) -> CanvasLayout {
    CanvasLayout {
        canvas,
        resized,
        offset: (
            canvas.0.saturating_sub(resized.0) / 2,
            canvas.1.saturating_sub(resized.1) / 2,
        ),
    }
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
    /// The released AndesVL canvas instead of `smart_resize` (a `CLIPImageProcessor`
    /// config).
    pub canvas: Option<NativeCanvas>,
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
        let canvas = (raw.image_processor_type.as_deref() == Some(RELEASED_PROCESSOR)).then(|| {
            NativeCanvas {
                base: raw.patch_size * raw.hidden_stride.unwrap_or(raw.merge_size),
                max_size: raw.max_size.unwrap_or(RELEASED_MAX_SIZE),
                background: raw.image_mean.map(|m| (m * 255.0) as u8),
            }
        });
        let bounds = raw.size.and_then(|size| {
            let bound = |edge: Option<i64>| edge.and_then(|e| usize::try_from(e).ok());
            Some((bound(size.shortest_edge)?, bound(size.longest_edge)?))
        });
        let (min_pixels, max_pixels) = match (bounds, raw.min_pixels, raw.max_pixels) {
            (_, Some(min), Some(max)) => (min, max),
            (Some(bounds), _, _) => bounds,
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
            canvas,
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
        if let Some(canvas) = &self.canvas {
            let layout = native_canvas(width, height, canvas.base, canvas.max_size);
            let (w, h) = layout.resized;
            let resized = if (w, h) == (width, height) {
                rgb
            } else {
                image::imageops::resize(&rgb, w as u32, h as u32, self.filter)
            };
            let (canvas_w, canvas_h) = layout.canvas;
            let mut board = image::RgbImage::from_pixel(
                canvas_w as u32,
                canvas_h as u32,
                image::Rgb(canvas.background),
            );
            image::imageops::replace(
                &mut board,
                &resized,
                layout.offset.0 as i64,
                layout.offset.1 as i64,
            );
            return Ok(self.normalised(path, &board));
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
        Ok(self.normalised(path, &resized))
    }

    /// Rescaled and normalised channel-major values of `image`.
    fn normalised(&self, path: &Path, image: &image::RgbImage) -> ProcessedImage {
        let (target_w, target_h) = (image.width() as usize, image.height() as usize);
        let plane = target_h * target_w;
        let mut pixels = vec![0.0f32; 3 * plane];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                let value = pixel.0[c] as f32 * self.rescale;
                pixels[c * plane + i] = if self.normalize {
                    (value - self.mean[c]) / self.std[c]
                } else {
                    value
                };
            }
        }
        ProcessedImage {
            source: path.to_owned(),
            pixels,
            height: target_h,
            width: target_w,
        }
    }
}

impl ProcessedImage {
    /// Number of visual tokens the image becomes after the projector's merge.
    pub fn visual_tokens(&self, patch_size: usize, merge_size: usize) -> usize {
        (self.height / patch_size) * (self.width / patch_size) / (merge_size * merge_size)
    }
}
