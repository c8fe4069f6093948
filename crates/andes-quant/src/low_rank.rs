//! The rank-r correction of a linear's quantization error that its outputs see least of: the
//! LoRA factors an adapter on a quantized base starts from, so that it begins as the best
//! low-rank repair of the base instead of as zero (CLoQ, Deng et al. 2025, arXiv:2501.18475;
//! LoftQ's first step, Li et al. 2023, arXiv:2310.08659, weighted by the activations).
//!
//! For the error `E = W − Q` of a linear (`[out, in]`) and its calibration inputs `X`, the
//! output error of `Q + Δ` is `‖(E − Δ)·X‖²_F = tr((E − Δ) H (E − Δ)ᵀ)` with `H ∝ Σ x xᵀ`, the
//! Hessian GPTQ weighs by. Factoring the damped `H = L Lᵀ` makes it `‖(E − Δ)·L‖²_F`, so by
//! Eckart–Young the best rank-r `Δ` is `[E·L]_r · L⁻¹`, `[·]_r` the truncated SVD: with
//! `E·L ≈ U S Vᵀ`, `B = U S^½` and `A = S^½ Vᵀ L⁻¹`. With `H` a multiple of the identity this
//! is the plain truncated SVD of `E` (LoftQ). The SVD is randomized (Halko, Martinsson and
//! Tropp 2011, arXiv:0909.4061, Algorithms 4.4 and 5.1: subspace iteration on a fixed
//! pseudo-random start, then an exact SVD of the small projected matrix), in f64.

use crate::cholesky::cholesky_lower;
use crate::error::QuantError;
use crate::hessian::Hessian;
use crate::product::{Layout, multiply_add};

/// Extra directions the randomized SVD carries beyond the rank it returns (Halko et al.'s `p`):
/// the top `rank` singular vectors converge much faster with them.
const OVERSAMPLING: usize = 16;

/// Subspace iterations (Halko et al.'s `q`): each raises the spectrum's decay to a higher power,
/// for quantization errors, whose spectra are flat, more than the usual two.
const SUBSPACE_ITERATIONS: usize = 8;

/// Low-rank factors in PEFT's layout, row-major: `b` `[out, rank]`, `a` `[rank, in]`, so that
/// `B·A` is `[out, in]` like the weight it corrects.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRankFactors {
    /// The rank r.
    pub rank: usize,
    /// `B`, `[out, rank]`.
    pub b: Vec<f32>,
    /// `A`, `[rank, in]`.
    pub a: Vec<f32>,
}

/// The rank-`rank` `B·A` that minimises `‖(residual − B·A)·X‖_F` over the calibration inputs
/// `X` whose [`Hessian`] is `hessian`, for `residual` `[out_features, in]` row-major (the weight
/// layout of PyTorch), the Hessian damped by `damp_percent` of its mean diagonal as GPTQ damps
/// it (inputs never seen get a unit diagonal, so their columns are fitted plainly). `B` and `A`
/// share the singular values' square roots, as LoftQ and PiSSA split them.
///
/// Errors on a residual that does not match `out_features × in`, a Hessian of another width,
/// with only its diagonal or with no tokens, a rank of 0 or above `min(out, in)`, and a damped
/// Hessian that is not positive definite (possible only with `damp_percent = 0`).
pub fn calibrated_low_rank(
    residual: &[f32],
    out_features: usize,
    hessian: &Hessian,
    rank: usize,
    damp_percent: f64,
) -> Result<LowRankFactors, QuantError> {
    let n = hessian.in_features();
    let m = out_features;
    if residual.len() != m * n || m == 0 || n == 0 {
        return Err(QuantError::ShapeMismatch {
            found: residual.len(),
            shape: format!("[{m}, {n}]"),
            expected: m * n,
        });
    }
    if !hessian.is_full() {
        return Err(QuantError::DiagonalHessian);
    }
    if hessian.tokens() == 0 {
        return Err(QuantError::NoCalibrationTokens { in_features: n });
    }
    if rank == 0 || rank > m.min(n) {
        return Err(QuantError::InvalidRank {
            rank,
            most: m.min(n),
        });
    }
    let mut h = hessian.matrix();
    for i in 0..n {
        if h[i * n + i] == 0.0 {
            h[i * n + i] = 1.0;
        }
    }
    let mean_diagonal = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        h[i * n + i] += damp_percent * mean_diagonal;
    }
    let l = cholesky_lower(&h, n).map_err(|column| QuantError::HessianNotPositiveDefinite {
        column,
        damp_percent,
    })?;
    let e: Vec<f64> = residual.iter().map(|&v| f64::from(v)).collect();
    let mut weighted = vec![0.0; m * n];
    multiply_add(
        (&mut weighted, Layout::row_major(0, 0, n)),
        (&e, Layout::row_major(0, 0, n)),
        (&l, Layout::row_major(0, 0, n)),
        [m, n, n],
        1.0,
    );
    let svd = truncated_svd(&weighted, m, n, rank);
    // B = U S^½; A = S^½ Vᵀ L⁻¹, each row `y` of S^½ Vᵀ solved as `x L = y` (`Lᵀ xᵀ = yᵀ`, an
    // upper-triangular system) from the last column down.
    let roots: Vec<f64> = svd.values.iter().map(|s| s.sqrt()).collect();
    let mut b = vec![0f32; m * rank];
    for row in 0..m {
        for (j, root) in roots.iter().enumerate() {
            b[row * rank + j] = (svd.left[j * m + row] * root) as f32;
        }
    }
    let mut a = vec![0f32; rank * n];
    let mut x = vec![0.0; n];
    for (j, root) in roots.iter().enumerate() {
        let y = &svd.right[j * n..(j + 1) * n];
        for col in (0..n).rev() {
            let later: f64 = (col + 1..n).map(|i| x[i] * l[i * n + col]).sum();
            x[col] = (y[col] * root - later) / l[col * n + col];
        }
        for (slot, v) in a[j * n..(j + 1) * n].iter_mut().zip(&x) {
            *slot = *v as f32;
        }
    }
    Ok(LowRankFactors { rank, b, a })
}

