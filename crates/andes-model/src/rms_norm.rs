//! RMSNorm as one differentiable operation.
//!
//! Burn's `RmsNorm` is eight operations (cast, square, mean, add, square root, cast, divide,
//! multiply), each differentiated by itself and each reading or writing the activations' size
//! where Burn's fusion does not join them (how many kernels they become on the GPU was not
//! profiled), and the Qwen3-0.6B step has 113 norms (two a layer over the hidden size, the
//! per-head query and key norms over 16 and 8 heads of every token, and the final one; the
//! per-head ones now run inside `norm_rotation.rs`, with the rotation). This operation normalises a row in
//! one pass (one kernel on CubeCL backends, `rms_norm/cube.rs`, in GPU builds) and
//! differentiates with the closed form:
//!
//! `y = γ ⊙ x·r` with `r = (mean(x²) + ε)^(-1/2)` over the last dimension;
//! `dx = r·g − (r³/n)·(g·x)·x` with `g = dy ⊙ γ` (another single pass, `r` recomputed from
//! the row), and `dγ = Σ_rows dy ⊙ x·r`.
//!
//! Everything is computed in f32 and returned in `x`'s dtype, as transformers' Qwen3RMSNorm
//! computes in f32 (it rounds the normalised row to the input's dtype before scaling by γ;
//! this rounds once, at the end). With the rotation as one operation too it took `andes
//! train`'s replayed 0.6B bf16-mixed step on an H100 from 26,993 to 27,420 tokens/s and its
//! peak memory from 26,225 to 24,435 MiB, the losses of 12 steps equal to four digits
//! (BENCHMARKS.md, "The block's bf16 flow, the norm and rotation as one operation…").
//! `ANDES_NORM=composed` runs Burn's `RmsNorm`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Scalar, TensorMetadata, backend_extension};
use burn::nn::RmsNorm;
use burn::tensor::{DType, FloatDType, Shape, Tensor};

use crate::composed::{Form, form};
use crate::precision::f32_of;

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
pub mod cube;

/// `norm` applied to `x` (`[.., n]`, `n` the norm's width): one operation with its own
/// backward pass, or Burn's composed `RmsNorm` where `ANDES_NORM=composed` asks.
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    match form("ANDES_NORM", Form::OneOperation) {
        Form::OneOperation => one_operation(norm, x),
        Form::Composed => norm.forward(x),
    }
}

/// [`rms_norm`] as the one operation of the module documentation.
fn one_operation<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    let [width] = norm.gamma.shape().dims();
    assert_eq!(x.dims()[D - 1], width, "RMSNorm over {width} features");
    Tensor::from_dispatch(<Dispatch as RmsNormCore>::rms_norm(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.epsilon,
    ))
}

/// The operation on each backend: composed of Burn's operations by default, one kernel each
/// on CubeCL backends; under autodiff the backward of the module documentation.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Autodiff
)]
pub trait RmsNormCore: Backend {
    /// `γ ⊙ x·r` over the last dimension of `x`, `γ` (`gamma`) of that width; computed in f32
    /// and returned in `x`'s dtype.
    #[fusion(dtype = x, shape = x)]
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        composed_rms_norm::<Self>(x, gamma, epsilon)
    }

    /// The input's gradient `r·g − (r³/n)·(g·x)·x`, `g = dy ⊙ γ`, from `x`, `γ` and the
    /// output's gradient `grad` (`x`'s shape); computed in f32, returned in `x`'s dtype.
    #[fusion(dtype = x, shape = x)]
    fn rms_norm_grad_input(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        composed_grad_input::<Self>(x, gamma, grad, epsilon)
    }
}

impl RmsNormCore for burn::backend::Flex {}

/// `r = (mean(x²) + ε)^(-1/2)` of each row of the f32 `x`, its last dimension kept as 1.
fn inverse_rms<B: Backend>(x: FloatTensor<B>, epsilon: f64) -> FloatTensor<B> {
    let last = x.shape().num_dims() - 1;
    let mean_square = B::float_mean_dim(B::float_mul(x.clone(), x), last);
    let eps = Scalar::new(epsilon, &DType::F32);
    B::float_recip(B::float_sqrt(B::float_add_scalar(mean_square, eps)))
}

/// `γ` in f32 as a row broadcasting over `like` (`[1, …, 1, n]`).
fn gamma_row<B: Backend>(gamma: FloatTensor<B>, like: &FloatTensor<B>) -> FloatTensor<B> {
    let rank = like.shape().num_dims();
    let mut dims = vec![1; rank];
    dims[rank - 1] = gamma.shape().num_elements();
    B::float_reshape(f32_of::<B>(gamma), Shape::from(dims))
}

/// [`RmsNormCore::rms_norm`] composed of Burn's operations.
pub(crate) fn composed_rms_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(x.dtype());
    let x = f32_of::<B>(x);
    let gamma = gamma_row::<B>(gamma, &x);
    let normalised = B::float_mul(x.clone(), inverse_rms::<B>(x, epsilon));
    B::float_cast(B::float_mul(normalised, gamma), dtype)
}

