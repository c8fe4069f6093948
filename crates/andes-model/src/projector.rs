//! The vision-language projector of AndesVL: pixel shuffle (each `m × m` neighbourhood of
//! patch features becomes one token of `m²` times the width, `m²` times fewer visual tokens)
//! then a two-layer MLP into the language model's hidden size.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The `projector` section of an AndesVL `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Side of the patch neighbourhood merged into one token (2: 4× fewer tokens).
    #[serde(default = "default_merge_size")]
    pub merge_size: usize,
    /// LayerNorm over the merged features before the first linear (InternVL's `mlp1`);
    /// AndesVL's released models have none.
    #[serde(default)]
    pub layer_norm: bool,
    /// Width between the two linears; absent: the merged width `m²·vision_hidden`
    /// (AndesVL's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
}

impl ProjectorConfig {
    /// Checkpoint name (inside the assembly's `mlp.`) of a parameter: the index of its layer
    /// in AndesVL's `nn.Sequential` (`[LayerNorm,] Linear, GELU, Linear`).
    pub fn checkpoint_name(&self, path_name: &str) -> String {
        let offset = usize::from(self.layer_norm);
        let (layer, param) = path_name
            .split_once('.')
            .expect("projector parameters sit one level down");
        let index = match layer {
            "layer_norm" => 0,
            "linear_1" => offset,
            "linear_2" => offset + 2,
            other => unreachable!("no projector layer `{other}`"),
        };
        format!("{index}.{param}")
    }
}

fn default_merge_size() -> usize {
    2
}

/// `linear_2(gelu(linear_1(norm(shuffle(features)))))`, the norm optional.
#[derive(Module, Debug)]
pub struct Projector {
    /// Optional LayerNorm over the merged width.
    pub layer_norm: Option<LayerNorm>,
    /// Merged width → intermediate.
    pub linear_1: Linear,
    /// Intermediate → language-model hidden size.
    pub linear_2: Linear,
    merge_size: usize,
}

impl Projector {
    /// A lazily-initialised projector from vision width `vision_hidden` to `text_hidden`.
    pub fn new(
        config: &ProjectorConfig,
        vision_hidden: usize,
        text_hidden: usize,
        device: &Device,
    ) -> Self {
        let merged = config.merge_size * config.merge_size * vision_hidden;
        let inner = config.intermediate_size.unwrap_or(merged);
        Self {
            layer_norm: config
                .layer_norm
                .then(|| LayerNormConfig::new(merged).with_epsilon(1e-5).init(device)),
            linear_1: LinearConfig::new(merged, inner).init(device),
            linear_2: LinearConfig::new(inner, text_hidden).init(device),
            merge_size: config.merge_size,
        }
    }

    /// Side of the merged neighbourhood.
    pub fn merge_size(&self) -> usize {
        self.merge_size
    }

    /// Language-model embeddings `[batch, rows·cols/m², text_hidden]` of patch features
    /// `[batch, rows·cols, vision_hidden]` laid out row-major on a `rows × cols` grid.
    pub fn forward(
        &self,
        features: Tensor<3>,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<3>, ModelError> {
        let merged = pixel_shuffle(features, rows, cols, self.merge_size)?;
        let merged = match &self.layer_norm {
            Some(norm) => norm.forward(merged),
            None => merged,
        };
        Ok(self.linear_2.forward(gelu(self.linear_1.forward(merged))))
    }
}

/// Merges each `m × m` block of a row-major `rows × cols` grid of features into one vector,
/// blocks in row-major order, the `m²` features of a block concatenated row by row:
/// `[batch, rows·cols, d]` → `[batch, rows·cols/m², m²·d]` (AndesVL's order).
pub fn pixel_shuffle(
    features: Tensor<3>,
    rows: usize,
    cols: usize,
    m: usize,
) -> Result<Tensor<3>, ModelError> {
    let [batch, patches, dim] = features.dims();
    if patches != rows * cols || !rows.is_multiple_of(m) || !cols.is_multiple_of(m) {
        return Err(ModelError::InvalidInput(format!(
            "pixel shuffle by {m} needs a grid whose sides are multiples of {m}, holding all \
             {patches} patches; got {rows}×{cols}"
        )));
    }
    Ok(features
        .reshape([batch, rows / m, m, cols / m, m * dim])
        .swap_dims(2, 3)
        .reshape([batch, rows * cols / (m * m), m * m * dim]))
}