/// The top singular triplets of a matrix: `values` in decreasing order, `left` `[rank, m]`
/// and `right` `[rank, n]` holding one singular vector a row.
struct Svd {
    values: Vec<f64>,
    left: Vec<f64>,
    right: Vec<f64>,
}

/// The `rank` largest singular triplets of `matrix` `[m, n]` row-major, randomized.
fn truncated_svd(matrix: &[f64], m: usize, n: usize, rank: usize) -> Svd {
    let k = (rank + OVERSAMPLING).min(m).min(n);
    let a = Layout::row_major(0, 0, n);
    // The range's basis, one vector a row: Yᵀ = Ωᵀ·Mᵀ, `[k, m]`, for a fixed start Ωᵀ `[k, n]`.
    let start = pseudo_gaussian(k * n);
    let mut basis = vec![0.0; k * m];
    multiply_add(
        (&mut basis, Layout::row_major(0, 0, m)),
        (&start, Layout::row_major(0, 0, n)),
        (matrix, a.transposed()),
        [k, m, n],
        1.0,
    );
    orthonormalize_rows(&mut basis, k, m);
    let mut co_basis = vec![0.0; k * n];
    for _ in 0..SUBSPACE_ITERATIONS {
        // Zᵀ = Qᵀ·M `[k, n]`, orthonormalized; then Yᵀ = Zᵀ·Mᵀ `[k, m]`, orthonormalized.
        co_basis.fill(0.0);
        multiply_add(
            (&mut co_basis, Layout::row_major(0, 0, n)),
            (&basis, Layout::row_major(0, 0, m)),
            (matrix, a),
            [k, n, m],
            1.0,
        );
        orthonormalize_rows(&mut co_basis, k, n);
        basis.fill(0.0);
        multiply_add(
            (&mut basis, Layout::row_major(0, 0, m)),
            (&co_basis, Layout::row_major(0, 0, n)),
            (matrix, a.transposed()),
            [k, m, n],
            1.0,
        );
        orthonormalize_rows(&mut basis, k, m);
    }
    // The projected matrix P = Qᵀ·M `[k, n]`; its Gram P·Pᵀ = W Λ Wᵀ gives M's top singular
    // values √λ, left vectors Q·w and right vectors Pᵀ·w / √λ.
    let mut projected = vec![0.0; k * n];
    multiply_add(
        (&mut projected, Layout::row_major(0, 0, n)),
        (&basis, Layout::row_major(0, 0, m)),
        (matrix, a),
        [k, n, m],
        1.0,
    );
    let mut gram = vec![0.0; k * k];
    multiply_add(
        (&mut gram, Layout::row_major(0, 0, k)),
        (&projected, Layout::row_major(0, 0, n)),
        (&projected, Layout::row_major(0, 0, n).transposed()),
        [k, k, n],
        1.0,
    );
    let (eigenvalues, eigenvectors) = symmetric_eigen(gram, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| eigenvalues[j].total_cmp(&eigenvalues[i]));
    let mut svd = Svd {
        values: Vec::with_capacity(rank),
        left: vec![0.0; rank * m],
        right: vec![0.0; rank * n],
    };
    for (j, &index) in order.iter().take(rank).enumerate() {
        let value = eigenvalues[index].max(0.0).sqrt();
        svd.values.push(value);
        for (i, row) in basis.chunks_exact(m).enumerate() {
            let w = eigenvectors[i * k + index];
            for (slot, q) in svd.left[j * m..(j + 1) * m].iter_mut().zip(row) {
                *slot += w * q;
            }
        }
        if value > 0.0 {
            for (i, row) in projected.chunks_exact(n).enumerate() {
                let w = eigenvectors[i * k + index] / value;
                for (slot, p) in svd.right[j * n..(j + 1) * n].iter_mut().zip(row) {
                    *slot += w * p;
                }
            }
        }
    }
    svd
}

