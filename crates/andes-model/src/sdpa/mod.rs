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
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Scalar, TensorMetadata, backend_extension,
};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, FloatDType, Tensor, TensorData};

use crate::composed::{Form, form};
use crate::precision::f32_of;

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
pub mod cube;
#[cfg(feature = "cublas")]
pub mod flash;

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

/// `softmax(q·kᵀ·scale)·v` where query `i` sees the keys up to `start + i`: a prompt or a
/// training window after `start` cached positions. `q` `[b, h, n, d]`; `k` and `v` `[b, hk,
/// start + n, d]` with `hk` dividing `h` (grouped-query heads are not repeated), all in one
/// dtype. On CUDA in bf16 this is flash attention (`sdpa/flash.cu`): neither the scores nor the
/// probabilities reach memory, forward or backward ([`causal_attention_serves`]); elsewhere
/// the same operation runs composed of Burn's operations.
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    start: usize,
    scale: f64,
) -> Tensor<4> {
    let (output, _) = <Dispatch as AttentionCore>::causal_attention_forward(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        start,
        scale,
    );
    Tensor::from_dispatch(output)
}

/// Each key/value head repeated for the `group` query heads it serves (`[b, kv, t, d]` →
/// `[b, kv·group, t, d]`), query head `h` reading key/value head `h / group`, as transformers'
/// `repeat_kv` does: what attention over a mask reads.
pub fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    Tensor::from_dispatch(repeat_heads::<Dispatch>(x.into_dispatch(), group))
}

/// Whether [`causal_attention`] runs flash kernels for operands like `q` in this process: a
/// GPU build with cuBLASLt, a CUDA device opened, bf16 operands, heads of 64 or 128, and
/// `ANDES_ATTENTION` not `composed` or `materialized`. Where it does not, attention keeps the
/// one-operation form over a mask, which is faster than the composed causal form.
pub fn causal_attention_serves(q: &Tensor<4>) -> bool {
    #[cfg(feature = "cublas")]
    {
        flash::serves(q.dtype(), q.dims()[3])
    }
    #[cfg(not(feature = "cublas"))]
    {
        let _ = q;
        false
    }
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

    /// [`causal_attention`]'s output and each row's `lse` `[b, h, n]` in f32, the log₂ of
    /// `Σⱼ 2^(q·kⱼ·scale·log₂e)` over the keys the row sees (what the backward pass reads
    /// instead of the probabilities).
    #[fusion(meta = |q, _k, _v, _start, _scale| causal_forward_meta(q))]
    fn causal_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        start: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        causal_forward_composed::<Self>(q, k, v, start, scale)
    }

    /// `(dq, dk, dv)` of [`causal_attention`] from its output, `lse` and the output's gradient;
    /// `dk` and `dv` summed over the query heads each key/value head serves.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |q, k, v, _o, _lse, _d_o, _start, _scale| (q.clone(), k.clone(), v.clone()))]
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        output: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_output: FloatTensor<Self>,
        start: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        causal_backward_composed::<Self>(q, k, v, output, lse, grad_output, start, scale)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
use burn::backend::fusion::custom::TensorSpec;

/// The output and `lse` of [`AttentionCore::causal_attention_forward`], for Fusion.
#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
fn causal_forward_meta(q: &TensorSpec) -> (TensorSpec, TensorSpec) {
    let dims = q.shape.as_slice();
    let lse = burn::tensor::Shape::new([dims[0], dims[1], dims[2]]);
    (q.clone(), TensorSpec::new(lse, DType::F32))
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

/// [`AttentionCore::causal_attention_forward`] composed of Burn's operations: the scores
/// materialised, each key/value head repeated for its query heads.
fn causal_forward_composed<B: AttentionCore>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    start: usize,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [batch, heads, seq, _] = q.shape().dims();
    let group = heads / k.shape().dims::<4>()[1];
    let dtype = FloatDType::from(q.dtype());
    let logits = causal_logits::<B>(q, repeat_heads::<B>(k, group), start, scale);
    let max = B::float_max_dim(logits.clone(), 3);
    let sum = B::float_sum_dim(B::float_exp(B::float_sub(logits.clone(), max.clone())), 3);
    let lse = B::float_add(max, B::float_log(sum));
    let probabilities = softmax_from_lse::<B>(logits, lse.clone(), dtype);
    let output = B::float_matmul(probabilities, repeat_heads::<B>(v, group));
    let lse = B::float_mul_scalar(lse, Scalar::new(std::f64::consts::LOG2_E, &DType::F32));
    (output, B::float_reshape(lse, [batch, heads, seq].into()))
}

