//! Qwen3's per-head query and key RMSNorm followed by the rotary rotation, as one
//! differentiable operation.
//!
//! As two operations ([`rms_norm`] and [`rotate`]) the queries and keys of every layer went
//! through a cast to f32, a copy of the head-transposed projection, the norm, the rotation and
//! a cast back to bf16 for attention, and the backward pass through as many again plus the
//! norm's weight gradient as a reduction over every row: about a millisecond a layer of the
//! 0.6B bf16-mixed step on an H100, a quarter of the step (a kernel trace of `andes train`,
//! BENCHMARKS.md). Here the forward pass is one read of the projection (in its own dtype and
//! layout) and one write, and the backward pass one more of each:
//!
//! `n = x·r`, `r = (mean(x²) + ε)^(-1/2)`; `u = γ ⊙ n`; `y = R·u`, the rotation of
//! `rotation.rs` (pairs `(j, j + h)`, `h` half the head);
//! `du = Rᵀ·dy`; `dγ = Σ_rows du ⊙ n`; `g = du ⊙ γ`; `dx = r·g − (r³/d)·(g·x)·x`.
//!
//! Computed in f32 and rounded once, to `x`'s dtype (bf16 under autocast, the dtype attention
//! reads: transformers' eager Qwen3 rounds the normalised row before `γ` and again at
//! attention's input). `ANDES_NORM_ROTATION=composed` runs the two operations (each as
//! `ANDES_NORM` and `ANDES_ROTATION` say) on `x` in f32.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::nn::RmsNorm;
use burn::tensor::{DType, FloatDType, Tensor};

use crate::composed::{Form, form};
use crate::rms_norm::{composed_grad_input, composed_rms_norm, grad_gamma, rms_norm};
use crate::rotation::{composed_rotation, rotate};

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
pub mod cube;

/// `rotate(norm(x), cos, sin)` for `x` `[batch, heads, seq, head_dim]` (any layout) and tables
/// that broadcast against it (`[batch or 1, 1, seq, head_dim]`), returned in `x`'s dtype: one
/// operation, or the two where `ANDES_NORM_ROTATION=composed` asks.
pub fn norm_rotation(norm: &RmsNorm, x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [width] = norm.gamma.shape().dims();
    assert_eq!(x.dims()[3], width, "RMSNorm over {width} features");
    match form("ANDES_NORM_ROTATION", Form::OneOperation) {
        Form::OneOperation => Tensor::from_dispatch(<Dispatch as NormRotationCore>::norm_rotation(
            x.into_dispatch(),
            norm.gamma.val().into_dispatch(),
            cos.detach().into_dispatch(),
            sin.detach().into_dispatch(),
            norm.epsilon,
        )),
        Form::Composed => {
            let dtype = x.dtype();
            rotate(rms_norm(norm, x.cast(DType::F32)), cos, sin).cast(dtype)
        }
    }
}

/// The operation on each backend: composed of the norm's and the rotation's own forms by
/// default, one kernel a pass on CubeCL backends; under autodiff the backward of the module
/// documentation.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Autodiff
)]
pub trait NormRotationCore: Backend {
    /// `R·(γ ⊙ x·r)` of the module documentation; computed in f32, returned in `x`'s dtype.
    #[fusion(dtype = x, shape = x)]
    fn norm_rotation(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        composed_norm_rotation::<Self>(x, gamma, cos, sin, epsilon)
    }

    /// `(dx, dγ)` from the output's gradient `grad` (`x`'s shape): `dx` in `x`'s dtype, `dγ`
    /// (`[head_dim]`) in `γ`'s.
    #[fusion(meta = |x, gamma, _cos, _sin, _grad, _epsilon| (x.clone(), gamma.clone()))]
    fn norm_rotation_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(x, gamma, cos, sin, grad, epsilon)
    }
}

impl NormRotationCore for burn::backend::Flex {}

/// [`NormRotationCore::norm_rotation`] as the norm's and the rotation's composed forms.
fn composed_norm_rotation<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(x.dtype());
    let normalised = composed_rms_norm::<B>(B::float_cast(x, FloatDType::F32), gamma, epsilon);
    B::float_cast(composed_rotation::<B>(normalised, cos, sin, false), dtype)
}

/// [`NormRotationCore::norm_rotation_backward`] composed: the transposed rotation, then the
/// norm's gradients.
fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = FloatDType::from(x.dtype());
    let x = B::float_cast(x, FloatDType::F32);
    let grad = composed_rotation::<B>(B::float_cast(grad, FloatDType::F32), cos, sin, true);
    let gamma_dtype = FloatDType::from(gamma.dtype());
    let grad_gamma = grad_gamma::<B>(x.clone(), grad.clone(), epsilon, gamma_dtype);
    let grad_x = composed_grad_input::<B>(x, gamma, grad, epsilon);
    (B::float_cast(grad_x, dtype), grad_gamma)
}

