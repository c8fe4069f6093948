//! The LM head and each target's log-probability as one differentiable operation, a chunk of
//! positions at a time, so that no pass keeps the logits.
//!
//! Differentiated operation by operation, the head keeps every chunk's f32 logits and their
//! log-softmax for the backward pass (2.5 GB each for a `[4, 1024]` batch over Qwen3's 151,936
//! tokens) and reads and writes them several times more. This operation keeps one log-sum-exp
//! a position and recomputes a chunk's logits in the backward pass (one more product), where
//! `∂ log p(t) / ∂z = onehot(t) − softmax(z)` gives the logits' gradient in one pass, as the
//! fused losses of Liger-Kernel and Cut Cross-Entropy (Wijmans et al. 2024) do.
//!
//! The weight comes with a row per token (`[vocab, width]`, the token embedding's layout), so
//! that a tied head's gradient is computed in the embedding's own layout and adds to the
//! embedding's gradient element for element; differentiated through a transposed view, it
//! came back transposed, and that one addition over 155 M elements took 5.4 ms of the 0.6B
//! step's 133 ms of kernels on an H200 (BENCHMARKS.md, "A step replayed as one graph").

use std::ops::Range;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Shape, Slice, Tensor};

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
pub mod cube;

/// `log softmax(hidden·weightᵀ)[targets]`: `hidden` `[positions, width]` and `weight` `[vocab,
/// width]` (a row per token) in one dtype (bf16 under autocast), `targets` `[positions]`;
/// returns `[positions]` in f32, computing `positions_per_chunk` positions' logits at a time.
pub fn head_target_log_probs(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    positions_per_chunk: usize,
) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as HeadLogProbs>::head_log_probs(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        targets.into_dispatch(),
        positions_per_chunk,
    ))
}

/// The operation on each backend: the chunked forward pass where nothing is differentiated,
/// and under autodiff the backward of the module documentation. A chunk's two passes over its
/// logits are one kernel each on CubeCL backends (`head_log_probs/cube.rs`, in GPU builds);
/// their default bodies compose Burn's operations.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda-untuned")),
    Autodiff
)]
pub trait HeadLogProbs: Backend {
    /// See [`head_target_log_probs`].
    #[fusion(default)]
    fn head_log_probs(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        positions_per_chunk: usize,
    ) -> FloatTensor<Self> {
        forward::<Self>(&hidden, &weight, &targets, positions_per_chunk).log_probs
    }

    /// Each row's `z[target] − log Σ exp(z)` (`[rows]`) and `log Σ exp(z)` (`[rows, 1]`), in
    /// f32, of a chunk's logits `[rows, vocab]` in the product's dtype; `targets` `[rows, 1]`.
    #[fusion(meta = |logits, _targets| chunk_meta(logits))]
    fn chunk_log_probs(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_chunk_log_probs::<Self>(logits, targets)
    }

    /// The logits' gradient `upstream · (onehot(target) − exp(z − log Σ exp(z)))` in their
    /// dtype, from the forward pass's `log_sum_exp` and the log-probabilities' gradient
    /// `upstream` (both `[rows, 1]`, f32).
    #[fusion(dtype = logits, shape = logits)]
    fn logits_grad(
        logits: FloatTensor<Self>,
        log_sum_exp: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_logits_grad::<Self>(logits, log_sum_exp, upstream, targets)
    }
}

impl HeadLogProbs for burn::backend::Flex {}

#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
use burn::{backend::fusion::custom::TensorSpec, tensor::DType};

/// The outputs of [`HeadLogProbs::chunk_log_probs`], for Fusion.
#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
fn chunk_meta(logits: &TensorSpec) -> (TensorSpec, TensorSpec) {
    let rows = logits.shape.as_slice()[0];
    (
        TensorSpec::new(Shape::new([rows]), DType::F32),
        TensorSpec::new(Shape::new([rows, 1]), DType::F32),
    )
}

/// [`HeadLogProbs::chunk_log_probs`] composed of Burn's operations, in f32.
fn composed_chunk_log_probs<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let rows = logits.shape()[0];
    let logits = B::float_cast(logits, FloatDType::F32);
    let max = B::float_max_dim(logits.clone(), 1);
    let shifted = B::float_exp(B::float_sub(logits.clone(), max.clone()));
    let log_sum_exp = B::float_add(max, B::float_log(B::float_sum_dim(shifted, 1)));
    let target = B::float_gather(1, logits, targets);
    let log_probs = B::float_sub(target, log_sum_exp.clone());
    (B::float_reshape(log_probs, Shape::new([rows])), log_sum_exp)
}

/// [`HeadLogProbs::logits_grad`] composed of Burn's operations, in f32.
fn composed_logits_grad<B: Backend>(
    logits: FloatTensor<B>,
    log_sum_exp: FloatTensor<B>,
    upstream: FloatTensor<B>,
    targets: IntTensor<B>,
) -> FloatTensor<B> {
    let dtype = FloatDType::from(logits.dtype());
    let logits = B::float_cast(logits, FloatDType::F32);
    let probabilities = B::float_exp(B::float_sub(logits, log_sum_exp));
    // (onehot(t) − softmax) · upstream, row by row.
    let grad = B::float_scatter(
        1,
        B::float_neg(B::float_mul(probabilities, upstream.clone())),
        targets,
        upstream,
        IndexingUpdateOp::Add,
    );
    B::float_cast(grad, dtype)
}

