//! Attention's core, `softmax(q·kᵀ·scale, masked)·v`, as one differentiable operation.
//!
//! Burn differentiates attention through the operations it is made of, so training stores
//! and re-reads every intermediate over the `[batch, heads, seq_q, seq_k]` scores (cast, scale,
//! mask, the softmax's max, exp, sum and division) in f32: on the GPU that was ~52 ms of a
//! 187-ms Qwen3-0.6B step and most of the memory above PyTorch's. This operation keeps only
//! the probabilities `P`, in the operands' dtype, and differentiates as FlashAttention-2 does
//! (Dao 2023, Algorithm 2) with the scores materialised:
//!
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))·scale`, `dQ = dS·K`,
//! `dK = dSᵀ·Q`,
//!
//! using `Σⱼ Pᵢⱼ·dPᵢⱼ = dOᵢ·Oᵢ`, so the backward pass reads the scores' size three times (P,
//! dP, dS) and the four products run on the operands' dtype (cuBLASLt on CUDA). The softmax
//! itself is computed in f32 whatever the operands, as torch autocast and flash attention do.
//! On an H200 this took 14% off the 0.6B bf16-mixed training step and 14.4 GB off its memory
//! (BENCHMARKS.md, "Attention and the LM head as one operation each"). The softmax and the
//! scores' gradient are operations of their own ([`AttentionCore::attention_probabilities`],
//! [`AttentionCore::attention_scores_grad`]), one kernel each on CubeCL backends
//! (`sdpa/cube.rs`, in GPU builds): composed of Burn's operations they ran unfused, 72 ms of
//! the 209.5 ms of kernels in a step on an H100.
//!
//! Under activation checkpointing the probabilities are not kept but recomputed from `q`, `k`
//! and the mask in the backward pass, one layer at a time, as FlashAttention recomputes them:
//! they are a layer's largest activation (2.1 GB for 16 heads at 8,192 tokens in bf16), and
//! kept for the 28 layers of Qwen3-0.6B they did not fit an 80-GB GPU.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Scalar, TensorMetadata, backend_extension};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, FloatDType, Tensor};

use crate::composed::{Form, form};
use crate::precision::f32_of;

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
pub mod cube;

/// `softmax(q·kᵀ·scale, masked where mask)·v`. `q` `[b, h, s_q, d]`, `k` and `v`
/// `[b, h, s_k, d]` in one dtype (bf16 under autocast), `mask` `[b, h, s_q, s_k]` true where a
/// query may not look; returns `[b, h, s_q, d]` in the operands' dtype. A row with every
/// position masked has no softmax (NaN), as in every attention. `ANDES_ATTENTION=composed`
/// runs [`composed_attention`] instead, so a benchmark can time both in one build.
pub fn scaled_dot_product_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    scale: f64,
) -> Tensor<4> {
    if form("ANDES_ATTENTION", Form::OneOperation) == Form::Composed {
        return composed_attention(q, k, v, mask, scale);
    }
    Tensor::from_dispatch(<Dispatch as AttentionCore>::attention_core(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.into_dispatch(),
        scale,
    ))
}

/// The same attention as a chain of Burn operations, each differentiated by itself: the
/// reference the one-operation backward is tested against, and what attention was before it.
pub fn composed_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    scale: f64,
) -> Tensor<4> {
    let dtype = q.dtype();
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .cast(DType::F32)
        .mul_scalar(scale)
        .mask_fill(mask, f32::NEG_INFINITY);
    softmax(scores, 3).cast(dtype).matmul(v)
}

/// The operation on each backend: the composed forward pass where nothing is differentiated,
/// and under autodiff the backward of the module documentation. The softmax and its gradient
/// are operations of their own so that a backend can run each as one kernel over the scores
/// (CubeCL: `sdpa/cube.rs`, in GPU builds); their default bodies compose Burn's operations.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Autodiff
)]
pub trait AttentionCore: Backend {
    /// See [`scaled_dot_product_attention`].
    #[fusion(default)]
    fn attention_core(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        forward::<Self>(q, k, v, mask, scale).output
    }

    /// `P = softmax(scores·scale, masked where mask)` over the last dimension, computed in f32
    /// and returned in the scores' dtype; `mask` broadcasts to the scores' shape.
    #[fusion(dtype = scores, shape = scores)]
    fn attention_probabilities(
        scores: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed_probabilities::<Self>(scores, mask, scale)
    }

    /// The scores' gradient `dS = P ⊙ (dP − row_dot)·scale` from the probabilities `P`, their
    /// gradient `dP` (both in the operands' dtype) and `row_dot = rowsum(dO ⊙ O)` (f32, the
    /// scores' shape with a last dimension of 1); computed in f32, returned in `P`'s dtype.
    #[fusion(dtype = probabilities, shape = probabilities)]
    fn attention_scores_grad(
        probabilities: FloatTensor<Self>,
        grad_probabilities: FloatTensor<Self>,
        row_dot: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed_scores_grad::<Self>(probabilities, grad_probabilities, row_dot, scale)
    }
}

/// [`AttentionCore::attention_probabilities`] composed of Burn's operations.
fn composed_probabilities<B: Backend>(
    scores: FloatTensor<B>,
    mask: BoolTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(scores.dtype());
    let scores = B::float_mul_scalar(f32_of::<B>(scores), Scalar::new(scale, &DType::F32));
    let scores = B::float_mask_fill(scores, mask, Scalar::new(f32::NEG_INFINITY, &DType::F32));
    B::float_cast(B::softmax(scores, 3), dtype)
}

/// [`AttentionCore::attention_scores_grad`] composed of Burn's operations.
fn composed_scores_grad<B: Backend>(
    probabilities: FloatTensor<B>,
    grad_probabilities: FloatTensor<B>,
    row_dot: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(probabilities.dtype());
    let grad_scores = B::float_mul(
        f32_of::<B>(probabilities),
        B::float_sub(f32_of::<B>(grad_probabilities), row_dot),
    );
    B::float_cast(
        B::float_mul_scalar(grad_scores, Scalar::new(scale, &DType::F32)),
        dtype,
    )
}

impl AttentionCore for burn::backend::Flex {}

/// What the forward pass leaves for the backward one.
struct Forward<B: Backend> {
    /// `softmax(q·kᵀ·scale, masked)` in the operands' dtype.
    probabilities: FloatTensor<B>,
    /// `probabilities · v`.
    output: FloatTensor<B>,
}

fn forward<B: AttentionCore>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: BoolTensor<B>,
    scale: f64,
) -> Forward<B> {
    let probabilities = probabilities_of::<B>(q, k, mask, scale);
    let output = B::float_matmul(probabilities.clone(), v);
    Forward {
        probabilities,
        output,
    }
}

/// `softmax(q·kᵀ·scale, masked)` in the operands' dtype.
fn probabilities_of<B: AttentionCore>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    mask: BoolTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let scores = B::float_matmul(q, B::float_transpose(k));
    B::attention_probabilities(scores, mask, scale)
}

/// Whether the backward pass recomputes `P` rather than keeping it from the forward pass:
/// always under activation checkpointing, and without it when
/// `ANDES_ATTENTION_PROBABILITIES=recomputed`, which trades one more `q·kᵀ` product and softmax
/// a layer in the backward pass for the probabilities' memory (28 layers of `[4, 16, 1,024,
/// 1,024]` in bf16 for the 0.6B shape at 4 × 1,024 tokens: 3.7 GB less reserved on an H100, for
/// 13 ms more a step), as flash attention does.
fn probabilities_recomputed<C: CheckpointStrategy>() -> bool {
    TypeId::of::<C>() != TypeId::of::<NoCheckpointing>()
        || std::env::var("ANDES_ATTENTION_PROBABILITIES").as_deref() == Ok("recomputed")
}

/// The backward step; its state is `(q, k, v, P, O, scale)` of the inner backend.
#[derive(Debug)]
struct AttentionCoreBackward;

/// How the backward pass gets `P`: kept from the forward pass, or recomputed from `q`, `k` and
/// this mask (under activation checkpointing).
#[derive(Debug, Clone)]
enum Probabilities<B: Backend> {
    Kept(FloatTensor<B>),
    Recomputed(BoolTensor<B>),
}

type State<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Probabilities<B>,
    FloatTensor<B>,
    f64,
);

