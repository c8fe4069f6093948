//! Patch embedding plus absolute positions, for one batch of same-size images.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use burn::tensor::{Device, Tensor};

use super::config::{AbsolutePositions, GridResize, PatchEmbeddingKind, VisionSpec};
use super::positions::{bicubic_resize_grid, resize_grid, sincos_2d};

/// How pixels become patch vectors.
#[derive(Module, Debug)]
pub enum PatchEmbedding {
    /// A linear map of flattened patch vectors, channels last `(row, col, channel)`
    /// (SigLIP2) or first `(channel, row, col)` (AndesVL's released SigLIP2 tower).
    Linear(Linear),
    /// A stride-`patch` convolution over the image (AIMv2).
    Conv(Conv2d),
}

/// A learned position grid, `side²` rows of `hidden`.
#[derive(Module, Debug)]
pub enum PositionTable {
    /// An embedding table `[side², hidden]` (SigLIP2).
    Embedding(Embedding),
    /// A parameter `[1, side², hidden]` (AndesVL's released AIMv2 tower).
    Batched(Param<Tensor<3>>),
}

impl PositionTable {
    /// The grid as `[side, side, hidden]`.
    fn grid(&self, side: usize) -> Tensor<3> {
        let table = match self {
            Self::Embedding(table) => table.weight.val(),
            Self::Batched(table) => table.val().squeeze_dim(0),
        };
        let [_, hidden] = table.dims();
        table.reshape([side, side, hidden])
    }
}

/// `[batch, channels, H, W]` pixels → `[batch, patches, hidden]` embeddings, patches in
/// row-major order of the `H/patch × W/patch` grid.
#[derive(Module, Debug)]
pub struct VisionEmbeddings {
    /// Pixels to patch vectors.
    pub patch_embedding: PatchEmbedding,
    /// RMSNorm of the patch vectors (AIMv2 only).
    pub rms_norm: Option<RmsNorm>,
    /// The learned position grid (absent with sin-cos positions or none).
    pub position_embedding: Option<PositionTable>,
    patch_size: usize,
    grid_side: usize,
    channels_last: bool,
    bicubic: bool,
    sincos: bool,
}

impl VisionEmbeddings {
    /// Lazily-initialised embeddings for `spec`.
    pub fn new(spec: &VisionSpec, device: &Device) -> Self {
        let (patch, hidden) = (spec.patch_size, spec.hidden_size);
        let convolution = spec.patch_embedding == PatchEmbeddingKind::ConvNormed;
        let patch_embedding = if convolution {
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
        let rms_norm = convolution.then(|| {
            RmsNormConfig::new(hidden)
                .with_epsilon(spec.norm.1)
                .init(device)
        });
        let (grid_side, bicubic, position_embedding) = match spec.positions {
            AbsolutePositions::LearnedGrid {
                side,
                resize,
                batched,
            } => {
                let table = if batched {
                    PositionTable::Batched(
                        Initializer::Zeros.init([1, side * side, hidden], device),
                    )
                } else {
                    PositionTable::Embedding(EmbeddingConfig::new(side * side, hidden).init(device))
                };
                (side, resize == GridResize::Bicubic, Some(table))
            }
            AbsolutePositions::SinCos2d | AbsolutePositions::Absent => (0, false, None),
        };
        Self {
            patch_embedding,
            rms_norm,
            position_embedding,
            patch_size: patch,
            grid_side,
            channels_last: spec.patch_embedding == PatchEmbeddingKind::LinearChannelsLast,
            bicubic,
            sincos: spec.positions == AbsolutePositions::SinCos2d,
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
                let order = if self.channels_last {
                    [0, 2, 4, 3, 5, 1]
                } else {
                    [0, 2, 4, 1, 3, 5]
                };
                let vectors = pixels
                    .reshape([batch, channels, rows, p, cols, p])
                    .permute(order)
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
            Some(table) if self.bicubic => {
                bicubic_resize_grid(table.grid(self.grid_side), rows, cols)
            }
            Some(table) => resize_grid(table.grid(self.grid_side), rows, cols),
            None if self.sincos => sincos_2d(rows, cols, hidden, &patches.device()),
            None => return patches,
        };
        let dtype = patches.dtype();
        patches + positions.cast(dtype).unsqueeze::<3>()
    }
}