/// The ranges of `per_chunk` rows (the last one shorter) that cover `0..rows`.
pub(crate) fn row_chunks(rows: usize, per_chunk: usize) -> impl Iterator<Item = Range<usize>> {
    (0..rows)
        .step_by(per_chunk.max(1))
        .map(move |start| start..(start + per_chunk.max(1)).min(rows))
}

/// Rows `range` of a `[rows, columns]` tensor.
fn rows<B: Backend>(tensor: &FloatTensor<B>, range: Range<usize>) -> FloatTensor<B> {
    B::float_slice(tensor.clone(), &[Slice::from(range), Slice::from(..)])
}

/// Targets `range` as a `[rows, 1]` column, for gathering and scattering along the vocabulary.
fn target_column<B: Backend>(targets: &IntTensor<B>, range: Range<usize>) -> IntTensor<B> {
    let count = range.len();
    B::int_reshape(
        B::int_slice(targets.clone(), &[Slice::from(range)]),
        Shape::new([count, 1]),
    )
}

/// Logits `[rows, vocab]` of hidden rows `range`, in the operands' dtype.
fn chunk_logits<B: Backend>(
    hidden: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    range: Range<usize>,
) -> FloatTensor<B> {
    B::float_matmul(rows::<B>(hidden, range), B::float_transpose(weight.clone()))
}

/// What the forward pass leaves for the backward one.
struct Forward<B: Backend> {
    /// `[positions]`, f32.
    log_probs: FloatTensor<B>,
    /// `log Σ exp(logits)` of each position, `[positions, 1]`, f32.
    log_sum_exp: FloatTensor<B>,
}

fn forward<B: HeadLogProbs>(
    hidden: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    targets: &IntTensor<B>,
    per_chunk: usize,
) -> Forward<B> {
    let positions = hidden.shape()[0];
    let (mut picked, mut sums) = (Vec::new(), Vec::new());
    for range in row_chunks(positions, per_chunk) {
        let logits = chunk_logits::<B>(hidden, weight, range.clone());
        let (log_probs, log_sum_exp) =
            B::chunk_log_probs(logits, target_column::<B>(targets, range));
        picked.push(log_probs);
        sums.push(log_sum_exp);
    }
    Forward {
        log_probs: B::float_cat(picked, 0),
        log_sum_exp: B::float_cat(sums, 0),
    }
}

/// The backward step; its state is `(hidden, weight, targets, log-sum-exp, chunk)` of the
/// inner backend.
#[derive(Debug)]
struct HeadLogProbsBackward;

type State<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
    FloatTensor<B>,
    usize,
);

impl<B: HeadLogProbs> Backward<B, 2> for HeadLogProbsBackward {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [hidden_node, weight_node] = ops.parents;
        let (hidden, weight, targets, log_sum_exp, per_chunk) = ops.state;
        let positions = hidden.shape()[0];
        let upstream = B::float_reshape(
            B::float_cast(grads.consume::<B>(&ops.node), FloatDType::F32),
            Shape::new([positions, 1]),
        );
        let (mut grad_hidden, mut grad_weight) = (Vec::new(), None);
        for range in row_chunks(positions, per_chunk) {
            let grad_logits = B::logits_grad(
                chunk_logits::<B>(&hidden, &weight, range.clone()),
                rows::<B>(&log_sum_exp, range.clone()),
                rows::<B>(&upstream, range.clone()),
                target_column::<B>(&targets, range.clone()),
            );
            if hidden_node.is_some() {
                grad_hidden.push(B::float_matmul(grad_logits.clone(), weight.clone()));
            }
            if weight_node.is_some() {
                // `[vocab, width]`, the weight's own layout.
                let part =
                    B::float_matmul(B::float_transpose(grad_logits), rows::<B>(&hidden, range));
                let part = B::float_cast(part, FloatDType::F32);
                grad_weight = Some(match grad_weight {
                    Some(sum) => B::float_add(sum, part),
                    None => part,
                });
            }
        }
        if let Some(node) = hidden_node {
            grads.register::<B>(node.id, B::float_cat(grad_hidden, 0));
        }
        if let (Some(node), Some(grad)) = (weight_node, grad_weight) {
            let weight_dtype = FloatDType::from(weight.dtype());
            grads.register::<B>(node.id, B::float_cast(grad, weight_dtype));
        }
    }
}

impl<B: Backend + HeadLogProbs, C: CheckpointStrategy> HeadLogProbs for Autodiff<B, C> {
    fn head_log_probs(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        positions_per_chunk: usize,
    ) -> FloatTensor<Self> {
        let (hidden, hidden_node) = hidden.into_parts();
        let (weight, weight_node) = weight.into_parts();
        match HeadLogProbsBackward
            .prepare::<C>([hidden_node, weight_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let parts = forward::<B>(&hidden, &weight, &targets, positions_per_chunk);
                let state = (
                    hidden,
                    weight,
                    targets,
                    parts.log_sum_exp,
                    positions_per_chunk,
                );
                prep.finish(state, parts.log_probs)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::head_log_probs(
                hidden,
                weight,
                targets,
                positions_per_chunk,
            )),
        }
    }
}