/// Makes the `rows` rows of `matrix` (`[rows, cols]`) orthonormal by modified Gram–Schmidt,
/// twice over ("twice is enough", Giraud et al. 2005); a row that falls into the span of the
/// earlier ones becomes zero.
fn orthonormalize_rows(matrix: &mut [f64], rows: usize, cols: usize) {
    for _ in 0..2 {
        for i in 0..rows {
            let (done, rest) = matrix.split_at_mut(i * cols);
            let row = &mut rest[..cols];
            for earlier in done.chunks_exact(cols) {
                let projection: f64 = earlier.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                row.iter_mut()
                    .zip(earlier)
                    .for_each(|(v, e)| *v -= projection * e);
            }
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            let inverse = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
            row.iter_mut().for_each(|v| *v *= inverse);
        }
    }
}

/// Eigenvalues and eigenvectors (column `j` of the returned `[k, k]` row-major matrix for value
/// `j`) of the symmetric `matrix` `[k, k]`, by cyclic Jacobi rotations until the off-diagonal
/// part is negligible.
fn symmetric_eigen(mut matrix: Vec<f64>, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut vectors = vec![0.0; k * k];
    (0..k).for_each(|i| vectors[i * k + i] = 1.0);
    let total: f64 = matrix.iter().map(|v| v * v).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| matrix[i * k + j].powi(2))
            .sum();
        if off <= 1e-30 * total {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = matrix[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (matrix[q * k + q] - matrix[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let (rp, rq) = (matrix[r * k + p], matrix[r * k + q]);
                    matrix[r * k + p] = c * rp - s * rq;
                    matrix[r * k + q] = s * rp + c * rq;
                }
                for r in 0..k {
                    let (pr, qr) = (matrix[p * k + r], matrix[q * k + r]);
                    matrix[p * k + r] = c * pr - s * qr;
                    matrix[q * k + r] = s * pr + c * qr;
                }
                for r in 0..k {
                    let (vp, vq) = (vectors[r * k + p], vectors[r * k + q]);
                    vectors[r * k + p] = c * vp - s * vq;
                    vectors[r * k + q] = s * vp + c * vq;
                }
            }
        }
    }
    ((0..k).map(|i| matrix[i * k + i]).collect(), vectors)
}

