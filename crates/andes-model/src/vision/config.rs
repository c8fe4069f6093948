//! Vision tower configurations, read from the Hugging Face `config.json` of a SigLIP2 or an
//! AIMv2 checkpoint (the vision model alone, or a full image-text model whose text tower is
//! ignored), and the one shape description the encoder is built from.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::released::{AIMV2_NAVIT, Aimv2NavitConfig, SIGLIP2_NAVIT, Siglip2NavitConfig};
use crate::error::ModelError;

/// The tower family of a released AndesVL checkpoint, told by its top-level `model_type`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReleasedTower {
    /// `andesvl-aimv2-qwen3` (AndesVL-1B, 2B, 4B).
    Aimv2,
    /// `andesvl-siglip2-qwen3` (AndesVL-0.6B).
    Siglip2,
}

/// `model_type` of a SigLIP2 vision tower.
pub const SIGLIP2_VISION: &str = "siglip2_vision_model";
/// `model_type` of an AIMv2 vision tower.
pub const AIMV2_VISION: &str = "aimv2_vision_model";

/// A SigLIP2 vision tower (`Siglip2VisionConfig`): LayerNorm, GELU MLP with biases, a learned
/// square grid of position embeddings resized to each image's patch grid (NaFlex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Siglip2VisionConfig {
    /// Width of the residual stream.
    #[serde(default = "siglip2::hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLP's inner projection.
    #[serde(default = "siglip2::intermediate_size")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "siglip2::layers")]
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    #[serde(default = "siglip2::heads")]
    pub num_attention_heads: usize,
    /// Colour channels of the input.
    #[serde(default = "channels")]
    pub num_channels: usize,
    /// Positions of the learned embedding grid (a square number: 256 is a 16×16 grid).
    #[serde(default = "siglip2::num_patches")]
    pub num_patches: usize,
    /// Side of a square patch in pixels.
    #[serde(default = "siglip2::patch_size")]
    pub patch_size: usize,
    /// MLP activation: `gelu_pytorch_tanh` (SigLIP2) or `gelu`.
    #[serde(default = "siglip2::hidden_act")]
    pub hidden_act: String,
    /// Epsilon of every LayerNorm.
    #[serde(default = "siglip2::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// andes extension: 2D rotary embeddings on queries and keys with this base, on top of
    /// the absolute positions (absent in Hugging Face checkpoints: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_2d_theta: Option<f64>,
    /// Every other key, kept verbatim for saving.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An AIMv2 vision tower (`Aimv2VisionConfig`): RMSNorm, SwiGLU MLP, a normalised patch
/// embedding, and 2D sin-cos positions (`is_native`) or a learned grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aimv2VisionConfig {
    /// Width of the residual stream.
    #[serde(default = "aimv2::hidden_size")]
    pub hidden_size: usize,
    /// Width of the SwiGLU inner projection.
    #[serde(default = "aimv2::intermediate_size")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "aimv2::layers")]
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    #[serde(default = "aimv2::heads")]
    pub num_attention_heads: usize,
    /// Colour channels of the input.
    #[serde(default = "channels")]
    pub num_channels: usize,
    /// Training resolution; with `is_native = false` it sets the learned position grid.
    #[serde(default = "aimv2::image_size")]
    pub image_size: usize,
    /// Side of a square patch in pixels.
    #[serde(default = "aimv2::patch_size")]
    pub patch_size: usize,
    /// SwiGLU gate activation (`silu`).
    #[serde(default = "aimv2::hidden_act")]
    pub hidden_act: String,
    /// Epsilon of every RMSNorm.
    #[serde(default = "aimv2::rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Whether q/k/v/out projections carry biases.
    #[serde(default)]
    pub qkv_bias: bool,
    /// Whether the MLP projections carry biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Native-resolution checkpoint: 2D sin-cos positions instead of a learned grid.
    #[serde(default)]
    pub is_native: bool,
    /// andes extension: 2D rotary embeddings on queries and keys with this base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_2d_theta: Option<f64>,
    /// Every other key, kept verbatim for saving.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn channels() -> usize {
    3
}

