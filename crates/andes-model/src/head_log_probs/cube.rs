//! A chunk's log-sum-exps and target log-probabilities, and its logits' gradient, as one
//! CubeCL kernel each: a cube a row of logits (151,936 of them for Qwen3), read once in the
//! product's own dtype in vectors of up to 8, exponentials in f32.
//!
//! Composed of Burn's operations, the two took a cast of the bf16 logits to f32, a max, a
//! shifted exponential and a sum forward, and a cast, the softmax, a scatter of the targets
//! and a cast back backward: about 0.7 and 0.9 ms a chunk of 883 positions of the 0.6B step on
//! an H100, eight passes over f32 logits (a kernel trace of `andes train`, BENCHMARKS.md).
//! Here the forward pass reads the logits once and the backward pass reads and writes once.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

use super::{HeadLogProbs, composed_chunk_log_probs, composed_logits_grad};
use crate::plane_rows::{address_type, empty_like, widest_vector};

/// Units of a cube, all on one row: 8 planes of 32 keep enough 16-byte loads in flight to
/// stream a row at the card's bandwidth.
const UNITS: u32 = 256;

/// A value below every logit that every shader language accepts as a literal (WGSL has no
/// infinity), where a running maximum starts.
const LOWEST: f32 = -3.0e38;

/// `(m, s)` of two partial log-sum-exps over disjoint columns, `s` summed relative to `m`,
/// combined.
#[cube]
fn combine(m: f32, s: f32, other_m: f32, other_s: f32) -> (f32, f32) {
    let top = max(m, other_m);
    (top, s * (m - top).exp() + other_s * (other_m - top).exp())
}

/// `log Σ exp(z)` of each row of `logits` `[rows, vocab]` and `z[target] − log Σ exp(z)`, a
/// cube a row: every unit keeps a running maximum and a sum relative to it over its vectors,
/// then the plane's and the cube's partial sums combine.
#[cube(launch_unchecked, address_type = "dynamic")]
fn log_probs_kernel<E: Float, I: Int, N: Size>(
    logits: &Tensor<Vector<E, N>>,
    targets: &Tensor<I>,
    log_probs: &mut Tensor<f32>,
    log_sum_exp: &mut Tensor<f32>,
    #[define(E, I)] _dtypes: [ElemType; 2],
) {
    let row = CUBE_POS;
    let n = logits.vector_size();
    let vectors = logits.shape(1) / n;
    let start = row * logits.stride(0) / n;
    let mut m = f32::new(LOWEST);
    let mut s = 0.0f32;
    let mut v = UNIT_POS as usize;
    while v < vectors {
        let z = Vector::<f32, N>::cast_from(logits[start + v]);
        let mut top = m;
        #[unroll]
        for e in 0..n {
            top = max(top, z.extract(e));
        }
        let mut sum = s * (m - top).exp();
        #[unroll]
        for e in 0..n {
            sum += (z.extract(e) - top).exp();
        }
        m = top;
        s = sum;
        v += CUBE_DIM as usize;
    }
    let mut mask = 1u32;
    while mask < PLANE_DIM {
        let (top, sum) = combine(m, s, plane_shuffle_xor(m, mask), plane_shuffle_xor(s, mask));
        m = top;
        s = sum;
        mask *= 2;
    }
    // A slot a plane, sized for planes of a single unit.
    let mut partial_m = Shared::<[f32]>::new_slice(comptime!(UNITS as usize));
    let mut partial_s = Shared::<[f32]>::new_slice(comptime!(UNITS as usize));
    let plane = UNIT_POS as usize / PLANE_DIM as usize;
    if UNIT_POS % PLANE_DIM == 0 {
        partial_m[plane] = m;
        partial_s[plane] = s;
    }
    sync_cube();
    if UNIT_POS == 0 {
        let mut i = 1;
        while i < CUBE_DIM as usize / PLANE_DIM as usize {
            let (top, sum) = combine(m, s, partial_m[i], partial_s[i]);
            m = top;
            s = sum;
            i += 1;
        }
        let lse = m + s.ln();
        let target = usize::cast_from(targets[row * targets.stride(0)]);
        let picked = logits[start + target / n].extract_dynamic(target % n);
        let (at, lse_at) = (row * log_probs.stride(0), row * log_sum_exp.stride(0));
        log_probs[at] = f32::cast_from(picked) - lse;
        log_sum_exp[lse_at] = lse;
    }
}