/// [`AttentionCore::causal_attention_backward`] composed of Burn's operations: the
/// probabilities recomputed from `lse`, then [`attention_gradients`].
#[allow(clippy::too_many_arguments)]
fn causal_backward_composed<B: AttentionCore>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    output: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad_output: FloatTensor<B>,
    start: usize,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let [batch, heads, seq, _] = q.shape().dims();
    let group = heads / k.shape().dims::<4>()[1];
    let dtype = FloatDType::from(q.dtype());
    let (k, v) = (repeat_heads::<B>(k, group), repeat_heads::<B>(v, group));
    let logits = causal_logits::<B>(q.clone(), k.clone(), start, scale);
    let lse = B::float_mul_scalar(
        B::float_reshape(lse, [batch, heads, seq, 1].into()),
        Scalar::new(std::f64::consts::LN_2, &DType::F32),
    );
    let probabilities = softmax_from_lse::<B>(logits, lse, dtype);
    let [dq, dk, dv] = attention_gradients::<B>(
        q,
        k,
        v,
        probabilities,
        output,
        grad_output,
        scale,
        [true; 3],
    )
    .map(|grad| grad.expect("every gradient asked"));
    (dq, sum_heads::<B>(dk, group), sum_heads::<B>(dv, group))
}

/// `q·kᵀ·scale` in f32 with −∞ where key `j` is after `start + i` for query `i`.
fn causal_logits<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    start: usize,
    scale: f64,
) -> FloatTensor<B> {
    let mask = causal_mask::<B>(&q, start);
    let scores = f32_of::<B>(B::float_matmul(q, B::float_transpose(k)));
    let logits = B::float_mul_scalar(scores, Scalar::new(scale, &DType::F32));
    B::float_mask_fill(logits, mask, Scalar::new(f32::NEG_INFINITY, &DType::F32))
}

/// `exp(logits − lse)` (the softmax, `lse` each row's natural log-sum-exp) in `dtype`.
fn softmax_from_lse<B: Backend>(
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    dtype: FloatDType,
) -> FloatTensor<B> {
    B::float_cast(B::float_exp(B::float_sub(logits, lse)), dtype)
}

/// True where key `j` is after `start + i` for query `i`, `q`'s `[b, h, n, start + n]` (a
/// `[1, 1, n, start + n]` mask built on the host, expanded).
fn causal_mask<B: Backend>(q: &FloatTensor<B>, start: usize) -> BoolTensor<B> {
    let [batch, heads, seq, _] = q.shape().dims();
    let keys = start + seq;
    let blocked = (0..seq)
        .flat_map(|i| (0..keys).map(move |j| j > start + i))
        .collect::<Vec<_>>();
    let mask = B::bool_from_data(TensorData::new(blocked, [1, 1, seq, keys]), &q.device());
    B::bool_expand(mask, [batch, heads, seq, keys].into())
}

/// Each key/value head repeated for the `group` query heads it serves, `[b, hk, n, d]` →
/// `[b, hk·group, n, d]`, as transformers' `repeat_kv` does.
fn repeat_heads<B: Backend>(x: FloatTensor<B>, group: usize) -> FloatTensor<B> {
    if group == 1 {
        return x;
    }
    let [batch, kv_heads, seq, dim] = x.shape().dims();
    let x = B::float_reshape(x, [batch, kv_heads, 1, seq, dim].into());
    let x = B::float_expand(x, [batch, kv_heads, group, seq, dim].into());
    B::float_reshape(x, [batch, kv_heads * group, seq, dim].into())
}

/// The gradient of [`repeat_heads`]: each group's heads summed, `[b, hk·group, n, d]` →
/// `[b, hk, n, d]`.
fn sum_heads<B: Backend>(grad: FloatTensor<B>, group: usize) -> FloatTensor<B> {
    if group == 1 {
        return grad;
    }
    let [batch, heads, seq, dim] = grad.shape().dims();
    let grad = B::float_reshape(grad, [batch, heads / group, group, seq, dim].into());
    B::float_reshape(
        B::float_sum_dim(grad, 2),
        [batch, heads / group, seq, dim].into(),
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
        let nodes = [q_node, k_node, v_node];
        let wanted = nodes.each_ref().map(Option::is_some);
        let gradients =
            attention_gradients::<B>(q, k, v, probabilities, output, grad_output, scale, wanted);
        for (node, grad) in nodes.into_iter().zip(gradients) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// `[dq, dk, dv]` of `O = P·v` with `P = softmax(q·kᵀ·scale, masked)` from `P` (in the
/// operands' dtype), `O` and `dO`, each where `wanted`: the backward of the module
/// documentation.
#[allow(clippy::too_many_arguments)]
fn attention_gradients<B: AttentionCore>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    probabilities: FloatTensor<B>,
    output: FloatTensor<B>,
    grad_output: FloatTensor<B>,
    scale: f64,
    wanted: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let [want_q, want_k, want_v] = wanted;
    let grad_v = want_v.then(|| {
        B::float_matmul(
            B::float_transpose(probabilities.clone()),
            grad_output.clone(),
        )
    });
    if !want_q && !want_k {
        return [None, None, grad_v];
    }
    let grad_probabilities = B::float_matmul(grad_output.clone(), B::float_transpose(v));
    let row_dot = B::float_sum_dim(
        B::float_mul(f32_of::<B>(grad_output), f32_of::<B>(output)),
        3,
    );
    let grad_scores = B::attention_scores_grad(probabilities, grad_probabilities, row_dot, scale);
    let grad_q = want_q.then(|| B::float_matmul(grad_scores.clone(), k));
    let grad_k = want_k.then(|| B::float_matmul(B::float_transpose(grad_scores), q));
    [grad_q, grad_k, grad_v]
}

/// The backward step of [`causal_attention`]; its state is `(q, k, v, O, lse, start, scale)`
/// of the inner backend.
#[derive(Debug)]
struct CausalAttentionBackward;

type CausalState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    usize,
    f64,
);

