//! Grouped-query self-attention with per-head RMSNorm on queries and keys (Qwen3).

use burn::module::Module;
use burn::nn::{LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use super::Qwen3Config;
use crate::kv_cache::{LayerKvCache, Position};
use crate::lora::AdaptedLinear;
use crate::precision::operand;
use crate::rope::RotaryEmbedding;

/// `softmax(q·kᵀ/√d)·v` over `num_attention_heads` query heads sharing
/// `num_key_value_heads` key/value heads; q and k are RMS-normalised per head before RoPE.
/// The four projections may carry LoRA adapters ([`AdaptedLinear`]).
#[derive(Module, Debug)]
pub struct Attention {
    /// `[hidden, heads·head_dim]`
    pub q_proj: AdaptedLinear,
    /// `[hidden, kv_heads·head_dim]`
    pub k_proj: AdaptedLinear,
    /// `[hidden, kv_heads·head_dim]`
    pub v_proj: AdaptedLinear,
    /// `[heads·head_dim, hidden]`
    pub o_proj: AdaptedLinear,
    /// RMSNorm over each query head's `head_dim`.
    pub q_norm: RmsNorm,
    /// RMSNorm over each key head's `head_dim`.
    pub k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Lazily-initialised attention for `config` (weights materialise on first use or load).
    pub fn new(config: &Qwen3Config, device: &Device) -> Self {
        let hidden = config.hidden_size;
        let (heads, kv_heads, head_dim) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let linear = |d_in, d_out| {
            AdaptedLinear::new(
                LinearConfig::new(d_in, d_out)
                    .with_bias(config.attention_bias)
                    .init(device),
            )
        };
        let norm = || {
            RmsNormConfig::new(head_dim)
                .with_epsilon(config.rms_norm_eps)
                .init(device)
        };
        Self {
            q_proj: linear(hidden, heads * head_dim),
            k_proj: linear(hidden, kv_heads * head_dim),
            v_proj: linear(hidden, kv_heads * head_dim),
            o_proj: linear(heads * head_dim, hidden),
            q_norm: norm(),
            k_norm: norm(),
            heads,
            kv_heads,
            head_dim,
        }
    }

    /// `x`: `[batch, seq, hidden]`, its tokens at `position`; stores this step's keys and
    /// values in `cache` and returns `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryEmbedding,
        position: &Position,
        cache: &mut LayerKvCache,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let split_heads = |t: Tensor<3>, heads: usize| {
            t.reshape([batch, seq, heads, self.head_dim])
                .swap_dims(1, 2)
        };
        let q = self
            .q_norm
            .forward(split_heads(self.q_proj.forward(x.clone()), self.heads));
        let k = self
            .k_norm
            .forward(split_heads(self.k_proj.forward(x.clone()), self.kv_heads));
        let v = split_heads(self.v_proj.forward(x), self.kv_heads);
        let q = rope.apply(q, position);
        let k = rope.apply(k, position);
        let (k, v) = cache.append(k, v, position);

        let group = self.heads / self.kv_heads;
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: seq > 1,
        };
        let dtype = q.dtype();
        let context = attention(
            operand(q),
            operand(repeat_kv(k, group)),
            operand(repeat_kv(v, group)),
            position.mask(self.heads),
            None,
            options,
        )
        .cast(dtype);
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, seq, self.heads * self.head_dim]);
        self.o_proj.forward(context)
    }
}

/// Repeats each key/value head `group` times (`[b, kv, t, d]` → `[b, kv·group, t, d]`), query
/// head `h` reading key/value head `h / group`, as transformers' `repeat_kv` does.
fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [batch, kv_heads, seq, head_dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, group, seq, head_dim])
        .reshape([batch, kv_heads * group, seq, head_dim])
}
