//! The SwiGLU feed-forward block of Qwen3.

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Tensor};

use super::Qwen3Config;
use crate::lora::AdaptedLinear;
use crate::swiglu::swiglu;

/// `down(silu(gate(x)) ⊙ up(x))`, no biases; each projection may carry LoRA adapters.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[hidden, intermediate]`
    pub gate_proj: AdaptedLinear,
    /// `[hidden, intermediate]`
    pub up_proj: AdaptedLinear,
    /// `[intermediate, hidden]`
    pub down_proj: AdaptedLinear,
}

impl Mlp {
    /// Lazily-initialised MLP for `config`.
    pub fn new(config: &Qwen3Config, device: &Device) -> Self {
        let linear = |d_in, d_out| {
            AdaptedLinear::new(LinearConfig::new(d_in, d_out).with_bias(false).init(device))
        };
        Self {
            gate_proj: linear(config.hidden_size, config.intermediate_size),
            up_proj: linear(config.hidden_size, config.intermediate_size),
            down_proj: linear(config.intermediate_size, config.hidden_size),
        }
    }

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(swiglu(gate, self.up_proj.forward(x)))
    }
}