impl<B: AttentionCore> Backward<B, 3> for AttentionCoreBackward {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q_node, k_node, v_node] = ops.parents;
        let (q, k, v, probabilities, output, scale) = ops.state;
        let probabilities = match probabilities {
            Probabilities::Kept(probabilities) => probabilities,
            Probabilities::Recomputed(mask) => {
                probabilities_of::<B>(q.clone(), k.clone(), mask, scale)
            }
        };
        let dtype = FloatDType::from(output.dtype());
        let grad_output = B::float_cast(grads.consume::<B>(&ops.node), dtype);
        if let Some(node) = v_node {
            let grad_v = B::float_matmul(
                B::float_transpose(probabilities.clone()),
                grad_output.clone(),
            );
            grads.register::<B>(node.id, grad_v);
        }
        if q_node.is_none() && k_node.is_none() {
            return;
        }
        let grad_probabilities = B::float_matmul(grad_output.clone(), B::float_transpose(v));
        let row_dot = B::float_sum_dim(
            B::float_mul(f32_of::<B>(grad_output), f32_of::<B>(output)),
            3,
        );
        let grad_scores =
            B::attention_scores_grad(probabilities, grad_probabilities, row_dot, scale);
        if let Some(node) = q_node {
            grads.register::<B>(node.id, B::float_matmul(grad_scores.clone(), k));
        }
        if let Some(node) = k_node {
            let grad_k = B::float_matmul(B::float_transpose(grad_scores), q);
            grads.register::<B>(node.id, grad_k);
        }
    }
}