/// `upstream · (onehot(target) − exp(z − log Σ exp(z)))` of each row of `logits`, in its
/// dtype, a cube a row.
#[cube(launch_unchecked, address_type = "dynamic")]
fn logits_grad_kernel<E: Float, I: Int, N: Size>(
    logits: &Tensor<Vector<E, N>>,
    log_sum_exp: &Tensor<f32>,
    upstream: &Tensor<f32>,
    targets: &Tensor<I>,
    grad: &mut Tensor<Vector<E, N>>,
    #[define(E, I)] _dtypes: [ElemType; 2],
) {
    let row = CUBE_POS;
    let n = logits.vector_size();
    let vectors = logits.shape(1) / n;
    let start = row * logits.stride(0) / n;
    let out = row * grad.stride(0) / n;
    let lse = log_sum_exp[row * log_sum_exp.stride(0)];
    let scale = upstream[row * upstream.stride(0)];
    let target = usize::cast_from(targets[row * targets.stride(0)]);
    let mut v = UNIT_POS as usize;
    while v < vectors {
        let z = Vector::<f32, N>::cast_from(logits[start + v]);
        let mut g = Vector::<f32, N>::empty();
        #[unroll]
        for e in 0..n {
            let hit = select(v * n + e == target, scale, 0.0f32);
            g.insert(e, hit - scale * (z.extract(e) - lse).exp());
        }
        grad[out + v] = Vector::cast_from(g);
        v += CUBE_DIM as usize;
    }
}

/// Whether the kernels take these operands: 2-d logits, one target a row.
fn served(logits: &FloatTensor<CubeBackend>, targets: &IntTensor<CubeBackend>) -> bool {
    let shape = &logits.meta.shape;
    shape.num_dims() == 2 && targets.meta.num_elements() == shape[0]
}

impl HeadLogProbs for CubeBackend {
    fn chunk_log_probs(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !served(&logits, &targets) {
            return composed_chunk_log_probs::<Self>(logits, targets);
        }
        let rows = logits.meta.shape[0];
        let output = |shape: Vec<usize>| {
            empty_device_dtype(
                logits.client.clone(),
                logits.device.clone(),
                Shape::from(shape),
                DType::F32,
            )
        };
        let (log_probs, log_sum_exp) = (output(vec![rows]), output(vec![rows, 1]));
        let vector = widest_vector(&[&logits], logits.meta.shape[1]);
        let dtypes = [logits.dtype, targets.dtype].map(dtype_to_storage_type);
        let client = logits.client.clone();
        let address = address_type(&[&logits, &targets, &log_probs, &log_sum_exp]);
        // SAFETY: a cube reads its own row of `logits` (`rows` cubes) in vectors the tensor
        // can be read in (`widest_vector`), its target (under the vocabulary: the caller's
        // tokens index the head's rows), and writes its row's two outputs.
        unsafe {
            log_probs_kernel::launch_unchecked(
                &client,
                CubeCount::new_1d(rows as u32),
                CubeDim::new_1d(UNITS),
                address,
                vector,
                logits.into_tensor_arg(),
                targets.into_tensor_arg(),
                log_probs.clone().into_tensor_arg(),
                log_sum_exp.clone().into_tensor_arg(),
                dtypes,
            );
        }
        (log_probs, log_sum_exp)
    }