/// The backward step; its state is `(x, γ, cos, sin, ε)` of the inner backend.
#[derive(Debug)]
struct NormRotationBackward;

type State<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    f64,
);

impl<B: NormRotationCore> Backward<B, 2> for NormRotationBackward {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node] = ops.parents;
        let (x, gamma, cos, sin, epsilon) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (grad_x, grad_gamma) = B::norm_rotation_backward(x, gamma, cos, sin, grad, epsilon);
        if let Some(node) = gamma_node {
            grads.register::<B>(node.id, grad_gamma);
        }
        if let Some(node) = x_node {
            grads.register::<B>(node.id, grad_x);
        }
    }
}

impl<B: Backend + NormRotationCore, C: CheckpointStrategy> NormRotationCore for Autodiff<B, C> {
    fn norm_rotation(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (gamma, gamma_node) = gamma.into_parts();
        let (cos, sin) = (cos.into_parts().0, sin.into_parts().0);
        match NormRotationBackward
            .prepare::<C>([x_node, gamma_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output =
                    B::norm_rotation(x.clone(), gamma.clone(), cos.clone(), sin.clone(), epsilon);
                prep.finish((x, gamma, cos, sin, epsilon), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::norm_rotation(x, gamma, cos, sin, epsilon)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::RmsNormConfig;
    use burn::tensor::Device;

    use super::*;
    use crate::test_tensors::{filled, values};

    fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            gap <= tolerance * scale,
            "{what}: gap {gap} at scale {scale}"
        );
    }

    /// The output and the gradients of `x` and `γ` equal the norm and the rotation written
    /// out with Burn's tensor operations and differentiated op by op: a head-transposed `x`
    /// (as the projection's output is), tables shared by the batch and a row each (packed
    /// records), with and without activation checkpointing; in bf16, against the same
    /// operations in f32 rounded once.
    #[test]
    fn output_and_gradients_match_norm_then_rotation_differentiated_op_by_op() {
        let autodiff = Device::flex().autodiff();
        for device in [autodiff.clone(), autodiff.gradient_checkpointing()] {
            for tables in [[1, 1, 5, 8], [2, 1, 5, 8]] {
                for dtype in [DType::F32, DType::BF16] {
                    matches_composed(tables, dtype, &device);
                }
            }
        }
    }

    fn matches_composed(tables: [usize; 4], dtype: DType, device: &Device) {
        let (batch, heads, seq, width) = (2, 3, 5, 8);
        let (cos, sin) = (filled(tables, 1, device), filled(tables, 2, device));
        let upstream = filled([batch, heads, seq, width], 3, device);
        let mut norm = RmsNormConfig::new(width).with_epsilon(1e-6).init(device);
        norm.gamma = norm
            .gamma
            .map(|_| filled([width], 4, device).require_grad());
        let run = |as_one_operation: bool| {
            // The projection's output `[batch, seq, heads · width]`, its heads split.
            let projected = filled([batch, seq, heads * width], 5, device)
                .cast(dtype)
                .require_grad();
            let x = projected
                .clone()
                .reshape([batch, seq, heads, width])
                .swap_dims(1, 2);
            let y = match as_one_operation {
                true => norm_rotation(&norm, x, cos.clone(), sin.clone()),
                false => {
                    let x = x.cast(DType::F32);
                    let rms = (x.clone().square().mean_dim(3) + norm.epsilon).sqrt();
                    let u = x / rms * norm.gamma.val().unsqueeze();
                    let half = Tensor::cat(
                        vec![u.clone().narrow(3, 4, 4).neg(), u.clone().narrow(3, 0, 4)],
                        3,
                    );
                    (u * cos.clone() + half * sin.clone()).cast(dtype)
                }
            };
            let grads = (y.clone().cast(DType::F32) * upstream.clone())
                .sum()
                .backward();
            let gamma = norm.gamma.val().grad(&grads).unwrap();
            (
                values(y),
                values(projected.grad(&grads).unwrap()),
                values(gamma),
            )
        };
        let (fused, reference) = (run(true), run(false));
        let tolerance = if dtype == DType::F32 { 2e-6 } else { 1e-2 };
        let what = format!("{dtype:?}, tables {tables:?}");
        assert_close(
            &fused.0,
            &reference.0,
            tolerance,
            &format!("output, {what}"),
        );
        assert_close(&fused.1, &reference.1, tolerance, &format!("dx, {what}"));
        assert_close(&fused.2, &reference.2, tolerance, &format!("dγ, {what}"));
    }
}