impl<B: AttentionCore> Backward<B, 3> for CausalAttentionBackward {
    type State = CausalState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, output, lse, start, scale) = ops.state;
        let dtype = FloatDType::from(output.dtype());
        let grad_output = B::float_cast(grads.consume::<B>(&ops.node), dtype);
        let (dq, dk, dv) =
            B::causal_attention_backward(q, k, v, output, lse, grad_output, start, scale);
        for (node, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
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

    fn causal_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        start: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (q, q_node) = q.into_parts();
        let (k, k_node) = k.into_parts();
        let (v, v_node) = v.into_parts();
        let (output, lse) =
            B::causal_attention_forward(q.clone(), k.clone(), v.clone(), start, scale);
        let kept_lse = lse.clone();
        let output = match CausalAttentionBackward
            .prepare::<C>([q_node, k_node, v_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (q, k, v, output.clone(), lse, start, scale);
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        (output, <Self as AutodiffBackend>::from_inner(kept_lse))
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

    /// Query `i` seeing keys up to `start + i`, grouped heads not repeated: the output, the
    /// log-sum-exps and the three gradients (`dk`, `dv` summed over each group) against
    /// attention over the explicit mask, differentiated op by op.
    #[test]
    fn causal_attention_matches_masked_attention_differentiated_op_by_op() {
        let device = Device::flex().autodiff();
        let (batch, heads, kv_heads, seq, dim) = (2, 4, 2, 5, 8);
        for start in [0, 3] {
            let keys = start + seq;
            let (q, k, v) = (
                filled([batch, heads, seq, dim], 1, &device).require_grad(),
                filled([batch, kv_heads, keys, dim], 2, &device).require_grad(),
                filled([batch, kv_heads, keys, dim], 3, &device).require_grad(),
            );
            let upstream = filled([batch, heads, seq, dim], 4, &device);
            let scale = 1.0 / (dim as f64).sqrt();
            let out = causal_attention(q.clone(), k.clone(), v.clone(), start, scale);
            let grads = (out.clone() * upstream.clone()).sum().backward();
            let grad = |t: &Tensor<4>| values(t.grad(&grads).unwrap());
            let flash = (values(out), grad(&q), grad(&k), grad(&v));

            let group = heads / kv_heads;
            let mask = causal(seq, keys, &device).expand([batch, heads, seq, keys]);
            let (k_repeated, v_repeated) =
                (repeat_kv(k.clone(), group), repeat_kv(v.clone(), group));
            let out = composed_attention(q.clone(), k_repeated, v_repeated, mask, scale);
            let grads = (out.clone() * upstream).sum().backward();
            let grad = |t: &Tensor<4>| values(t.grad(&grads).unwrap());
            let reference = (values(out), grad(&q), grad(&k), grad(&v));
            assert_close(&flash.0, &reference.0, "output");
            assert_close(&flash.1, &reference.1, "dq");
            assert_close(&flash.2, &reference.2, "dk");
            assert_close(&flash.3, &reference.3, "dv");
        }
    }

    /// The log-sum-exp the backward pass reads is log₂ Σⱼ 2^(q·kⱼ·scale·log₂e) over the keys
    /// each query sees, computed here by hand.
    #[test]
    fn causal_attention_leaves_each_rows_log2_sum_exp2() {
        let device = Device::flex();
        let (seq, dim, start) = (3, 4, 2);
        let q = filled([1, 1, seq, dim], 5, &device);
        let k = filled([1, 1, start + seq, dim], 6, &device);
        let v = filled([1, 1, start + seq, dim], 7, &device);
        let scale = 0.5;
        let (_, lse) = <Dispatch as AttentionCore>::causal_attention_forward(
            q.clone().into_dispatch(),
            k.clone().into_dispatch(),
            v.into_dispatch(),
            start,
            scale,
        );
        let lse = values(Tensor::<3>::from_dispatch(lse));
        let (q, k) = (values(q), values(k));
        for i in 0..seq {
            let sum: f64 = (0..=start + i)
                .map(|j| {
                    let dot: f32 = (0..dim).map(|c| q[i * dim + c] * k[j * dim + c]).sum();
                    (dot as f64 * scale).exp()
                })
                .sum();
            let expected = sum.log2() as f32;
            assert!(
                (lse[i] - expected).abs() < 1e-5,
                "row {i}: {} against {expected}",
                lse[i]
            );
        }
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
