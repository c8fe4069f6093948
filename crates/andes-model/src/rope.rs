//! Rotary position embeddings in the Hugging Face "rotate half" layout, as Qwen3 uses them.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kv_cache::Position;

/// Rotary settings as Hugging Face writes them: `rope_scaling` (transformers 4) or
/// `rope_parameters` (transformers 5, which also carries `rope_theta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `default` (plain RoPE) or `linear` (positions divided by `factor`); others are refused.
    #[serde(alias = "type", default = "default_rope_type")]
    pub rope_type: String,
    /// Scaling factor for `linear`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Rotary base (only in the transformers 5 `rope_parameters` layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Other keys of the section, kept for saving.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_rope_type() -> String {
    "default".into()
}

impl Default for RopeScaling {
    fn default() -> Self {
        Self {
            rope_type: default_rope_type(),
            factor: None,
            rope_theta: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl RopeScaling {
    /// Checks the kind is one andes implements; errors are `(key, message)` for the caller to
    /// attach to a file.
    pub fn validated(&self, section: &str) -> Result<Self, (String, String)> {
        match self.rope_type.as_str() {
            "default" => Ok(self.clone()),
            "linear" => match self.factor {
                Some(f) if f > 0.0 => Ok(self.clone()),
                other => Err((
                    format!("{section}.factor"),
                    format!("found {other:?}, expected a positive number for linear scaling"),
                )),
            },
            other => Err((
                format!("{section}.rope_type"),
                format!("{other:?} is not supported; expected \"default\" or \"linear\""),
            )),
        }
    }

    /// Divisor applied to every inverse frequency.
    fn frequency_divisor(&self) -> f32 {
        match self.rope_type.as_str() {
            "linear" => self.factor.unwrap_or(1.0) as f32,
            _ => 1.0,
        }
    }
}

/// Precomputed cos/sin tables, `[max_positions, head_dim]` each, computed in f32 exactly as
/// transformers does (inverse frequencies `base^(-2i/d)`, duplicated halves).
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl RotaryEmbedding {
    /// Builds the tables for positions `0..max_positions`.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        scaling: &RopeScaling,
        device: &Device,
    ) -> Self {
        let inv_freq = inverse_frequencies(head_dim, theta, scaling);
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for position in 0..max_positions {
            for _half in 0..2 {
                for f in &inv_freq {
                    let angle = position as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [max_positions, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Longest sequence (prompt plus generated tokens) the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x` (`[batch, heads, seq, head_dim]`) whose tokens sit at `position`.
    pub fn apply(&self, x: Tensor<4>, position: &Position) -> Tensor<4> {
        let [_, _, seq, _] = x.dims();
        let (cos, sin) = match position {
            Position::Start(start) => (
                self.cos.clone().narrow(0, *start, seq),
                self.sin.clone().narrow(0, *start, seq),
            ),
            Position::Device { index, .. } => (
                self.cos.clone().select(0, index.clone()),
                self.sin.clone().select(0, index.clone()),
            ),
        };
        rotate_half(x, cos, sin)
    }
}

/// The `head_dim / 2` inverse frequencies `base^(-2i/d)` (divided by a linear scaling's
/// factor), in f32 as transformers computes them; the angle of position `p` is `p · fᵢ`.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base = theta as f32;
    (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32) / scaling.frequency_divisor())
        .collect()
}

/// `x·cos + rotate_half(x)·sin` for `x` `[batch, heads, seq, head_dim]` and tables
/// `[seq, head_dim]`, where `rotate_half([x1, x2]) = [-x2, x1]` (the transformers convention,
/// shared by the text model's 1D and the vision tower's 2D rotary embeddings).
pub fn rotate_half(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
    let [_, _, _, head_dim] = x.dims();
    let dtype = x.dtype();
    let cos: Tensor<4> = cos.cast(dtype).unsqueeze();
    let sin: Tensor<4> = sin.cast(dtype).unsqueeze();
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}
