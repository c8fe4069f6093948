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

/// `U` upper triangular with `UᵀU = A⁻¹`, for a symmetric `a` `[n, n]` row-major. `Err(j)` when
/// `a` is not positive definite: eliminating the columns from the last one down, the pivot of
/// column `j` was not a positive finite number.
pub(crate) fn inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    // Reversing a row-major matrix's entries reverses both its rows and its columns: P·A·P.
    let reversed = |m: &[f64]| m.iter().rev().copied().collect::<Vec<f64>>();
    let l = cholesky_lower(&reversed(a), n).map_err(|i| n - 1 - i)?;
    Ok(reversed(&lower_triangular_inverse(&l, n)))
}

/// `L` lower triangular with `LLᵀ = A` (Cholesky–Banachiewicz, row by row), reading only the
/// lower triangle of `a`; `Err(i)` at the first pivot that is not a positive finite number.
fn cholesky_lower(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - dot(&l[i * n..i * n + j], &l[j * n..j * n + j]);
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

/// `L⁻¹` of a lower triangular `l` with a non-zero diagonal, by forward substitution, row by
/// row: row `i` of `L⁻¹` is `(eᵢ − Σ_{k<i} L[i][k] · row k of L⁻¹) / L[i][i]`.
fn lower_triangular_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        let (done, rest) = inv.split_at_mut(i * n);
        let row = &mut rest[..=i];
        row[i] = 1.0;
        for k in 0..i {
            let lik = l[i * n + k];
            if lik == 0.0 {
                continue;
            }
            for (r, &x) in row.iter_mut().zip(&done[k * n..k * n + k + 1]) {
                *r -= lik * x;
            }
        }
        let d = l[i * n + i];
        for r in row.iter_mut() {
            *r /= d;
        }
    }
    inv
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

    #[test]
    fn upper_factor_of_the_inverse_times_the_matrix_is_the_identity() {
        let n = 4;
        // A = BBᵀ + I for a fixed B: symmetric positive definite.
        let b: Vec<f64> = (0..n * n)
            .map(|x| ((x * 5 % 7) as f64 - 3.0) * 0.5)
            .collect();
        let mut a = multiply(&b, &transpose(&b, n), n);
        for i in 0..n {
            a[i * n + i] += 1.0;
        }
        let u = inverse_cholesky_upper(&a, n).expect("positive definite");
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0, "U is upper triangular");
            }
        }
        // (UᵀU) A = I.
        let product = multiply(&multiply(&transpose(&u, n), &u, n), &a, n);
        for i in 0..n {
            for j in 0..n {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((product[i * n + j] - expected).abs() < 1e-12, "{i},{j}");
            }
        }
    }

    #[test]
    fn a_singular_matrix_is_refused_at_its_first_dependent_column_from_the_last() {
        // Columns 0 and 1 equal: eliminating 2 and then 1, column 0's pivot is exactly
        // 4 - 2·2 = 0.
        let a = [4.0, 4.0, 0.0, 4.0, 4.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(inverse_cholesky_upper(&a, 3), Err(0));
    }
}
