//! One pre-norm encoder layer of the vision tower: bidirectional attention, then an MLP.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor};

use super::config::{MlpKind, NormKind, VisionSpec};
use crate::rope::rotate_half;
use crate::swiglu::swiglu;

/// LayerNorm (SigLIP2) or RMSNorm (AIMv2).
#[derive(Module, Debug)]
pub enum VisionNorm {
    /// Mean-centred, with bias.
    Layer(LayerNorm),
    /// Root-mean-square only.
    Rms(RmsNorm),
}

impl VisionNorm {
    /// The norm `spec` asks for over `hidden_size`.
    pub fn new(spec: &VisionSpec, device: &Device) -> Self {
        let (kind, eps) = spec.norm;
        match kind {
            NormKind::Layer => Self::Layer(
                LayerNormConfig::new(spec.hidden_size)
                    .with_epsilon(eps)
                    .init(device),
            ),
            NormKind::Rms => Self::Rms(
                RmsNormConfig::new(spec.hidden_size)
                    .with_epsilon(eps)
                    .init(device),
            ),
        }
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Layer(norm) => norm.forward(x),
            Self::Rms(norm) => norm.forward(x),
        }
    }
}

/// Multi-head self-attention over the patches of an image (no causal mask), queries, keys
/// and values from three projections or from one fused `qkv` (`[q | k | v]` along its
/// output, AndesVL's released AIMv2 tower).
#[derive(Module, Debug)]
pub struct VisionAttention {
    /// `[hidden, hidden]` (separate projections)
    pub q_proj: Option<Linear>,
    /// `[hidden, hidden]` (separate projections)
    pub k_proj: Option<Linear>,
    /// `[hidden, hidden]` (separate projections)
    pub v_proj: Option<Linear>,
    /// `[hidden, 3·hidden]` (fused projection)
    pub qkv: Option<Linear>,
    /// `[hidden, hidden]`
    pub out_proj: Linear,
    heads: usize,
}

impl VisionAttention {
    fn new(spec: &VisionSpec, device: &Device) -> Self {
        let hidden = spec.hidden_size;
        let linear = |d_out, bias| {
            LinearConfig::new(hidden, d_out)
                .with_bias(bias)
                .init(device)
        };
        let separate = || (!spec.fused_qkv).then(|| linear(hidden, spec.attention_bias));
        Self {
            q_proj: separate(),
            k_proj: separate(),
            v_proj: separate(),
            qkv: spec
                .fused_qkv
                .then(|| linear(3 * hidden, spec.attention_bias)),
            out_proj: linear(hidden, spec.output_bias),
            heads: spec.heads,
        }
    }

    fn project(&self, x: Tensor<3>) -> [Tensor<3>; 3] {
        if let Some(qkv) = &self.qkv {
            let [q, k, v]: [Tensor<3>; 3] = qkv
                .forward(x)
                .chunk(3, 2)
                .try_into()
                .expect("three equal chunks");
            return [q, k, v];
        }
        let project = |linear: &Option<Linear>| {
            linear
                .as_ref()
                .expect("separate projections when not fused")
                .forward(x.clone())
        };
        [
            project(&self.q_proj),
            project(&self.k_proj),
            project(&self.v_proj),
        ]
    }

    /// `[batch, patches, hidden]` → same; `rope` holds 2D rotary cos/sin tables when enabled;
    /// `mask` (`[1, 1, patches, patches]`, true = not attended) restricts attention to windows.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&(Tensor<2>, Tensor<2>)>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let [q, k, v] = self.project(x);
        let (mut q, mut k, v) = (split(q), split(k), split(v));
        if let Some((cos, sin)) = rope {
            q = rotate_half(q, cos.clone(), sin.clone());
            k = rotate_half(k, cos.clone(), sin.clone());
        }
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        let mask = mask.map(|m| m.clone().expand([batch, self.heads, seq, seq]));
        let context = attention(q, k, v, mask, None, options)
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden]);
        self.out_proj.forward(context)
    }
}

/// `fc2(gelu(fc1(x)))` (SigLIP2).
#[derive(Module, Debug)]
pub struct GeluMlp {
    /// `[hidden, intermediate]`
    pub fc1: Linear,
    /// `[intermediate, hidden]`
    pub fc2: Linear,
    tanh: bool,
}

/// `down(silu(gate(x)) ⊙ up(x))` (AIMv2).
#[derive(Module, Debug)]
pub struct SwiGluMlp {
    /// `[hidden, intermediate]`
    pub gate_proj: Linear,
    /// `[hidden, intermediate]`
    pub up_proj: Linear,
    /// `[intermediate, hidden]`
    pub down_proj: Linear,
}

/// The feed-forward block of either family.
#[derive(Module, Debug)]
pub enum VisionMlp {
    /// SigLIP2's GELU MLP.
    Gelu(GeluMlp),
    /// AIMv2's SwiGLU.
    SwiGlu(SwiGluMlp),
}

impl VisionMlp {
    fn new(spec: &VisionSpec, device: &Device) -> Self {
        let linear = |d_in, d_out| {
            LinearConfig::new(d_in, d_out)
                .with_bias(spec.mlp_bias)
                .init(device)
        };
        let (hidden, inner) = (spec.hidden_size, spec.intermediate_size);
        match spec.mlp {
            MlpKind::Gelu { tanh } => Self::Gelu(GeluMlp {
                fc1: linear(hidden, inner),
                fc2: linear(inner, hidden),
                tanh,
            }),
            MlpKind::SwiGlu => Self::SwiGlu(SwiGluMlp {
                gate_proj: linear(hidden, inner),
                up_proj: linear(hidden, inner),
                down_proj: linear(inner, hidden),
            }),
        }
    }

    /// `[batch, patches, hidden]` → same.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Gelu(mlp) => {
                let inner = mlp.fc1.forward(x);
                let inner = if mlp.tanh {
                    gelu_approximate(inner)
                } else {
                    gelu(inner)
                };
                mlp.fc2.forward(inner)
            }
            Self::SwiGlu(mlp) => {
                let gate = mlp.gate_proj.forward(x.clone());
                mlp.down_proj.forward(swiglu(gate, mlp.up_proj.forward(x)))
            }
        }
    }
}

/// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct VisionLayer {
    /// Norm before attention.
    pub layer_norm1: VisionNorm,
    /// Self-attention.
    pub self_attn: VisionAttention,
    /// Norm before the MLP.
    pub layer_norm2: VisionNorm,
    /// Feed-forward block.
    pub mlp: VisionMlp,
}

impl VisionLayer {
    /// Lazily-initialised layer for `spec`.
    pub fn new(spec: &VisionSpec, device: &Device) -> Self {
        Self {
            layer_norm1: VisionNorm::new(spec, device),
            self_attn: VisionAttention::new(spec, device),
            layer_norm2: VisionNorm::new(spec, device),
            mlp: VisionMlp::new(spec, device),
        }
    }

    /// `[batch, patches, hidden]` → same; `mask` as [`VisionAttention::forward`] takes it.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&(Tensor<2>, Tensor<2>)>,
        mask: Option<&Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(self.layer_norm1.forward(x), rope, mask);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}
