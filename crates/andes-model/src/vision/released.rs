//! The vision towers of OPPO's released AndesVL checkpoints, whose `config.json` nests them
//! under `vision_config` of an `andesvl-aimv2-qwen3` (1B–4B) or `andesvl-siglip2-qwen3`
//! (0.6B) model. Both are NaViT towers with 2D RoPE, read from the public modeling code
//! (`modeling_aimv2_navit_rope.py`, `siglip2_navit_rope.py`): patches arrive flattened
//! channel-first, a learned position table is bicubic-resized to each image's grid, and the
//! AIMv2 tower attends within windows except in `fullatt_block_indexes`. Keys and defaults
//! are those of the released configuration classes; a key whose value the code does not
//! implement (video frames, 1D position interpolation, a merge other than 2×2) is an error
//! naming it, before any weight is read.

use serde::{Deserialize, Serialize};

use super::config::{
    AbsolutePositions, GridResize, MlpKind, NormKind, PatchEmbeddingKind, VisionSpec,
    WindowAttention,
};
use crate::error::ModelError;

/// `vision_config.model_type` of the released AIMv2 tower (`Aimv2VisionConfig`).
pub const AIMV2_NAVIT: &str = "aimv2";
/// `vision_config.model_type` of the released SigLIP2 tower (`Siglip2VisionConfig`).
pub const SIGLIP2_NAVIT: &str = "siglip2_navit_rope_model";

/// The released AIMv2 tower (`aimv2_navit_rope`): RMSNorm, SwiGLU (`fc1` gate, `fc3` up,
/// `fc2` down), a fused `qkv` projection, 2D RoPE with base 10000, window attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aimv2NavitConfig {
    /// Width of the residual stream.
    #[serde(default = "aimv2::hidden_size")]
    pub hidden_size: usize,
    /// Width of the SwiGLU inner projection.
    #[serde(default = "aimv2::intermediate_size")]
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    #[serde(default = "aimv2::layers")]
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    #[serde(default = "aimv2::heads")]
    pub num_attention_heads: usize,
    /// Colour channels of the input.
    #[serde(default = "channels")]
    pub num_channels: usize,
    /// Pretraining resolution: the learned position table is `(image_size/patch_size)²`.
    #[serde(default = "aimv2::image_size")]
    pub image_size: usize,
    /// Side of a square patch in pixels.
    #[serde(default = "aimv2::patch_size")]
    pub patch_size: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "aimv2::rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Whether the `qkv` projection carries a bias.
    #[serde(default)]
    pub qkv_bias: bool,
    /// Whether the attention output and MLP projections carry biases.
    #[serde(default)]
    pub use_bias: bool,
    /// Side of the patch blocks the projector merges (the code supports 2).
    #[serde(default = "two")]
    pub hidden_stride: usize,
    /// Side of an attention window in pixels.
    #[serde(default = "aimv2::window_size")]
    pub window_size: usize,
    /// Blocks that attend over the whole image; `null`: every block does.
    #[serde(default)]
    pub fullatt_block_indexes: Option<Vec<usize>>,
    /// Frames per temporal patch (images only: 1).
    #[serde(default = "one")]
    pub temporal_patch_size: usize,
    /// Whether the learned position table is kept and added.
    #[serde(default)]
    pub preserve_original_pe: bool,
    /// How the position table is resized (`two_dim`: bicubic over the grid).
    #[serde(default = "aimv2::interpolate_pe_method")]
    pub interpolate_pe_method: String,
    /// Turns the 2D RoPE off.
    #[serde(default)]
    pub disable_rope: bool,
    /// Every other key, kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The released SigLIP2 tower (`siglip2_navit_rope`): LayerNorm, GELU MLP, separate q/k/v
