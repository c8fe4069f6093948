//! Dense Cholesky factorizations for GPTQ: the upper factor of the inverse of a symmetric positive
//! definite matrix, in f64.
//!
//! GPTQ (arXiv:2210.17323, section "Step 3: Cholesky reformulation") needs, for column `j`, the
//! row `j` of the inverse Hessian after columns `0..j` have been eliminated. Those rows, divided by
//! the square root of their diagonal, are exactly the rows of the upper Cholesky factor `U` of
//! `H⁻¹` (`H⁻¹ = UᵀU`). The reference computes it as `H = LLᵀ`, `H⁻¹ = L⁻ᵀL⁻¹`, then the
//! Cholesky factor of that: four `n³/6` passes. Here it takes two, from the factorization of `H`
//! in reversed order: with `P` the reversal, `PHP = L′L′ᵀ` gives `H = RRᵀ` with `R = PL′P` upper
//! triangular, so `H⁻¹ = (R⁻¹)ᵀR⁻¹` and, the factor with a positive diagonal being unique,
//! `U = R⁻¹ = P L′⁻¹ P`.

use crate::product::{Layout, multiply_add};

/// `U` upper triangular with `UᵀU = A⁻¹`, for a symmetric `a` `[n, n]` row-major. `Err(j)` when
/// `a` is not positive definite: eliminating the columns from the last one down, the pivot of
/// column `j` was not a positive finite number.
pub(crate) fn inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    // Reversing a row-major matrix's entries reverses both its rows and its columns: P·A·P.
    let reversed = |m: &[f64]| m.iter().rev().copied().collect::<Vec<f64>>();
    let l = cholesky_lower(&reversed(a), n).map_err(|i| n - 1 - i)?;
    Ok(reversed(&lower_triangular_inverse(&l, n)))
}

/// Rows and columns per block of the blocked factorizations: a block and the panel below it stay
/// in cache, and the work between blocks is matrix products.
const BLOCK: usize = 64;

