//! The gated linear unit both SwiGLU feed-forward blocks share (Qwen3's MLP and AIMv2's):
//! `silu(gate) ⊙ up`, between the gate/up projections and the down projection.

use burn::tensor::Tensor;
use burn::tensor::activation::silu;

/// `silu(gate) ⊙ up`, element-wise; both `[batch, seq, intermediate]`.
pub fn swiglu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    silu(gate) * up
}