/// projections, 2D RoPE with base `rope_theta`, attention over the whole image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Siglip2NavitConfig {
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
    /// Side of a square patch in pixels.
    #[serde(default = "siglip2::patch_size")]
    pub patch_size: usize,
    /// Positions of the learned table (a square number).
    #[serde(default = "siglip2::num_patches")]
    pub num_patches: usize,
    /// MLP activation: `gelu_pytorch_tanh` or `gelu`.
    #[serde(default = "siglip2::hidden_act")]
    pub hidden_act: String,
    /// Epsilon of every LayerNorm.
    #[serde(default = "siglip2::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Base of the 2D RoPE.
    #[serde(default = "siglip2::rope_theta")]
    pub rope_theta: f64,
    /// Whether the learned position table is kept and added.
    #[serde(default = "yes")]
    pub preserve_original_pe: bool,
    /// Every other key, kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn channels() -> usize {
    3
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn yes() -> bool {
    true
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
    pub fn rms_norm_eps() -> f64 {
        1e-5
    }
    pub fn window_size() -> usize {
        112
    }
    pub fn interpolate_pe_method() -> String {
        "one_dim".into()
    }
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
    pub fn patch_size() -> usize {
        16
    }
    pub fn num_patches() -> usize {
        256
    }
    pub fn hidden_act() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-6
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
}

/// The base of the released AIMv2 tower's 2D RoPE (fixed in its code).
const AIMV2_ROPE_THETA: f64 = 10000.0;

impl Aimv2NavitConfig {
    /// The family-independent shape.
    pub fn spec(&self) -> VisionSpec {
        let windows = self
            .fullatt_block_indexes
            .as_ref()
            .map(|full| WindowAttention {
                merge: self.hidden_stride,
                window: self.window_size / self.hidden_stride / self.patch_size,
                full_layers: full.clone(),
            });
        VisionSpec {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            channels: self.num_channels,
            patch_size: self.patch_size,
            norm: (NormKind::Rms, self.rms_norm_eps),
            mlp: MlpKind::SwiGlu,
            attention_bias: self.qkv_bias,
            output_bias: self.use_bias,
            mlp_bias: self.use_bias,
            patch_embedding: PatchEmbeddingKind::ConvNormed,
            positions: if self.preserve_original_pe {
                AbsolutePositions::LearnedGrid {
                    side: self.image_size / self.patch_size,
                    resize: GridResize::Bicubic,
                    batched: true,
                }
            } else {
                AbsolutePositions::Absent
            },
            rope_2d_theta: (!self.disable_rope).then_some(AIMV2_ROPE_THETA),
            fused_qkv: true,
            windows,
        }
    }

    /// Refuses what the released code does not compute (or this port does not).
    pub fn validate(&self, fail: &dyn Fn(&str, String) -> ModelError) -> Result<(), ModelError> {
        if self.temporal_patch_size != 1 {
            return Err(fail(
                "temporal_patch_size",
                format!(
                    "{}: video frames are not supported, only images (1)",
                    self.temporal_patch_size
                ),
            ));
        }
        check_merge(self.hidden_stride, fail)?;
        if self.preserve_original_pe {
            if self.interpolate_pe_method != "two_dim" {
                return Err(fail(
                    "interpolate_pe_method",
                    format!(
                        "`{}` is not supported: only `two_dim` (bicubic over the grid)",
                        self.interpolate_pe_method
                    ),
                ));
            }
            if self.image_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
                return Err(fail(
                    "image_size",
                    format!(
                        "{} is not a multiple of patch_size = {}",
                        self.image_size, self.patch_size
                    ),
                ));
            }
        }
        if self.fullatt_block_indexes.is_some()
            && self.window_size / self.hidden_stride / self.patch_size == 0
        {
            return Err(fail(
                "window_size",
                format!(
                    "{} pixels is less than one {}×{} block of {}-pixel patches",
                    self.window_size, self.hidden_stride, self.hidden_stride, self.patch_size
                ),
            ));
        }
        Ok(())
    }
}

impl Siglip2NavitConfig {
    /// The family-independent shape.
    pub fn spec(&self) -> VisionSpec {
        VisionSpec {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            channels: self.num_channels,
            patch_size: self.patch_size,
            norm: (NormKind::Layer, self.layer_norm_eps),
            mlp: MlpKind::Gelu {
                tanh: self.hidden_act == "gelu_pytorch_tanh",
            },
            attention_bias: true,
            output_bias: true,
            mlp_bias: true,
            patch_embedding: PatchEmbeddingKind::LinearChannelsFirst,
            positions: if self.preserve_original_pe {
                AbsolutePositions::LearnedGrid {
                    side: (self.num_patches as f64).sqrt().round() as usize,
                    resize: GridResize::Bicubic,
                    batched: false,
                }
            } else {
                AbsolutePositions::Absent
            },
            rope_2d_theta: Some(self.rope_theta),
            fused_qkv: false,
            windows: None,
        }
    }