impl<B: Backend + AttentionCore, C: CheckpointStrategy> AttentionCore for Autodiff<B, C> {
    fn attention_core(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let (q, q_node) = q.into_parts();
        let (k, k_node) = k.into_parts();
        let (v, v_node) = v.into_parts();
        match AttentionCoreBackward
            .prepare::<C>([q_node, k_node, v_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let parts = forward::<B>(q.clone(), k.clone(), v.clone(), mask.clone(), scale);
                let probabilities = if probabilities_recomputed::<C>() {
                    Probabilities::Recomputed(mask)
                } else {
                    Probabilities::Kept(parts.probabilities)
                };
                let state = (q, k, v, probabilities, parts.output.clone(), scale);
                prep.finish(state, parts.output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_core(q, k, v, mask, scale)),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::kv_cache::Position;
    use crate::test_tensors::{filled, values};

    /// The mask of `seq` queries that follow `keys - seq` cached positions, `[1, 1, seq, keys]`.
    pub(super) fn causal(seq: usize, keys: usize, device: &Device) -> Tensor<4, Bool> {
        Position::Start(keys - seq).attention_mask(seq, device)
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(gap <= 1e-5 * scale, "{what}: gap {gap} at scale {scale}");
    }

    /// With the probabilities kept, and recomputed under activation checkpointing.
    #[test]
    fn output_and_gradients_match_attention_differentiated_op_by_op() {
        let autodiff = Device::flex().autodiff();
        for device in [autodiff.clone(), autodiff.gradient_checkpointing()] {
            matches_attention_differentiated_op_by_op(device);
        }
    }

    fn matches_attention_differentiated_op_by_op(device: Device) {
        let (batch, heads, seq, dim) = (2, 3, 7, 8);
        let filled = |seed| filled([batch, heads, seq, dim], seed, &device);
        let (q, k, v) = (
            filled(1).require_grad(),
            filled(2).require_grad(),
            filled(3).require_grad(),
        );
        let upstream = filled(4);
        let scale = 1.0 / (dim as f64).sqrt();
        let mask = causal(seq, seq, &device).expand([batch, heads, seq, seq]);
        let run =
            |attend: fn(Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4, Bool>, f64) -> Tensor<4>| {
                let out = attend(q.clone(), k.clone(), v.clone(), mask.clone(), scale);
                let grads = (out.clone() * upstream.clone()).sum().backward();
                let grad = |t: &Tensor<4>| values(t.grad(&grads).unwrap());
                (values(out), grad(&q), grad(&k), grad(&v))
            };
        let fused = run(scaled_dot_product_attention);
        let reference = run(composed_attention);
        assert_close(&fused.0, &reference.0, "output");
        assert_close(&fused.1, &reference.1, "dq");
        assert_close(&fused.2, &reference.2, "dk");
        assert_close(&fused.3, &reference.3, "dv");
        // Without autodiff the composed forward pass runs and gives the same output.
        let plain = Device::flex();
        let detached = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &plain);
        let output = scaled_dot_product_attention(
            detached(&q),
            detached(&k),
            detached(&v),
            causal(seq, seq, &plain).expand([batch, heads, seq, seq]),
            scale,
        );
        assert_close(&values(output), &reference.0, "output without autodiff");
    }
}
