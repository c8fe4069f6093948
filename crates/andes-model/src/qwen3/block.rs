//! One Qwen3 decoder block: pre-norm attention then pre-norm MLP, each with a residual.

use burn::module::Module;
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::{Bool, Device, Tensor};

use super::Qwen3Config;
use super::attention::Attention;
use super::mlp::Mlp;
use crate::kv_cache::{LayerKvCache, Position};
use crate::rms_norm::rms_norm;
use crate::rope::RotaryEmbedding;

/// `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Grouped-query self-attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// SwiGLU feed-forward.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// Lazily-initialised block for `config`.
    pub fn new(config: &Qwen3Config, device: &Device) -> Self {
        let norm = || {
            RmsNormConfig::new(config.hidden_size)
                .with_epsilon(config.rms_norm_eps)
                .init(device)
        };
        Self {
            input_layernorm: norm(),
            self_attn: Attention::new(config, device),
            post_attention_layernorm: norm(),
            mlp: Mlp::new(config, device),
        }
    }

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]` for tokens at `position` (`mask`: the
    /// keys no query may see), storing their keys and values in `cache`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryEmbedding,
        position: &Position,
        mask: &Tensor<4, Bool>,
        cache: &mut LayerKvCache,
    ) -> Tensor<3> {
        let normed = rms_norm(&self.input_layernorm, x.clone());
        let x = x + self.self_attn.forward(normed, rope, position, mask, cache);
        x.clone()
            + self
                .mlp
                .forward(rms_norm(&self.post_attention_layernorm, x))
    }
}