/// `L` lower triangular with `LLᵀ = A`, reading only the lower triangle of `a`; `Err(i)` at the
/// first pivot that is not a positive finite number. Right-looking and blocked: factor a
/// diagonal block, solve the panel below it against that block, subtract the panel's outer
/// product from the trailing matrix in one matrix product (almost all of the `n³/6`
/// multiply-adds), and go on with the trailing matrix.
pub(crate) fn cholesky_lower(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = a.to_vec();
    let mut panel = Vec::with_capacity(n * BLOCK);
    for k0 in (0..n).step_by(BLOCK) {
        let k1 = (k0 + BLOCK).min(n);
        // The diagonal block, then each row of the panel below it, solved against the block's
        // factor; the earlier blocks' contributions are already subtracted.
        for i in k0..n {
            for j in k0..=i.min(k1 - 1) {
                let s = l[i * n + j] - dot(&l[i * n + k0..i * n + j], &l[j * n + k0..j * n + j]);
                if i == j {
                    if !(s > 0.0 && s.is_finite()) {
                        return Err(i);
                    }
                    l[i * n + i] = s.sqrt();
                } else {
                    l[i * n + j] = s / l[j * n + j];
                }
            }
        }
        // The trailing matrix: A₂₂ −= L₂₁ L₂₁ᵀ, on a copy of the panel L₂₁ (its upper half too;
        // that half is cleared at the end).
        let (m, b) = (n - k1, k1 - k0);
        panel.clear();
        panel.extend((k1..n).flat_map(|i| l[i * n + k0..i * n + k1].iter().copied()));
        let panel_layout = Layout::row_major(0, 0, b);
        multiply_add(
            (&mut l, Layout::row_major(k1, k1, n)),
            (&panel, panel_layout),
            (&panel, panel_layout.transposed()),
            [m, m, b],
            -1.0,
        );
    }
    for i in 0..n {
        l[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(l)
}

/// `Σ aᵢbᵢ` in eight interleaved partial sums, which the compiler keeps in vector registers (a
/// single running sum is a chain of dependent additions it may not reorder).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    const LANES: usize = 8;
    let mut partial = [0.0f64; LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for lane in 0..LANES {
            partial[lane] += x[lane] * y[lane];
        }
    }
    let tail: f64 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    partial.iter().sum::<f64>() + tail
}

/// `L⁻¹` of a lower triangular `l` with a non-zero diagonal, a block row at a time: with `X =
/// L⁻¹`, block row `I` is `X_II = L_II⁻¹` (forward substitution) and, left of it,
/// `X_I,<I = −X_II · (L_I,<I · X_<I,<I)`: two matrix products per block row.
fn lower_triangular_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut x = vec![0.0; n * n];
    let mut product = vec![0.0; BLOCK * n];
    let mut diagonal = vec![0.0; BLOCK * BLOCK];
    for i0 in (0..n).step_by(BLOCK) {
        let i1 = (i0 + BLOCK).min(n);
        let rows = i1 - i0;
        for i in i0..i1 {
            let d = l[i * n + i];
            for j in i0..=i {
                let identity = if i == j { 1.0 } else { 0.0 };
                let s: f64 = (j..i).map(|k| l[i * n + k] * x[k * n + j]).sum();
                x[i * n + j] = (identity - s) / d;
            }
        }
        let (done, current) = x.split_at_mut(i0 * n);
        product[..rows * n].fill(0.0);
        multiply_add(
            (&mut product, Layout::row_major(0, 0, n)),
            (l, Layout::row_major(i0, 0, n)),
            (done, Layout::row_major(0, 0, n)),
            [rows, i0, i0],
            1.0,
        );
        for r in 0..rows {
            diagonal[r * rows..(r + 1) * rows]
                .copy_from_slice(&current[r * n + i0..r * n + i0 + rows]);
        }
        multiply_add(
            (current, Layout::row_major(0, 0, n)),
            (&diagonal, Layout::row_major(0, 0, rows)),
            (&product, Layout::row_major(0, 0, n)),
            [rows, i0, rows],
            -1.0,
        );
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multiply(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|x| a[(x % n) * n + x / n]).collect()
    }

    /// `A = BBᵀ + I`, symmetric positive definite, for `B` with entries `entry(index)`.
    fn positive_definite(n: usize, entry: impl Fn(usize) -> f64) -> Vec<f64> {
        let b: Vec<f64> = (0..n * n).map(entry).collect();
        let mut a = multiply(&b, &transpose(&b, n), n);
        for i in 0..n {
            a[i * n + i] += 1.0;
        }
        a
    }

    fn assert_identity(m: &[f64], n: usize, tolerance: f64) {
        for i in 0..n {
            for j in 0..n {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((m[i * n + j] - expected).abs() < tolerance, "{i},{j}");
            }
        }
    }

    /// `U` is upper triangular and `(UᵀU) A = I`.
    fn assert_inverts(a: &[f64], n: usize, tolerance: f64) {
        let u = inverse_cholesky_upper(a, n).expect("positive definite");
        assert!(
            (0..n).all(|i| (0..i).all(|j| u[i * n + j] == 0.0)),
            "U is upper triangular"
        );
        assert_identity(
            &multiply(&multiply(&transpose(&u, n), &u, n), a, n),
            n,
            tolerance,
        );
    }

    #[test]
    fn upper_factor_of_the_inverse_times_the_matrix_is_the_identity() {
        let n = 4;
        let a = positive_definite(n, |x| ((x * 5 % 7) as f64 - 3.0) * 0.5);
        assert_inverts(&a, n, 1e-12);
    }

    #[test]
    fn blocked_factors_of_a_matrix_of_several_blocks_invert_it() {
        // Two full blocks and a partial one, so the panels, the trailing products and the
        // block rows of the inverse all run.
        let n = 2 * BLOCK + 22;
        let a = positive_definite(n, |x| ((x * 7919 % 1013) as f64 / 1013.0 - 0.5) * 2.0);
        assert_inverts(&a, n, 1e-8);
        let l = cholesky_lower(&a, n).expect("positive definite");
        assert_identity(&multiply(&l, &lower_triangular_inverse(&l, n), n), n, 1e-10);
    }

    #[test]
    fn a_singular_matrix_is_refused_at_its_first_dependent_column_from_the_last() {
        // Columns 0 and 1 equal: eliminating 2 and then 1, column 0's pivot is exactly
        // 4 - 2·2 = 0.
        let a = [4.0, 4.0, 0.0, 4.0, 4.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(inverse_cholesky_upper(&a, 3), Err(0));
    }
}
