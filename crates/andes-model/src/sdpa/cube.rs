//! Attention's softmax and the softmax's gradient as one CubeCL kernel each.
//!
//! Composed of Burn's operations, the forward softmax over the `[batch, heads, seq_q, seq_k]`
//! scores was nine kernels (cast, scale, mask, max, subtract, exp, sum, divide, cast) and the
//! backward one six, each reading and writing the scores' size in f32, unfused: 1.5 ms and
//! 1.1 ms a layer of the Qwen3-0.6B training step on an H100 (Nsight Compute; 72 ms of the
//! step's 209.5 ms of kernels). Each kernel here reads its operands once, in their own dtype,
//! computes in f32 and writes the result once.
//!
//! One plane (warp) owns a row of the scores (`crate::plane_rows`): its units stride the row
//! together, so reads are coalesced, and the row's maximum and sum are plane reductions, with
//! no shared memory.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use cubecl::prelude::*;

use super::{
    AttentionCore, causal_backward_composed, causal_forward_composed, composed_probabilities,
    composed_scores_grad,
};
use crate::plane_rows::{address_type, empty_like, plane_row, row_launch, row_start};

/// `P = softmax(scores·scale, masked)` a row a plane. The mask is read through its own shape
/// and strides, so any mask that broadcasts to the scores serves (a causal `[1, 1, q, k]`, a
/// padded `[b, 1, q, k]`, an expanded view). Masked positions take −∞ before the softmax, so a
/// row with every position masked is NaN, as the composed softmax gives.
#[cube(launch_unchecked, address_type = "dynamic")]
fn probabilities_kernel<E: Float, M: Int>(
    scores: &Tensor<E>,
    mask: &Tensor<M>,
    probabilities: &mut Tensor<E>,
    scale: f32,
    #[define(E, M)] _dtypes: [ElemType; 2],
) {
    let last = scores.rank() - 1;
    let row_len = scores.shape(last);
    let row = plane_row();
    if row * row_len >= scores.len() {
        terminate!();
    }
    let scores_row = row_start(scores, scores, row);
    let mask_row = row_start(scores, mask, row);
    let out_row = row_start(scores, &*probabilities, row);
    let (scores_step, out_step) = (scores.stride(last), probabilities.stride(last));
    let (mask_len, mask_step) = (mask.shape(last), mask.stride(last));
    let lane = UNIT_POS_X as usize;
    let lanes = CUBE_DIM_X as usize;

    let mut max = f32::new(f32::NEG_INFINITY);
    let mut col = lane;
    while col < row_len {
        if mask[mask_row + (col % mask_len) * mask_step] == M::new(0) {
            let logit = f32::cast_from(scores[scores_row + col * scores_step]) * scale;
            if logit > max {
                max = logit;
            }
        }
        col += lanes;
    }
    let max = plane_max(max);

    let mut sum = 0.0f32;
    let mut col = lane;
    while col < row_len {
        if mask[mask_row + (col % mask_len) * mask_step] == M::new(0) {
            sum += (f32::cast_from(scores[scores_row + col * scores_step]) * scale - max).exp();
        }
        col += lanes;
    }
    let sum = plane_sum(sum);

    let mut col = lane;
    while col < row_len {
        let mut logit = f32::new(f32::NEG_INFINITY);
        if mask[mask_row + (col % mask_len) * mask_step] == M::new(0) {
            logit = f32::cast_from(scores[scores_row + col * scores_step]) * scale;
        }
        probabilities[out_row + col * out_step] = E::cast_from((logit - max).exp() / sum);
        col += lanes;
    }
}