/// [`RmsNormCore::rms_norm_grad_input`] composed of Burn's operations.
pub(crate) fn composed_grad_input<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(x.dtype());
    let x = f32_of::<B>(x);
    let last = x.shape().num_dims() - 1;
    let width = x.shape()[last] as f64;
    let g = B::float_mul(f32_of::<B>(grad), gamma_row::<B>(gamma, &x));
    let r = inverse_rms::<B>(x.clone(), epsilon);
    let dot = B::float_sum_dim(B::float_mul(g.clone(), x.clone()), last);
    let r_cubed = B::float_mul(B::float_mul(r.clone(), r.clone()), r.clone());
    let k = B::float_div_scalar(B::float_mul(r_cubed, dot), Scalar::new(width, &DType::F32));
    let grad_x = B::float_sub(B::float_mul(r, g), B::float_mul(k, x));
    B::float_cast(grad_x, dtype)
}

/// `dγ = Σ_rows dy ⊙ x·r` in `γ`'s dtype (`[n]`).
pub(crate) fn grad_gamma<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
    dtype: FloatDType,
) -> FloatTensor<B> {
    let x = f32_of::<B>(x);
    let shape = x.shape();
    let width = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / width;
    let normalised = B::float_mul(x.clone(), inverse_rms::<B>(x, epsilon));
    let terms = B::float_mul(f32_of::<B>(grad), normalised);
    sum_rows::<B>(
        B::float_reshape(terms, Shape::from(vec![rows, width])),
        dtype,
    )
}

/// The sum over the rows of `[rows, width]` terms, `[width]` in `dtype`: `dγ` from one row of
/// terms a token (here) or a plane (`norm_rotation/cube.rs`).
pub(crate) fn sum_rows<B: Backend>(terms: FloatTensor<B>, dtype: FloatDType) -> FloatTensor<B> {
    let width = terms.shape()[1];
    let summed = B::float_sum_dim(terms, 0);
    B::float_cast(B::float_reshape(summed, Shape::from(vec![width])), dtype)
}

/// The backward step; its state is `(x, γ, ε)` of the inner backend.
#[derive(Debug)]
struct RmsNormBackward;

impl<B: RmsNormCore> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gamma_node] = ops.parents;
        let (x, gamma, epsilon) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = gamma_node {
            let dtype = FloatDType::from(gamma.dtype());
            let grad_gamma = grad_gamma::<B>(x.clone(), grad.clone(), epsilon, dtype);
            grads.register::<B>(node.id, grad_gamma);
        }
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::rms_norm_grad_input(x, gamma, grad, epsilon));
        }
    }
}

impl<B: Backend + RmsNormCore, C: CheckpointStrategy> RmsNormCore for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (gamma, gamma_node) = gamma.into_parts();
        match RmsNormBackward
            .prepare::<C>([x_node, gamma_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::rms_norm(x.clone(), gamma.clone(), epsilon);
                prep.finish((x, gamma, epsilon), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x, gamma, epsilon)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::RmsNormConfig;
    use burn::tensor::Device;

    use super::*;
    use crate::test_tensors::{filled, values};

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(gap <= 2e-6 * scale, "{what}: gap {gap} at scale {scale}");
    }

    /// The output and the gradients of `x` and `γ` are Burn's `RmsNorm` differentiated op by
    /// op, over a 4-D `x` (the per-head query norm's shape) and a 3-D one, with and without
    /// activation checkpointing.
    #[test]
    fn output_and_gradients_match_rms_norm_differentiated_op_by_op() {
        let autodiff = Device::flex().autodiff();
        for device in [autodiff.clone(), autodiff.gradient_checkpointing()] {
            matches_composed_norm::<4>([2, 3, 5, 16], &device);
            matches_composed_norm::<3>([2, 7, 24], &device);
        }
    }

    fn matches_composed_norm<const D: usize>(shape: [usize; D], device: &Device) {
        let width = shape[D - 1];
        let (x, upstream) = (filled(shape, 1, device), filled(shape, 2, device));
        let mut norm = RmsNormConfig::new(width).with_epsilon(1e-6).init(device);
        norm.gamma = norm
            .gamma
            .map(|_| filled([width], 3, device).require_grad());
        let run = |as_one_operation: bool| {
            let x = x.clone().require_grad();
            let y = match as_one_operation {
                true => one_operation(&norm, x.clone()),
                false => norm.forward(x.clone()),
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let gamma = norm.gamma.val().grad(&grads).unwrap();
            (values(y), values(x.grad(&grads).unwrap()), values(gamma))
        };
        let (fused, reference) = (run(true), run(false));
        assert_close(&fused.0, &reference.0, "output");
        assert_close(&fused.1, &reference.1, "dx");
        assert_close(&fused.2, &reference.2, "dγ");
    }
}