    fn logits_grad(
        logits: FloatTensor<Self>,
        log_sum_exp: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        let f32_rows = log_sum_exp.dtype == DType::F32 && upstream.dtype == DType::F32;
        if !served(&logits, &targets) || !f32_rows {
            return composed_logits_grad::<Self>(logits, log_sum_exp, upstream, targets);
        }
        let rows = logits.meta.shape[0];
        let grad = empty_like(&logits);
        let vector = widest_vector(&[&logits, &grad], logits.meta.shape[1]);
        let dtypes = [logits.dtype, targets.dtype].map(dtype_to_storage_type);
        let client = logits.client.clone();
        let address = address_type(&[&logits, &log_sum_exp, &upstream, &targets, &grad]);
        // SAFETY: a cube reads its own row of `logits` and `grad` (`rows` cubes, one shape) in
        // vectors both can be read in, and one element of each row operand.
        unsafe {
            logits_grad_kernel::launch_unchecked(
                &client,
                CubeCount::new_1d(rows as u32),
                CubeDim::new_1d(UNITS),
                address,
                vector,
                logits.into_tensor_arg(),
                log_sum_exp.into_tensor_arg(),
                upstream.into_tensor_arg(),
                targets.into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                dtypes,
            );
        }
        grad
    }
}

/// Run on a CUDA device (this file is compiled into GPU builds only): `TEST_CRATE=andes-model
/// scripts/gpu/build-cuda.sh` builds the test binary, `FILTER=head_log_probs
/// scripts/gpu/kernel_tests.sh` runs it on the GPU machine.
#[cfg(all(test, feature = "cuda-untuned"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::tensor::{Int, Tensor, TensorData};

    use super::*;
    use crate::test_tensors::{filled, relative_gap, values};

    /// Both kernels against their composed forms, in f32 and bf16: Qwen3's vocabulary (8
    /// elements a vector), a vocabulary no vector divides (1,001), logits of ±60 (where an
    /// unshifted exponential overflows), targets at a row's first and last column.
    #[test]
    fn kernels_match_the_composed_log_probs_and_logits_gradient() {
        let device = crate::device::parse_device("cuda").unwrap();
        let mut failures = Vec::new();
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
            for (rows, vocab, scale) in [(5, 151_936, 1.0), (7, 1001, 30.0)] {
                let logits = (filled([rows, vocab], 1, &device) * scale).cast(dtype);
                let picked: Vec<i64> = (0..rows)
                    .map(|r| [0, vocab - 1, (r * 7919) % vocab][r % 3] as i64)
                    .collect();
                let targets =
                    Tensor::<2, Int>::from_data(TensorData::new(picked, [rows, 1]), &device);
                let upstream = filled([rows, 1], 2, &device);
                let args = || {
                    (
                        logits.clone().into_dispatch(),
                        targets.clone().into_dispatch(),
                    )
                };
                let (l, t) = args();
                let (log_probs, lse) = <Dispatch as HeadLogProbs>::chunk_log_probs(l, t);
                let (l, t) = args();
                let (log_probs_ref, lse_ref) = composed_chunk_log_probs::<Dispatch>(l, t);
                let lse_ref = Tensor::<2>::from_dispatch(lse_ref);
                let forward = relative_gap(
                    &values(Tensor::<1>::from_dispatch(log_probs)),
                    &values(Tensor::<1>::from_dispatch(log_probs_ref)),
                )
                .max(relative_gap(
                    &values(Tensor::<2>::from_dispatch(lse)),
                    &values(lse_ref.clone()),
                ));
                let grad = |kernel: bool| {
                    let (l, t) = args();
                    let (s, u) = (
                        lse_ref.clone().into_dispatch(),
                        upstream.clone().into_dispatch(),
                    );
                    let grad = match kernel {
                        true => <Dispatch as HeadLogProbs>::logits_grad(l, s, u, t),
                        false => composed_logits_grad::<Dispatch>(l, s, u, t),
                    };
                    values(Tensor::<2>::from_dispatch(grad))
                };
                let backward = relative_gap(&grad(true), &grad(false));
                eprintln!(
                    "[{rows}, {vocab}] ×{scale} {dtype:?}: forward {forward}, grad {backward}"
                );
                if forward > tolerance || backward > tolerance {
                    failures.push(format!("[{rows}, {vocab}] {dtype:?}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "kernels differ from the composed forms: {failures:?}"
        );
    }
}