/// `dS = P ⊙ (dP − row_dot)·scale`, a row a plane (`row_dot` is one f32 a row).
#[cube(launch_unchecked, address_type = "dynamic")]
fn scores_grad_kernel<E: Float>(
    probabilities: &Tensor<E>,
    grad_probabilities: &Tensor<E>,
    row_dot: &Tensor<f32>,
    grad_scores: &mut Tensor<E>,
    scale: f32,
    #[define(E)] _dtype: ElemType,
) {
    let last = probabilities.rank() - 1;
    let row_len = probabilities.shape(last);
    let row = plane_row();
    if row * row_len >= probabilities.len() {
        terminate!();
    }
    let dot = row_dot[row_start(probabilities, row_dot, row)];
    let p_row = row_start(probabilities, probabilities, row);
    let dp_row = row_start(probabilities, grad_probabilities, row);
    let out_row = row_start(probabilities, &*grad_scores, row);
    let p_step = probabilities.stride(last);
    let dp_step = grad_probabilities.stride(last);
    let out_step = grad_scores.stride(last);
    let mut col = UNIT_POS_X as usize;
    while col < row_len {
        let p = f32::cast_from(probabilities[p_row + col * p_step]);
        let dp = f32::cast_from(grad_probabilities[dp_row + col * dp_step]);
        grad_scores[out_row + col * out_step] = E::cast_from(p * (dp - dot) * scale);
        col += CUBE_DIM_X as usize;
    }
}

impl AttentionCore for CubeBackend {
    fn causal_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        start: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[cfg(feature = "cublas")]
        if let Some(result) = super::flash::forward(&q, &k, &v, start, scale) {
            return result;
        }
        causal_forward_composed::<Self>(q, k, v, start, scale)
    }

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
        #[cfg(feature = "cublas")]
        if let Some(result) =
            super::flash::backward(&q, &k, &v, &output, &lse, &grad_output, start, scale)
        {
            return result;
        }
        causal_backward_composed::<Self>(q, k, v, output, lse, grad_output, start, scale)
    }

    fn attention_probabilities(
        scores: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let Some((count, dim, _)) = row_launch(&scores) else {
            return composed_probabilities::<Self>(scores, mask, scale);
        };
        // Row-major operands (a product's output may come transposed) keep each plane's reads
        // coalesced; the kernel still reads every tensor through its strides, since CubeCL may
        // pad rows.
        let scores = into_contiguous(scores);
        let probabilities = empty_like(&scores);
        let dtypes = [
            dtype_to_storage_type(scores.dtype),
            dtype_to_storage_type(mask.dtype),
        ];
        let client = scores.client.clone();
        let address = address_type(&[&scores, &mask, &probabilities]);
        // SAFETY: every index the kernel forms lies in its tensor: rows past the last return
        // first, columns stay under the row's length, and each tensor is indexed through its
        // own shape and strides.
        unsafe {
            probabilities_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                scores.into_tensor_arg(),
                mask.into_tensor_arg(),
                probabilities.clone().into_tensor_arg(),
                scale as f32,
                dtypes,
            );
        }
        probabilities
    }

    fn attention_scores_grad(
        probabilities: FloatTensor<Self>,
        grad_probabilities: FloatTensor<Self>,
        row_dot: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let Some((count, dim, _)) = row_launch(&probabilities) else {
            return composed_scores_grad::<Self>(probabilities, grad_probabilities, row_dot, scale);
        };
        let probabilities = into_contiguous(probabilities);
        let grad_probabilities = into_contiguous(grad_probabilities);
        let row_dot = into_contiguous(row_dot);
        let grad_scores = empty_like(&probabilities);
        let dtype = dtype_to_storage_type(probabilities.dtype);
        let client = probabilities.client.clone();
        let address = address_type(&[&probabilities, &grad_probabilities, &row_dot, &grad_scores]);
        // SAFETY: as for the probabilities: rows past the last return first, columns stay
        // under the row's length, each tensor indexed through its own shape and strides.
        unsafe {
            scores_grad_kernel::launch_unchecked(
                &client,
                count,
                dim,
                address,
                probabilities.into_tensor_arg(),
                grad_probabilities.into_tensor_arg(),
                row_dot.into_tensor_arg(),
                grad_scores.clone().into_tensor_arg(),
                scale as f32,
                dtype,
            );
        }
        grad_scores
    }
}

