//! The native-resolution vision transformer of AndesVL: a SigLIP2 or AIMv2 tower that keeps
//! each image's aspect ratio, so the patch grid (and the number of visual tokens) varies per
//! image. Field names follow SigLIP2's Hugging Face layout (`embeddings.patch_embedding`,
//! `encoder.layers.N.self_attn.q_proj`, `post_layernorm`); [`checkpoint_name`] translates
//! them to AIMv2's (`patch_embed`, `attention`, `rms_norm1`, `ffn`, `rms_norm`).

mod config;
mod embeddings;
mod encoder;
mod positions;
mod released;

pub use config::{
    AIMV2_VISION, AbsolutePositions, Aimv2VisionConfig, GridResize, MlpKind, NormKind,
    PatchEmbeddingKind, ReleasedTower, SIGLIP2_VISION, Siglip2VisionConfig, VisionConfig,
    VisionSpec, WindowAttention,
};
pub use embeddings::{PatchEmbedding, PositionTable, VisionEmbeddings};
pub use encoder::{GeluMlp, SwiGluMlp, VisionAttention, VisionLayer, VisionMlp, VisionNorm};
pub use positions::{antialiased_bilinear_weights, bicubic_weights, rope_2d_tables, sincos_2d};
pub use released::{AIMV2_NAVIT, Aimv2NavitConfig, SIGLIP2_NAVIT, Siglip2NavitConfig};

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};

use crate::checkpoint::{SafetensorsShards, load_parameters_named};
use crate::error::ModelError;

/// The encoder layers.
#[derive(Module, Debug)]
pub struct VisionEncoder {
    /// Pre-norm transformer layers in order.
    pub layers: Vec<VisionLayer>,
}

/// Pixels in, one feature vector per patch out (the tower's last hidden state after its
/// final norm; the pooling head of the contrastive checkpoints is not used by a VLM).
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch embedding and absolute positions.
    pub embeddings: VisionEmbeddings,
    /// The layers.
    pub encoder: VisionEncoder,
    /// Final norm.
    pub post_layernorm: VisionNorm,
    patch_size: usize,
    heads: usize,
    rope_2d_theta: Option<f64>,
    #[module(skip)]
    windows: Option<WindowAttention>,
}

impl VisionTransformer {
    /// A lazily-initialised tower for `config`.
    pub fn new(config: &VisionConfig, device: &Device) -> Self {
        let spec = config.spec();
        Self {
            embeddings: VisionEmbeddings::new(&spec, device),
            encoder: VisionEncoder {
                layers: (0..spec.layers)
                    .map(|_| VisionLayer::new(&spec, device))
                    .collect(),
            },
            post_layernorm: VisionNorm::new(&spec, device),
            patch_size: spec.patch_size,
            heads: spec.heads,
            rope_2d_theta: spec.rope_2d_theta,
            windows: spec.windows.clone(),
        }
    }

    /// Side of a patch in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }

    /// Features `[batch, rows·cols, hidden]` of same-size images `[batch, channels, H, W]`
    /// (H = rows·patch, W = cols·patch), patches in row-major order.
    pub fn forward(&self, pixels: Tensor<4>) -> Result<Tensor<3>, ModelError> {
        let [_, _, height, width] = pixels.dims();
        let p = self.patch_size;
        if !height.is_multiple_of(p) || !width.is_multiple_of(p) || height == 0 || width == 0 {
            return Err(ModelError::InvalidInput(format!(
                "image of {width}×{height} pixels is not a whole number of {p}×{p} patches"
            )));
        }
        let mut x = self.embeddings.forward(pixels);
        let [_, _, hidden] = x.dims();
        let rope = self.rope_2d_theta.map(|theta| {
            rope_2d_tables(
                height / p,
                width / p,
                hidden / self.heads,
                theta,
                &x.device(),
            )
        });
        let windows = self.windows.as_ref().map(|windows| {
            let mask = window_mask(windows, height / p, width / p, &x.device());
            (windows, mask)
        });
        for (index, layer) in self.encoder.layers.iter().enumerate() {
            let mask = windows
                .as_ref()
                .filter(|(windows, _)| !windows.full_layers.contains(&index))
                .map(|(_, mask)| mask);
            x = layer.forward(x, rope.as_ref(), mask);
        }
        Ok(self.post_layernorm.forward(x))
    }
}

/// `[1, 1, patches, patches]`, true where patch `i` (row-major) may not attend to patch `j`:
/// they lie in different windows.
fn window_mask(
    windows: &WindowAttention,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Tensor<4, Bool> {
    let window: Vec<(usize, usize)> = (0..rows * cols)
        .map(|i| windows.window_of(i / cols, i % cols))
        .collect();
    let n = window.len();
    let blocked: Vec<bool> = (0..n * n)
        .map(|ij| window[ij / n] != window[ij % n])
        .collect();
    Tensor::from_data(TensorData::new(blocked, [1, 1, n, n]), device)
}

/// The checkpoint name of a tower parameter: SigLIP2's names are the field paths; AIMv2
/// renames some segments.
pub fn checkpoint_name(config: &VisionConfig, path_name: &str) -> String {
    match config {
        VisionConfig::Siglip2(_) => path_name.to_string(),
        VisionConfig::Aimv2Navit(_) => released::aimv2_navit_name(path_name),
        VisionConfig::Siglip2Navit(_) => released::siglip2_navit_name(path_name),
        VisionConfig::Aimv2(_) => path_name
            .split('.')
            .map(|segment| match segment {
                "patch_embedding" => "patch_embed",
                "self_attn" => "attention",
                "layer_norm1" => "rms_norm1",
                "layer_norm2" => "rms_norm2",
                "mlp" => "ffn",
                "post_layernorm" => "rms_norm",
                other => other,
            })
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// Loads a Hugging Face vision tower: a `Siglip2VisionModel` / `Aimv2VisionModel` directory,
/// or a full SigLIP2 / AIMv2 model whose text tower, projections and pooling head are
/// ignored. Every tower tensor must be present with its shape, and nothing else under the
/// tower's prefix may be left over.
pub fn load_vision_tower(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(VisionConfig, VisionTransformer), ModelError> {
    let config = VisionConfig::from_file(&dir.join("config.json"))?;
    let mut shards = SafetensorsShards::open(dir)?;
    let prefix = if shards.names().any(|n| n.starts_with("vision_model.")) {
        "vision_model."
    } else {
        ""
    };
    let tower = VisionTransformer::new(&config, device);
    let tower = load_parameters_named(tower, &mut shards, dtype, &|name| {
        format!("{prefix}{}", checkpoint_name(&config, name))
    })?;
    let head = format!("{prefix}head.");
    shards.ignore_where(|name| !name.starts_with(prefix) || name.starts_with(&head));
    shards.ensure_all_used()?;
    Ok((config, tower))
}