    /// Refuses what the released code does not compute.
    pub fn validate(&self, fail: &dyn Fn(&str, String) -> ModelError) -> Result<(), ModelError> {
        let side = (self.num_patches as f64).sqrt().round() as usize;
        if self.preserve_original_pe && (side == 0 || side * side != self.num_patches) {
            return Err(fail(
                "num_patches",
                format!("{} is not a square grid of positions", self.num_patches),
            ));
        }
        if !matches!(self.hidden_act.as_str(), "gelu_pytorch_tanh" | "gelu") {
            return Err(fail(
                "hidden_act",
                format!("`{}`: expected gelu_pytorch_tanh or gelu", self.hidden_act),
            ));
        }
        Ok(())
    }
}

fn check_merge(
    hidden_stride: usize,
    fail: &dyn Fn(&str, String) -> ModelError,
) -> Result<(), ModelError> {
    if hidden_stride != 2 {
        return Err(fail(
            "hidden_stride",
            format!(
                "{hidden_stride}: the released projector merges 2×2 patches (4·hidden inputs); \
                 other strides are not supported"
            ),
        ));
    }
    Ok(())
}

/// The checkpoint name of a tower parameter in a released AIMv2 tower (under
/// `vision_encoder.`): `preprocessor.patchifier.{proj,norm}`, `preprocessor.pos_embed`,
/// `trunk.blocks.N.{norm_1,attn.qkv,attn.proj,norm_2,mlp.fc1,mlp.fc3,mlp.fc2}`,
/// `trunk.post_trunk_norm`.
pub fn aimv2_navit_name(path_name: &str) -> String {
    let renamed: Vec<&str> = path_name
        .split('.')
        .map(|segment| match segment {
            "embeddings" => "preprocessor",
            "patch_embedding" => "patchifier.proj",
            "rms_norm" => "patchifier.norm",
            "position_embedding" => "pos_embed",
            "encoder" => "trunk",
            "layers" => "blocks",
            "layer_norm1" => "norm_1",
            "layer_norm2" => "norm_2",
            "self_attn" => "attn",
            "out_proj" => "proj",
            "gate_proj" => "fc1",
            "up_proj" => "fc3",
            "down_proj" => "fc2",
            "post_layernorm" => "trunk.post_trunk_norm",
            other => other,
        })
        .collect();
    renamed.join(".")
}

/// The checkpoint name of a tower parameter in a released SigLIP2 tower (under
/// `vision_encoder.`): `vision_model.embeddings.{proj,pos_embed}`, then SigLIP2's names.
pub fn siglip2_navit_name(path_name: &str) -> String {
    let renamed: Vec<&str> = path_name
        .split('.')
        .map(|segment| match segment {
            "patch_embedding" => "proj",
            "position_embedding" => "pos_embed",
            other => other,
        })
        .collect();
    format!("vision_model.{}", renamed.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_released_modeling_code() {
        assert_eq!(
            aimv2_navit_name("encoder.layers.3.self_attn.qkv.weight"),
            "trunk.blocks.3.attn.qkv.weight"
        );
        assert_eq!(
            aimv2_navit_name("encoder.layers.0.mlp.up_proj.weight"),
            "trunk.blocks.0.mlp.fc3.weight"
        );
        assert_eq!(
            aimv2_navit_name("embeddings.rms_norm.weight"),
            "preprocessor.patchifier.norm.weight"
        );
        assert_eq!(
            aimv2_navit_name("post_layernorm.weight"),
            "trunk.post_trunk_norm.weight"
        );
        assert_eq!(
            siglip2_navit_name("embeddings.patch_embedding.bias"),
            "vision_model.embeddings.proj.bias"
        );
        assert_eq!(
            siglip2_navit_name("encoder.layers.1.self_attn.q_proj.weight"),
            "vision_model.encoder.layers.1.self_attn.q_proj.weight"
        );
    }
}