mod siglip2 {
    pub fn hidden_size() -> usize {
        768
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn layers() -> usize {
        12
    }
    pub fn heads() -> usize {
        12
    }
    pub fn num_patches() -> usize {
        256
    }
    pub fn patch_size() -> usize {
        16
    }
    pub fn hidden_act() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-6
    }
}

mod aimv2 {
    pub fn hidden_size() -> usize {
        1024
    }
    pub fn intermediate_size() -> usize {
        2816
    }
    pub fn layers() -> usize {
        24
    }
    pub fn heads() -> usize {
        8
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        14
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn rms_norm_eps() -> f64 {
        1e-5
    }
}

/// A vision tower of either family, serialized with its Hugging Face `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum VisionConfig {
    /// `siglip2_vision_model`
    Siglip2(Siglip2VisionConfig),
    /// `aimv2_vision_model`
    Aimv2(Aimv2VisionConfig),
    /// The released AndesVL AIMv2 tower (`aimv2_navit_rope`).
    Aimv2Navit(Aimv2NavitConfig),
    /// The released AndesVL SigLIP2 tower (`siglip2_navit_rope`).
    Siglip2Navit(Siglip2NavitConfig),
}

/// Normalisation layers of the tower.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormKind {
    /// LayerNorm with bias (SigLIP2).
    Layer,
    /// RMSNorm (AIMv2).
    Rms,
}

/// Feed-forward block of the tower.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MlpKind {
    /// `fc2(gelu(fc1(x)))`; `tanh` selects the tanh approximation of GELU.
    Gelu {
        /// Tanh approximation (`gelu_pytorch_tanh`) rather than the exact erf form.
        tanh: bool,
    },
    /// `down(silu(gate(x)) ⊙ up(x))` (AIMv2).
    SwiGlu,
}

/// How absolute positions enter the patch embeddings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AbsolutePositions {
    /// A learned `side × side` grid, resized to each image's patch grid (the identity at the
    /// trained size).
    LearnedGrid {
        /// Side of the learned grid in patches.
        side: usize,
        /// How the grid is resized.
        resize: GridResize,
        /// Stored `[1, side², hidden]` (AndesVL's released AIMv2 tower) rather than as an
        /// embedding table `[side², hidden]`.
        batched: bool,
    },
    /// Fixed 2D sin-cos embeddings of the patch row and column (native-resolution AIMv2).
    SinCos2d,
    /// None: positions come from the rotary embedding alone.
    Absent,
}

/// How a learned position grid is resized to an image's patch grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GridResize {
    /// Antialiased bilinear interpolation (SigLIP2-NaFlex in transformers).
    AntialiasedBilinear,
    /// Bicubic interpolation (a = -0.75, half-pixel centres, edge taps clamped), as
    /// PyTorch's `F.interpolate(mode="bicubic", align_corners=False)` and
    /// `F.grid_sample(mode="bicubic", padding_mode="border")` compute it (AndesVL's released
    /// towers).
    Bicubic,
}

/// The shape of a vision tower, whatever its family: what the modules are built from.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionSpec {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's inner projection.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub layers: usize,
    /// Number of attention heads.
    pub heads: usize,
    /// Colour channels of the input.
    pub channels: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Normalisation kind and its epsilon.
    pub norm: (NormKind, f64),
    /// Feed-forward kind.
    pub mlp: MlpKind,
    /// Whether the query, key and value projections carry biases.
    pub attention_bias: bool,
    /// Whether the attention output projection carries a bias.
    pub output_bias: bool,
    /// Whether MLP projections carry biases.
    pub mlp_bias: bool,
    /// How pixels become patch vectors.
    pub patch_embedding: PatchEmbeddingKind,
    /// Absolute positions.
    pub positions: AbsolutePositions,
    /// Base of the optional 2D rotary embedding.
    pub rope_2d_theta: Option<f64>,
    /// Queries, keys and values from one `[hidden, 3·hidden]` projection (AndesVL's released
    /// AIMv2 tower) rather than three.
    pub fused_qkv: bool,
    /// Window attention in some layers (AndesVL's released AIMv2 tower); `None`: every layer
    /// attends over the whole image.
    pub windows: Option<WindowAttention>,
}