/// Run on a CUDA device (this file is compiled into GPU builds only): `TEST_CRATE=andes-model
/// scripts/gpu/build-cuda.sh` builds the test binary, `scripts/gpu/kernel_tests.sh` runs it on
/// the GPU machine.
#[cfg(all(test, feature = "cuda-untuned"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::{Bool, DType, Device, Tensor, TensorData};

    use super::*;
    use crate::sdpa::tests::causal;
    use crate::test_tensors::values;

    /// Scores spread over about [-3, 3].
    fn filled(shape: [usize; 4], seed: usize, device: &Device) -> Tensor<4> {
        crate::test_tensors::filled(shape, seed, device).mul_scalar(1.5)
    }

    /// Largest difference, NaN matching NaN only.
    fn gap(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| match (x.is_nan(), y.is_nan()) {
                (true, true) => m,
                (false, false) => m.max((x - y).abs()),
                _ => f32::INFINITY,
            })
    }

    /// The largest gaps of the probabilities and of the scores' gradient, kernel against
    /// composed; prints the first two rows of each where the probabilities differ.
    fn gaps(shape: [usize; 4], mask: Tensor<4, Bool>, dtype: DType) -> (f32, f32) {
        let device = mask.device();
        let scale = 0.125;
        let scores = filled(shape, 1, &device).cast(dtype);
        let kernel =
            Tensor::<4>::from_dispatch(<Dispatch as AttentionCore>::attention_probabilities(
                scores.clone().into_dispatch(),
                mask.clone().into_dispatch(),
                scale,
            ));
        let reference = Tensor::<4>::from_dispatch(composed_probabilities::<Dispatch>(
            scores.into_dispatch(),
            mask.into_dispatch(),
            scale,
        ));
        let (kernel, expected) = (values(kernel), values(reference.clone()));
        let probabilities = gap(&kernel, &expected);
        if probabilities > 0.0 {
            let row = shape[3].min(24);
            eprintln!(
                "{shape:?} {dtype:?} kernel rows 0-1: {:?}",
                &kernel[..2 * row]
            );
            eprintln!(
                "{shape:?} {dtype:?} composed rows 0-1: {:?}",
                &expected[..2 * row]
            );
        }

        let grad = filled(shape, 2, &device).cast(dtype);
        let [b, h, q, _] = shape;
        let row_dot = filled([b, h, q, 1], 3, &device);
        let p = reference.clone().mask_fill(reference.is_nan(), 0.0);
        let (dp, rd) = (grad, row_dot);
        let kernel =
            Tensor::<4>::from_dispatch(<Dispatch as AttentionCore>::attention_scores_grad(
                p.clone().into_dispatch(),
                dp.clone().into_dispatch(),
                rd.clone().into_dispatch(),
                scale,
            ));
        let reference = Tensor::<4>::from_dispatch(composed_scores_grad::<Dispatch>(
            p.into_dispatch(),
            dp.into_dispatch(),
            rd.into_dispatch(),
            scale,
        ));
        (probabilities, gap(&values(kernel), &values(reference)))
    }

    /// Causal attention through the flash kernels in bf16 (a transposed `q` as the model
    /// passes it, grouped heads, rows not a multiple of a block, a prompt after cached
    /// positions, one decoding query) against attention over the explicit mask in f32 on the
    /// same bf16 values: output and the three gradients within 2% of each tensor's largest
    /// entry.
    #[cfg(feature = "cublas")]
    #[test]
    fn flash_attention_matches_masked_attention_in_f32() {
        use crate::sdpa::{
            causal_attention, causal_attention_serves, composed_attention, repeat_kv,
        };
        let device = crate::device::parse_device("cuda").unwrap().autodiff();
        let mut failures = Vec::new();
        for (b, h, hk, n, start, d) in [
            (2, 4, 2, 100, 0, 64),
            (1, 16, 8, 256, 0, 128),
            (2, 8, 2, 130, 0, 128),
            (1, 4, 4, 37, 27, 128),
            (1, 2, 1, 1, 70, 128),
        ] {
            let keys = start + n;
            let bf16 = |t: Tensor<4>| t.cast(DType::BF16).cast(DType::F32);
            let q = bf16(filled([b, n, h, d], 1, &device).mul_scalar(0.5)).swap_dims(1, 2);
            let k = bf16(filled([b, hk, keys, d], 2, &device).mul_scalar(0.5));
            let v = bf16(filled([b, hk, keys, d], 3, &device));
            let upstream = bf16(filled([b, h, n, d], 4, &device));
            let scale = 1.0 / (d as f64).sqrt();
            let run = |flash: bool| {
                let (q, k, v) = (
                    q.clone().require_grad(),
                    k.clone().require_grad(),
                    v.clone().require_grad(),
                );
                let out = if flash {
                    let cast = |t: &Tensor<4>| t.clone().cast(DType::BF16);
                    assert!(causal_attention_serves(&cast(&q)));
                    causal_attention(cast(&q), cast(&k), cast(&v), start, scale).cast(DType::F32)
                } else {
                    let mask = causal(n, keys, &device).expand([b, h, n, keys]);
                    let (k, v) = (repeat_kv(k.clone(), h / hk), repeat_kv(v.clone(), h / hk));
                    composed_attention(q.clone(), k, v, mask, scale)
                };
                let grads = (out.clone() * upstream.clone()).sum().backward();
                let grad = |t: &Tensor<4>| values(t.grad(&grads).unwrap());
                [values(out), grad(&q), grad(&k), grad(&v)]
            };
            let (flash, reference) = (run(true), run(false));
            for (name, (ours, exact)) in ["out", "dq", "dk", "dv"]
                .iter()
                .zip(flash.iter().zip(&reference))
            {
                let largest = exact.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
                let relative = gap(ours, exact) / largest;
                eprintln!(
                    "{:?} {name}: {relative:.2e} of {largest:.3}",
                    (b, h, hk, n, start, d)
                );
                if relative > 2e-2 {
                    failures.push(format!(
                        "{:?} {name} {relative:.2e}",
                        (b, h, hk, n, start, d)
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "flash attention differs: {failures:?}");
    }

    #[test]
    fn kernels_match_the_composed_softmax_and_its_gradient() {
        let device = crate::device::parse_device("cuda").unwrap();
        let mut failures = Vec::new();
        for (dtype, tolerance) in [(DType::F32, 1e-6), (DType::BF16, 1e-2)] {
            let mut cases = Vec::new();
            // Prompts, a decoding step (one query, the whole cache), a long row, rows not a
            // multiple of a cube's.
            for (b, h, q, k) in [
                (1, 4, 17, 17),
                (1, 4, 16, 16),
                (1, 4, 32, 32),
                (1, 4, 33, 33),
                (8, 2, 64, 64),
                (1, 4, 1, 18),
                (2, 3, 128, 128),
                (1, 2, 37, 1000),
            ] {
                cases.push(([b, h, q, k], causal(q, k, &device)));
            }
            // A mask written from host data, none masked, a padded batch's `[b, 1, q, k]` (some
            // rows wholly masked: NaN), and a mask expanded to every head (stride 0).
            let host: Vec<bool> = (0..17 * 17).map(|i| i % 17 > i / 17).collect();
            let host = Tensor::<2, Bool>::from_data(TensorData::new(host, [17, 17]), &device);
            cases.push(([1, 4, 17, 17], host.reshape([1, 1, 17, 17])));
            let none = TensorData::new(vec![false; 17 * 17], [1, 1, 17, 17]);
            cases.push(([1, 4, 17, 17], Tensor::<4, Bool>::from_data(none, &device)));
            let padded = filled([2, 1, 9, 9], 4, &device).greater_elem(1.0);
            cases.push(([2, 3, 9, 9], padded.clone()));
            cases.push(([2, 3, 9, 9], padded.expand([2, 3, 9, 9])));
            for (shape, mask) in cases {
                let (probabilities, grad_scores) = gaps(shape, mask, dtype);
                eprintln!(
                    "{shape:?} {dtype:?}: probabilities {probabilities}, scores' gradient {grad_scores}"
                );
                if probabilities > tolerance || grad_scores > tolerance {
                    failures.push(format!("{shape:?} {dtype:?}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "kernels differ from the composed forms: {failures:?}"
        );
    }
}
