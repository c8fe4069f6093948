//! Patch embedding plus absolute positions, for one batch of same-size images.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};

use super::config::{AbsolutePositions, VisionSpec};
use super::positions::{resize_grid, sincos_2d};

/// How pixels become patch vectors.
#[derive(Module, Debug)]
pub enum PatchEmbedding {
    /// A linear map of channels-last patch vectors `(row, col, channel)` (SigLIP2).
    Linear(Linear),
    /// A stride-`patch` convolution over the image (AIMv2).
    Conv(Conv2d),
}

/// `[batch, channels, H, W]` pixels → `[batch, patches, hidden]` embeddings, patches in
/// row-major order of the `H/patch × W/patch` grid.
#[derive(Module, Debug)]
pub struct VisionEmbeddings {
    /// Pixels to patch vectors.
    pub patch_embedding: PatchEmbedding,
    /// RMSNorm of the patch vectors (AIMv2 only).
    pub rms_norm: Option<RmsNorm>,
    /// The learned position grid, `[side², hidden]` (absent with sin-cos positions).
    pub position_embedding: Option<Embedding>,
    patch_size: usize,
    grid_side: usize,
}

impl VisionEmbeddings {
    /// Lazily-initialised embeddings for `spec`.
    pub fn new(spec: &VisionSpec, device: &Device) -> Self {
        let (patch, hidden) = (spec.patch_size, spec.hidden_size);
        let patch_embedding = if spec.conv_patch_embedding {
            PatchEmbedding::Conv(
                Conv2dConfig::new([spec.channels, hidden], [patch, patch])
                    .with_stride([patch, patch])
                    .init(device),
            )
        } else {
            PatchEmbedding::Linear(
                LinearConfig::new(spec.channels * patch * patch, hidden).init(device),
            )
        };
        let rms_norm = spec.conv_patch_embedding.then(|| {
            RmsNormConfig::new(hidden)
                .with_epsilon(spec.norm.1)
                .init(device)
        });
        let grid_side = match spec.positions {
            AbsolutePositions::LearnedGrid { side } => side,
            AbsolutePositions::SinCos2d => 0,
        };
        let position_embedding = (grid_side > 0)
            .then(|| EmbeddingConfig::new(grid_side * grid_side, hidden).init(device));
        Self {
            patch_embedding,
            rms_norm,
            position_embedding,
            patch_size: patch,
            grid_side,
        }
    }

    /// Embeds `pixels` (`[batch, channels, H, W]`, H and W multiples of the patch size).
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [batch, channels, height, width] = pixels.dims();
        let (p, rows, cols) = (
            self.patch_size,
            height / self.patch_size,
            width / self.patch_size,
        );
        let patches = match &self.patch_embedding {
            PatchEmbedding::Linear(linear) => {
                let vectors = pixels
                    .reshape([batch, channels, rows, p, cols, p])
                    .permute([0, 2, 4, 3, 5, 1])
                    .reshape([batch, rows * cols, p * p * channels]);
                linear.forward(vectors)
            }
            PatchEmbedding::Conv(conv) => {
                let maps = conv.forward(pixels);
                let [_, hidden, _, _] = maps.dims();
                maps.reshape([batch, hidden, rows * cols]).swap_dims(1, 2)
            }
        };
        let patches = match &self.rms_norm {
            Some(norm) => norm.forward(patches),
            None => patches,
        };
        let [_, _, hidden] = patches.dims();
        let positions = match &self.position_embedding {
            Some(table) => {
                let side = self.grid_side;
                resize_grid(table.weight.val().reshape([side, side, hidden]), rows, cols)
            }
            None => sincos_2d(rows, cols, hidden, &patches.device()),
        };
        let dtype = patches.dtype();
        patches + positions.cast(dtype).unsqueeze::<3>()
    }
}