/// How pixels become patch vectors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchEmbeddingKind {
    /// A linear map of channels-last patch vectors `(row, col, channel)` (SigLIP2).
    LinearChannelsLast,
    /// A linear map of channels-first patch vectors `(channel, row, col)` (AndesVL's released
    /// SigLIP2 tower, which flattens patches as its image processor lays them out).
    LinearChannelsFirst,
    /// A stride-`patch` convolution over the image followed by an RMSNorm (AIMv2).
    ConvNormed,
}

/// Window attention as AndesVL's released AIMv2 tower computes it: the patch grid is cut
/// into `merge × merge` blocks (the projector's merge units), the blocks into squares of
/// `window × window` blocks from the top-left corner (the last row and column of squares
/// may be smaller), and a patch attends only to patches of its square, except in
/// `full_layers`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowAttention {
    /// Side of a merge unit in patches (`hidden_stride`).
    pub merge: usize,
    /// Side of a window in merge units (`window_size / hidden_stride / patch_size`).
    pub window: usize,
    /// Layers that attend over the whole image (`fullatt_block_indexes`).
    pub full_layers: Vec<usize>,
}

impl WindowAttention {
    /// The window of the patch at `(row, col)`, as `(window row, window column)`.
    pub fn window_of(&self, row: usize, col: usize) -> (usize, usize) {
        let side = self.merge * self.window;
        (row / side, col / side)
    }
}

