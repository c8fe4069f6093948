//! Dense Cholesky factorizations for GPTQ: the upper factor of the inverse of a symmetric positive
//! definite matrix, in f64.
//!
//! GPTQ (arXiv:2210.17323, section "Step 3: Cholesky reformulation") needs, for column `j`, the
//! row `j` of the inverse Hessian after columns `0..j` have been eliminated. Those rows, divided by
//! the square root of their diagonal, are exactly the rows of the upper Cholesky factor `U` of
//! `H⁻¹` (`H⁻¹ = UᵀU`). Computed as the reference does it: `H = LLᵀ`, `H⁻¹ = L⁻ᵀL⁻¹`, then the
//! Cholesky factor of that.

/// `U` upper triangular with `UᵀU = A⁻¹`, for a symmetric `a` `[n, n]` row-major. `Err(j)` when
/// `a` (or, from rounding, its inverse) is not positive definite: the factorization found a
/// pivot that is not a positive finite number at column `j`.
pub(crate) fn inverse_cholesky_upper(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let l = cholesky_lower(a, n)?;
    let l_inv = lower_triangular_inverse(&l, n);
    // A⁻¹ = L⁻ᵀ L⁻¹: entry (i, j) = Σ_k L⁻¹[k][i] L⁻¹[k][j], k ≥ max(i, j). Rows of L⁻¹ are
    // added as outer products so the inner loop runs along contiguous memory.
    let mut inverse = vec![0.0; n * n];
    for k in 0..n {
        let row = &l_inv[k * n..k * n + k + 1];
        for (i, &ri) in row.iter().enumerate() {
            let target = &mut inverse[i * n..i * n + k + 1];
            for (t, &rj) in target.iter_mut().zip(row) {
                *t += ri * rj;
            }
        }
    }
    let l2 = cholesky_lower(&inverse, n)?;
    let mut u = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = l2[i * n + j];
        }
    }
    Ok(u)
}

/// `L` lower triangular with `LLᵀ = a`; reads only the lower triangle of `a`.
fn cholesky_lower(a: &[f64], n: usize) -> Result<Vec<f64>, usize> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = l[i * n..i * n + j]
                .iter()
                .zip(&l[j * n..j * n + j])
                .map(|(x, y)| x * y)
                .sum();
            let s = a[i * n + j] - dot;
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

/// `L⁻¹` of a lower triangular `l` with a positive diagonal, by forward substitution on the rows
/// of the identity: row `i` of `L⁻¹` is `(eᵢ − Σ_{k<i} L[i][k] · row k of L⁻¹) / L[i][i]`.
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
    fn a_singular_matrix_is_refused_at_its_first_dependent_column() {
        // Columns 0 and 1 equal: the second pivot is exactly 4 - 2·2 = 0.
        let a = [4.0, 4.0, 0.0, 4.0, 4.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(inverse_cholesky_upper(&a, 3), Err(1));
    }
}
