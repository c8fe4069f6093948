//! The SwiGLU feed-forward block of Qwen3.

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Tensor};

use super::Qwen3Config;
use crate::lora::AdaptedLinear;
use crate::precision::operand;
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

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`. Under autocast the block runs in the
    /// autocast dtype, as under torch's: the projections return it and the gated unit
    /// computes in it (half the bytes of f32 to move, and to keep for the backward pass);
    /// only the result returns to the input's dtype.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dtype = x.dtype();
        let x = operand(x);
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(swiglu(gate, self.up_proj.forward(x)))
            .cast(dtype)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::tensor::activation::silu;
    use burn::tensor::{DType, Device, TensorData};

    use super::*;
    use crate::checkpoint::load_qwen3;
    use crate::precision::{Autocast, Precision};

    /// Under bf16 autocast the block is torch autocast's: bf16 projections, the gated unit in
    /// bf16, the result back in f32; without it, f32 throughout.
    #[test]
    fn under_autocast_the_gated_unit_runs_in_bf16_and_the_result_returns_to_f32() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny-untied-mha-f32");
        let device = Device::flex();
        let (config, model) = load_qwen3(&dir, &device, DType::F32).unwrap();
        let mlp = &model.model.layers[0].mlp;
        let hidden = config.hidden_size;
        let values: Vec<f32> = (0..2 * 5 * hidden)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let x = Tensor::<3>::from_data(TensorData::new(values, [2, 5, hidden]), &device);
        let weight = |linear: &AdaptedLinear, dtype| {
            linear.base_layer.weight.val().cast(dtype).unsqueeze::<3>()
        };
        let recipe = |dtype| {
            let x = x.clone().cast(dtype);
            let gate = x.clone().matmul(weight(&mlp.gate_proj, dtype));
            let up = x.matmul(weight(&mlp.up_proj, dtype));
            (silu(gate) * up)
                .matmul(weight(&mlp.down_proj, dtype))
                .cast(DType::F32)
        };
        let flat = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
        let mixed = {
            let _autocast = Autocast::new(Precision::Bf16Mixed.autocast());
            mlp.forward(x.clone())
        };
        assert_eq!(mixed.dtype(), DType::F32);
        let (mixed, exact) = (flat(mixed), flat(mlp.forward(x.clone())));
        assert_eq!(mixed, flat(recipe(DType::BF16)));
        assert_eq!(exact, flat(recipe(DType::F32)));
        assert_ne!(mixed, exact, "autocast changed nothing");
    }
}