/// `count` fixed pseudo-random standard normal numbers (splitmix64, Box–Muller): the start of
/// the subspace iteration, the same on every run so that an adapter's start is reproducible.
fn pseudo_gaussian(count: usize) -> Vec<f64> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..count)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[rows, cols]` orthonormal rows drawn from `seed`.
    fn orthonormal(rows: usize, cols: usize, seed: usize) -> Vec<f64> {
        let mut m: Vec<f64> =
            pseudo_gaussian((seed + 1) * rows * cols)[seed * rows * cols..].to_vec();
        orthonormalize_rows(&mut m, rows, cols);
        m
    }

    /// `Σ σᵢ uᵢ vᵢᵀ`, `[m, n]`, from singular values and orthonormal rows `u` `[r, m]`, `v` `[r, n]`.
    fn from_svd(values: &[f64], u: &[f64], v: &[f64], m: usize, n: usize) -> Vec<f32> {
        let mut e = vec![0f32; m * n];
        for (j, s) in values.iter().enumerate() {
            for row in 0..m {
                for col in 0..n {
                    e[row * n + col] += (s * u[j * m + row] * v[j * n + col]) as f32;
                }
            }
        }
        e
    }

    fn product(f: &LowRankFactors, m: usize, n: usize) -> Vec<f64> {
        let mut d = vec![0.0; m * n];
        for row in 0..m {
            for j in 0..f.rank {
                let b = f64::from(f.b[row * f.rank + j]);
                for col in 0..n {
                    d[row * n + col] += b * f64::from(f.a[j * n + col]);
                }
            }
        }
        d
    }

    /// `‖(E − B·A)·Xᵀ‖_F` for inputs `x` `[tokens, n]`.
    fn output_error(e: &[f32], f: &LowRankFactors, x: &[f32], m: usize, n: usize) -> f64 {
        let delta = product(f, m, n);
        let mut total = 0.0;
        for token in x.chunks_exact(n) {
            for row in 0..m {
                let r: f64 = (0..n)
                    .map(|c| (f64::from(e[row * n + c]) - delta[row * n + c]) * f64::from(token[c]))
                    .sum();
                total += r * r;
            }
        }
        total.sqrt()
    }

    fn hessian_of(x: &[f32], n: usize) -> Hessian {
        let mut h = Hessian::new(n);
        h.accumulate(x, x.len() / n).unwrap();
        h
    }

    /// With inputs whose Hessian is a multiple of the identity the factors are the truncated
    /// SVD, whose error Eckart–Young gives: `√(Σ_{i>r} σᵢ²)` for singular values chosen here.
    #[test]
    fn unweighted_error_is_the_eckart_young_bound() {
        let (m, n, r) = (48, 40, 6);
        let values: Vec<f64> = (0..20).map(|i| 10.0 * 0.8f64.powi(i)).collect();
        let e = from_svd(
            &values,
            &orthonormal(20, m, 1),
            &orthonormal(20, n, 2),
            m,
            n,
        );
        // One token a unit input: Σ x xᵀ = I.
        let x: Vec<f32> = (0..n * n)
            .map(|i| f32::from(u8::from(i % (n + 1) == 0)))
            .collect();
        let factors = calibrated_low_rank(&e, m, &hessian_of(&x, n), r, 0.0).unwrap();
        let bound = values[r..].iter().map(|s| s * s).sum::<f64>().sqrt();
        let error = output_error(&e, &factors, &x, m, n);
        assert!(
            (error - bound).abs() <= 1e-4 * bound,
            "{error} vs Eckart–Young {bound}"
        );
        // One rank fewer cannot reach it.
        let fewer = calibrated_low_rank(&e, m, &hessian_of(&x, n), r - 1, 0.0).unwrap();
        assert!(output_error(&e, &fewer, &x, m, n) > 1.2 * bound);
    }

    /// A residual of rank r is recovered whole, whatever the inputs' correlations.
    #[test]
    fn a_residual_of_the_rank_is_recovered() {
        let (m, n, r) = (32, 24, 4);
        let e = from_svd(
            &[5.0, 3.0, 2.0, 0.5],
            &orthonormal(r, m, 3),
            &orthonormal(r, n, 4),
            m,
            n,
        );
        let x: Vec<f32> = pseudo_gaussian(100 * n).iter().map(|&v| v as f32).collect();
        let factors = calibrated_low_rank(&e, m, &hessian_of(&x, n), r, 0.0).unwrap();
        let scale: f64 = e.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let delta = product(&factors, m, n);
        let gap = e
            .iter()
            .zip(&delta)
            .map(|(&a, b)| (f64::from(a) - b).powi(2))
            .sum::<f64>();
        assert!(
            gap.sqrt() <= 1e-5 * scale,
            "gap {} at scale {scale}",
            gap.sqrt()
        );
    }

    /// On inputs with a few strong directions, weighting by them leaves less output error than
    /// the plain truncated SVD of the same rank.
    #[test]
    fn weighting_by_the_inputs_beats_the_plain_svd_on_their_outputs() {
        let (m, n, r) = (40, 32, 4);
        let values: Vec<f64> = (0..24).map(|i| 1.0 + 0.05 * f64::from(i)).collect();
        let e = from_svd(
            &values,
            &orthonormal(24, m, 5),
            &orthonormal(24, n, 6),
            m,
            n,
        );
        // Inputs concentrated on a few features.
        let x: Vec<f32> = pseudo_gaussian(200 * n)
            .iter()
            .enumerate()
            .map(|(i, &v)| (v * if i % n < 3 { 20.0 } else { 0.3 }) as f32)
            .collect();
        let identity: Vec<f32> = (0..n * n)
            .map(|i| f32::from(u8::from(i % (n + 1) == 0)))
            .collect();
        let plain = calibrated_low_rank(&e, m, &hessian_of(&identity, n), r, 0.0).unwrap();
        let calibrated = calibrated_low_rank(&e, m, &hessian_of(&x, n), r, 0.01).unwrap();
        let (plain, calibrated) = (
            output_error(&e, &plain, &x, m, n),
            output_error(&e, &calibrated, &x, m, n),
        );
        assert!(
            calibrated < 0.5 * plain,
            "calibrated {calibrated}, plain {plain}"
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let x = vec![1f32; 8];
        let h = hessian_of(&x, 4);
        assert!(matches!(
            calibrated_low_rank(&[0.0; 7], 2, &h, 1, 0.01),
            Err(QuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            calibrated_low_rank(&[0.0; 8], 2, &h, 3, 0.01),
            Err(QuantError::InvalidRank { rank: 3, most: 2 })
        ));
        assert!(matches!(
            calibrated_low_rank(&[0.0; 8], 2, &Hessian::new(4), 1, 0.01),
            Err(QuantError::NoCalibrationTokens { .. })
        ));
    }
}
