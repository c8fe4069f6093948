//! The rotary embedding's rotation, `x·cos + rotate_half(x)·sin`, as one differentiable
//! operation.
//!
//! Composed of Burn's operations it splits the head in halves, negates one, concatenates
//! them back (a copy), multiplies by both tables and adds, and its backward pass runs each
//! of those in reverse: several kernels over the queries and keys of every layer, twice.
//! Here the rotation is one pass over `x` (one kernel on CubeCL backends,
//! `rotation/cube.rs`, in GPU builds), and its gradient is the transposed rotation, one more:
//! for the pair `(a, b) = (x_j, x_{j+h})`, `h` half the head,
//!
//! `y_j = a·cos_j − b·sin_j`, `y_{j+h} = b·cos_{j+h} + a·sin_{j+h}`;
//! `dx_j = dy_j·cos_j + dy_{j+h}·sin_{j+h}`, `dx_{j+h} = dy_{j+h}·cos_{j+h} − dy_j·sin_j`.
//!
//! The tables are constants: no gradient reaches them. Computed in f32, returned in `x`'s
//! dtype. Timed with the norm as one operation (`rms_norm.rs`); `ANDES_ROTATION=composed` runs
//! the composed form.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{FloatDType, Slice, Tensor};

use crate::composed::{Form, form};
use crate::precision::f32_of;

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
pub mod cube;

/// `x·cos + rotate_half(x)·sin` for `x` `[batch, heads, seq, head_dim]` and tables that
/// broadcast against it (`[batch or 1, 1, seq, head_dim]`), where `rotate_half([x1, x2]) =
/// [-x2, x1]` (the transformers convention): one operation, or composed of Burn's operations
/// where `ANDES_ROTATION=composed` asks.
pub fn rotate(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    match form("ANDES_ROTATION", Form::OneOperation) {
        Form::OneOperation => one_operation(x, cos, sin),
        Form::Composed => Tensor::from_dispatch(composed_rotation::<Dispatch>(
            x.into_dispatch(),
            cos.into_dispatch(),
            sin.into_dispatch(),
            false,
        )),
    }
}

/// [`rotate`] as the one operation of the module documentation.
fn one_operation(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as RotationCore>::rotation(
        x.into_dispatch(),
        cos.detach().into_dispatch(),
        sin.detach().into_dispatch(),
        false,
    ))
}

/// The operation on each backend: composed of Burn's operations by default, one kernel on
/// CubeCL backends; under autodiff its backward is the transposed rotation.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Autodiff
)]
pub trait RotationCore: Backend {
    /// The rotation of the module documentation, or its transpose where `transposed` (the
    /// gradient of `x` from the output's); computed in f32, returned in `x`'s dtype.
    #[fusion(dtype = x, shape = x)]
    fn rotation(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        #[fusion(scalar)] transposed: bool,
    ) -> FloatTensor<Self> {
        composed_rotation::<Self>(x, cos, sin, transposed)
    }
}

impl RotationCore for burn::backend::Flex {}

/// The halves `[..., 0..h]` and `[..., h..2h]` of the last dimension.
fn halves<B: Backend>(x: FloatTensor<B>) -> [FloatTensor<B>; 2] {
    let shape = x.shape();
    let rank = shape.num_dims();
    let half = shape[rank - 1] / 2;
    [0, half].map(|start| {
        let mut slices = vec![Slice::full(); rank];
        slices[rank - 1] = Slice::new(start as isize, Some((start + half) as isize), 1);
        B::float_slice(x.clone(), &slices)
    })
}

/// [`RotationCore::rotation`] composed of Burn's operations: `x·cos + [−b, a]·sin`, or
/// transposed `x·cos + [b', −a']` with `(a', b')` the halves of `x·sin`.
pub(crate) fn composed_rotation<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    transposed: bool,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(x.dtype());
    let (x, cos, sin) = (f32_of::<B>(x), f32_of::<B>(cos), f32_of::<B>(sin));
    let last = x.shape().num_dims() - 1;
    let rotated = match transposed {
        false => {
            let [a, b] = halves::<B>(x.clone());
            B::float_mul(B::float_cat(vec![B::float_neg(b), a], last), sin)
        }
        true => {
            let [a, b] = halves::<B>(B::float_mul(x.clone(), sin));
            B::float_cat(vec![b, B::float_neg(a)], last)
        }
    };
    B::float_cast(B::float_add(B::float_mul(x, cos), rotated), dtype)
}

/// The backward step; its state is the tables `(cos, sin)` of the inner backend.
#[derive(Debug)]
struct RotationBackward;

impl<B: RotationCore> Backward<B, 1> for RotationBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let (cos, sin) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::rotation(grad, cos, sin, true));
        }
    }
}

impl<B: Backend + RotationCore, C: CheckpointStrategy> RotationCore for Autodiff<B, C> {
    fn rotation(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transposed: bool,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (cos, sin) = (cos.into_parts().0, sin.into_parts().0);
        match RotationBackward
            .prepare::<C>([x_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::rotation(x, cos.clone(), sin.clone(), transposed);
                prep.finish((cos, sin), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rotation(x, cos, sin, transposed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::test_tensors::{filled, values};

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(gap <= 1e-5, "{what}: gap {gap}");
    }

    /// The output and `x`'s gradient equal the rotation written out with Burn's tensor
    /// operations and differentiated op by op, for tables shared by the batch and tables a
    /// row each (packed records), with and without activation checkpointing.
    #[test]
    fn output_and_gradient_match_the_rotation_differentiated_op_by_op() {
        let autodiff = Device::flex().autodiff();
        for device in [autodiff.clone(), autodiff.gradient_checkpointing()] {
            let shape = [2, 3, 5, 8];
            for tables in [[1, 1, 5, 8], [2, 1, 5, 8]] {
                let (cos, sin) = (filled(tables, 1, &device), filled(tables, 2, &device));
                let upstream = filled(shape, 3, &device);
                let run = |as_one_operation: bool| {
                    let x = filled(shape, 4, &device).require_grad();
                    let y = match as_one_operation {
                        true => one_operation(x.clone(), cos.clone(), sin.clone()),
                        false => {
                            let x1 = x.clone().narrow(3, 0, 4);
                            let x2 = x.clone().narrow(3, 4, 4);
                            let half = Tensor::cat(vec![x2.neg(), x1], 3);
                            x.clone() * cos.clone() + half * sin.clone()
                        }
                    };
                    let grads = (y.clone() * upstream.clone()).sum().backward();
                    (values(y), values(x.grad(&grads).unwrap()))
                };
                let (fused, reference) = (run(true), run(false));
                assert_close(&fused.0, &reference.0, "output");
                assert_close(&fused.1, &reference.1, "dx");
            }
        }
    }
}