impl VisionConfig {
    /// Reads the vision tower's configuration from a `config.json`: a vision model's own, or
    /// the `vision_config` section of a full SigLIP2 / AIMv2 model or of an AndesVL model.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: path.to_owned(),
                key: String::new(),
                message: format!("not JSON: {e}"),
            })?;
        let model_type = value.get("model_type").and_then(|v| v.as_str());
        match model_type {
            Some(kind) if crate::andesvl::is_andesvl(kind) => {
                Ok(crate::andesvl::AndesVLConfig::from_file(path)?.vision_config)
            }
            Some("siglip2" | "aimv2") => {
                let section = value.get("vision_config").cloned().unwrap_or_default();
                let family = if model_type == Some("siglip2") {
                    SIGLIP2_VISION
                } else {
                    AIMV2_VISION
                };
                Self::from_value(section, Some(family), path, "vision_config.")
            }
            _ => Self::from_value(value, None, path, ""),
        }
    }

    /// Parses one tower's section; `family` is implied by an enclosing full model (whose
    /// `vision_config` may omit `model_type`); `prefix` labels keys in errors.
    pub fn from_value(
        value: serde_json::Value,
        family: Option<&str>,
        path: &Path,
        prefix: &str,
    ) -> Result<Self, ModelError> {
        let declared = value.get("model_type").and_then(|v| v.as_str());
        let config = match declared.or(family) {
            Some(SIGLIP2_VISION) => Self::Siglip2(parse(value, path, prefix)?),
            Some(AIMV2_VISION) => Self::Aimv2(parse(value, path, prefix)?),
            other => {
                return Err(ModelError::Config {
                    path: path.to_owned(),
                    key: format!("{prefix}model_type"),
                    message: format!(
                        "found {other:?}; expected a vision tower: \"{SIGLIP2_VISION}\" or \
                         \"{AIMV2_VISION}\" (or a full \"siglip2\" / \"aimv2\" model)"
                    ),
                });
            }
        };
        config.validate(path, prefix)?;
        Ok(config)
    }

    /// Parses the `vision_config` section of a released AndesVL checkpoint, whose family
    /// the enclosing model's `model_type` gives.
    pub fn from_released(
        value: serde_json::Value,
        tower: ReleasedTower,
        path: &Path,
        prefix: &str,
    ) -> Result<Self, ModelError> {
        let config = match tower {
            ReleasedTower::Aimv2 => Self::Aimv2Navit(parse(value, path, prefix)?),
            ReleasedTower::Siglip2 => Self::Siglip2Navit(parse(value, path, prefix)?),
        };
        config.validate(path, prefix)?;
        Ok(config)
    }

    /// The family-independent shape.
    pub fn spec(&self) -> VisionSpec {
        match self {
            Self::Siglip2(c) => VisionSpec {
                hidden_size: c.hidden_size,
                intermediate_size: c.intermediate_size,
                layers: c.num_hidden_layers,
                heads: c.num_attention_heads,
                channels: c.num_channels,
                patch_size: c.patch_size,
                norm: (NormKind::Layer, c.layer_norm_eps),
                mlp: MlpKind::Gelu {
                    tanh: c.hidden_act == "gelu_pytorch_tanh",
                },
                attention_bias: true,
                output_bias: true,
                mlp_bias: true,
                patch_embedding: PatchEmbeddingKind::LinearChannelsLast,
                positions: AbsolutePositions::LearnedGrid {
                    side: (c.num_patches as f64).sqrt().round() as usize,
                    resize: GridResize::AntialiasedBilinear,
                    batched: false,
                },
                rope_2d_theta: c.rope_2d_theta,
                fused_qkv: false,
                windows: None,
            },
            Self::Aimv2(c) => VisionSpec {
                hidden_size: c.hidden_size,
                intermediate_size: c.intermediate_size,
                layers: c.num_hidden_layers,
                heads: c.num_attention_heads,
                channels: c.num_channels,
                patch_size: c.patch_size,
                norm: (NormKind::Rms, c.rms_norm_eps),
                mlp: MlpKind::SwiGlu,
                attention_bias: c.qkv_bias,
                output_bias: c.qkv_bias,
                mlp_bias: c.mlp_bias,
                patch_embedding: PatchEmbeddingKind::ConvNormed,
                positions: if c.is_native {
                    AbsolutePositions::SinCos2d
                } else {
                    AbsolutePositions::LearnedGrid {
                        side: c.image_size / c.patch_size,
                        resize: GridResize::AntialiasedBilinear,
                        batched: false,
                    }
                },
                rope_2d_theta: c.rope_2d_theta,
                fused_qkv: false,
                windows: None,
            },
            Self::Aimv2Navit(c) => c.spec(),
            Self::Siglip2Navit(c) => c.spec(),
        }
    }

    /// The Hugging Face `model_type` of the tower.
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Siglip2(_) => SIGLIP2_VISION,
            Self::Aimv2(_) => AIMV2_VISION,
            Self::Aimv2Navit(_) => AIMV2_NAVIT,
            Self::Siglip2Navit(_) => SIGLIP2_NAVIT,
        }
    }

    /// The tower's section as written in `config.json` (with its `model_type`).
    pub fn to_value(&self) -> serde_json::Value {
        let mut value = match self {
            Self::Siglip2(c) => serde_json::to_value(c),
            Self::Aimv2(c) => serde_json::to_value(c),
            Self::Aimv2Navit(c) => serde_json::to_value(c),
            Self::Siglip2Navit(c) => serde_json::to_value(c),
        }
        .expect("the config serializes");
        value["model_type"] = self.model_type().into();
        value
    }

    fn validate(&self, path: &Path, prefix: &str) -> Result<(), ModelError> {
        let error = |key: &str, message: String| ModelError::Config {
            path: path.to_owned(),
            key: format!("{prefix}{key}"),
            message,
        };
        let fail = |key: &str, message: String| Err(error(key, message));
        let spec = self.spec();
        if spec.hidden_size == 0 || spec.heads == 0 || !spec.hidden_size.is_multiple_of(spec.heads)
        {
            return fail(
                "num_attention_heads",
                format!(
                    "{} heads must divide hidden_size = {}",
                    spec.heads, spec.hidden_size
                ),
            );
        }
        if spec.patch_size == 0 {
            return fail("patch_size", "must be at least 1".into());
        }
        let head_dim = spec.hidden_size / spec.heads;
        if spec.rope_2d_theta.is_some() && !head_dim.is_multiple_of(4) {
            return fail(
                "rope_2d_theta",
                format!("2D rotary embeddings need head_dim divisible by 4, got {head_dim}"),
            );
        }
        match self {
            Self::Siglip2(c) => {
                let side = (c.num_patches as f64).sqrt().round() as usize;
                if side * side != c.num_patches || side == 0 {
                    return fail(
                        "num_patches",
                        format!("{} is not a square grid of positions", c.num_patches),
                    );
                }
                if !matches!(c.hidden_act.as_str(), "gelu_pytorch_tanh" | "gelu") {
                    return fail(
                        "hidden_act",
                        format!("`{}`: expected gelu_pytorch_tanh or gelu", c.hidden_act),
                    );
                }
            }
            Self::Aimv2(c) => {
                if c.hidden_act != "silu" {
                    return fail(
                        "hidden_act",
                        format!("`{}`: AIMv2's SwiGLU expects silu", c.hidden_act),
                    );
                }
                if c.is_native && !c.hidden_size.is_multiple_of(4) {
                    return fail(
                        "hidden_size",
                        "2D sin-cos positions need hidden_size divisible by 4".into(),
                    );
                }
                if !c.is_native && (c.image_size == 0 || !c.image_size.is_multiple_of(c.patch_size))
                {
                    return fail(
                        "image_size",
                        format!(
                            "{} is not a multiple of patch_size = {}",
                            c.image_size, c.patch_size
                        ),
                    );
                }
            }
            Self::Aimv2Navit(c) => c.validate(&error)?,
            Self::Siglip2Navit(c) => c.validate(&error)?,
        }
        Ok(())
    }
}

