//! Grouped-query self-attention with per-head RMSNorm on queries and keys (Qwen3).

use burn::module::Module;
use burn::nn::{LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Bool, Device, Tensor};

use super::Qwen3Config;
use crate::kv_cache::{LayerKvCache, Position};
use crate::lora::AdaptedLinear;
use crate::precision::operand;
use crate::rope::RotaryEmbedding;
use crate::sdpa::{
    causal_attention, causal_attention_serves, repeat_kv, scaled_dot_product_attention,
};

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

    /// `x`: `[batch, seq, hidden]`, its tokens at `position`, `mask` the keys no query may see
    /// (`Position::attention_mask`); stores this step's keys and values in `cache` and returns
    /// `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryEmbedding,
        position: &Position,
        mask: &Tensor<4, Bool>,
        cache: &mut LayerKvCache,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let split_heads = |t: Tensor<3>, heads: usize| {
            t.reshape([batch, seq, heads, self.head_dim])
                .swap_dims(1, 2)
        };
        // As under torch's autocast: the projections read and return the autocast dtype. The
        // query and key norms and RoPE compute in f32 and round once, to the projections'
        // dtype, which attention reads.
        let dtype = x.dtype();
        let x = operand(x);
        let q = split_heads(self.q_proj.forward(x.clone()), self.heads);
        let k = split_heads(self.k_proj.forward(x.clone()), self.kv_heads);
        let v = split_heads(self.v_proj.forward(x), self.kv_heads);
        let q = rope.normalise_and_rotate(&self.q_norm, q, position);
        let k = rope.normalise_and_rotate(&self.k_norm, k, position);
        let (k, v) = cache.append(k, v, position);

        let group = self.heads / self.kv_heads;
        let context = attend(q, k, v, group, position, mask)
            .swap_dims(1, 2)
            .reshape([batch, seq, self.heads * self.head_dim]);
        self.o_proj.forward(context).cast(dtype)
    }
}

/// `softmax(q·kᵀ/√d)·v` on autocast operands, the context in the autocast dtype (the output
/// projection reads it so), the softmax always in f32. `q` `[b, h, s_q, d]`, `k`/`v` `[b, h /
/// group, s_k, d]`; `mask` (`[b or 1, 1, s_q, s_k]`) marks the keys each query may not see.
/// Causal attention after a host-known position runs as flash attention where that serves
/// ([`causal_attention`]: keys not repeated, no scores kept); otherwise as one differentiable
/// operation over the mask that keeps only the probabilities ([`scaled_dot_product_attention`]).
fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    group: usize,
    position: &Position,
    mask: &Tensor<4, Bool>,
) -> Tensor<4> {
    let [batch, heads, seq_q, head_dim] = q.dims();
    let seq_k = k.dims()[2];
    let scale = 1.0 / (head_dim as f64).sqrt();
    let (q, k, v) = (operand(q), operand(k), operand(v));
    if let Position::Start(start) = position
        && causal_attention_serves(&q)
    {
        return causal_attention(q, k, v, *start, scale);
    }
    let (k, v) = (repeat_kv(k, group), repeat_kv(v, group));
    let mask = mask.clone().expand([batch, heads, seq_q, seq_k]);
    scaled_dot_product_attention(q, k, v, mask, scale)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::tensor::{DType, TensorData};

    use crate::checkpoint::load_qwen3;
    use crate::precision::{Autocast, Precision};

    fn logits(autocast: Option<DType>, split: usize) -> Vec<f32> {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny-untied-mha-f32");
        let device = burn::tensor::Device::flex();
        let (_, model) = load_qwen3(&dir, &device, DType::F32).unwrap();
        let ids: Vec<i64> = (0..12).map(|i| (i * 37 + 5) % 500).collect();
        let tokens = |range: std::ops::Range<usize>| {
            let part = ids[range.clone()].to_vec();
            super::Tensor::<2, burn::tensor::Int>::from_data(
                TensorData::new(part, [1, range.len()]),
                &device,
            )
        };
        let _autocast = Autocast::new(autocast);
        let mut cache = model.new_cache();
        let mut parts = Vec::new();
        for range in [0..split, split..ids.len()]
            .into_iter()
            .filter(|r| !r.is_empty())
        {
            let out = model.forward(tokens(range), &mut cache).unwrap();
            parts.extend(
                out.into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap(),
            );
        }
        parts
    }

    #[test]
    fn mixed_attention_tracks_f32_and_continues_a_cached_prompt() {
        let exact = logits(None, 12);
        let mixed = logits(Precision::Bf16Mixed.autocast(), 12);
        let continued = logits(Precision::Bf16Mixed.autocast(), 7);
        let gap = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        let scale = exact.iter().map(|x| x.abs()).fold(0.0, f32::max);
        assert!(mixed != exact, "autocast changed nothing");
        assert!(
            gap(&mixed, &exact) < 0.05 * scale,
            "{} vs {scale}",
            gap(&mixed, &exact)
        );
        // The continuation's queries sit at the cache's end: the causal mask must align there.
        assert!(
            gap(&continued, &mixed) < 0.02 * scale,
            "{}",
            gap(&continued, &mixed)
        );
    }
}