fn parse<T: DeserializeOwned>(
    value: serde_json::Value,
    path: &Path,
    prefix: &str,
) -> Result<T, ModelError> {
    serde_path_to_error::deserialize(value).map_err(|e| ModelError::Config {
        path: path.to_owned(),
        key: format!("{prefix}{}", e.path()),
        message: e.inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<VisionConfig, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        VisionConfig::from_file(&path)
    }

    #[test]
    fn full_siglip2_model_yields_its_vision_tower_with_defaults() {
        let config = read(
            r#"{"model_type": "siglip2", "text_config": {"vocab_size": 10},
                "vision_config": {"hidden_size": 32, "num_attention_heads": 4}}"#,
        )
        .unwrap();
        let spec = config.spec();
        assert_eq!((spec.hidden_size, spec.heads, spec.patch_size), (32, 4, 16));
        assert_eq!(
            spec.positions,
            AbsolutePositions::LearnedGrid {
                side: 16,
                resize: GridResize::AntialiasedBilinear,
                batched: false
            }
        );
        assert_eq!(spec.mlp, MlpKind::Gelu { tanh: true });
    }

    #[test]
    fn aimv2_native_uses_sincos_and_errors_name_the_key() {
        let config = read(r#"{"model_type": "aimv2_vision_model", "is_native": true}"#).unwrap();
        assert_eq!(config.spec().positions, AbsolutePositions::SinCos2d);
        let error = read(r#"{"model_type": "siglip2_vision_model", "num_patches": 200}"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("num_patches") && error.contains("square"),
            "{error}"
        );
        let error = read(r#"{"model_type": "clip_vision_model"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("model_type") && error.contains("clip_vision_model"));
        let error = read(r#"{"model_type": "aimv2_vision_model", "patch_size": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("patch_size"), "{error}");
    }
}
