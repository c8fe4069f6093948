//! How a product of row-major tensors is read by cuBLASLt, which is column-major: which
//! operand is transposed, the leading dimensions, the batch strides, and when it cannot be
//! read at all. Plain arithmetic on shapes and strides, so it is tested on every build; only
//! the launch (`launch.rs`) needs CUDA.
#![cfg_attr(not(feature = "cublas"), allow(dead_code))]

use burn::tensor::DType;

/// One tensor of a product as it lies in memory.
#[derive(Clone, Copy, Debug)]
pub(super) struct Matrix<'a> {
    pub(super) dtype: DType,
    pub(super) shape: &'a [usize],
    pub(super) strides: &'a [usize],
}

/// How a row-major product `out[.., m, n] = lhs[.., m, k] · rhs[.., k, n]` maps onto
/// cuBLASLt's column-major `D = op(A) · op(B)`: computed as `outᵀ = rhsᵀ · lhsᵀ`, because a
/// row-major matrix read as column-major is its transpose, so no operand is copied.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct Product {
    /// cuBLASLt's `A`: the right-hand operand.
    pub(super) a: Operand,
    /// cuBLASLt's `B`: the left-hand operand.
    pub(super) b: Operand,
    /// cuBLASLt's `D` (and `C`, unused with β = 0): `n` rows, `m` columns, leading dimension,
    /// and strides as for the operands.
    pub(super) d: Operand,
    /// Matrices a call computes as one strided batch.
    pub(super) batch: i32,
    /// Calls, one per index of the leading batch dims when the batch cannot be walked with
    /// one stride (attention's `[b, h]` over a `[b, s, h, d]` buffer).
    pub(super) calls: usize,
    pub(super) dtypes: Dtypes,
}

/// One matrix as cuBLASLt reads it: column-major `rows × cols` with a leading dimension,
/// whether the product reads it transposed, the stride between the matrices of a call's batch
/// and between calls (elements; 0 when broadcast).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct Operand {
    pub(super) rows: u64,
    pub(super) cols: u64,
    pub(super) ld: i64,
    pub(super) transposed: bool,
    pub(super) batch_stride: i64,
    pub(super) call_stride: usize,
}

/// The element types of the operands and the output, and the compute type: bf16 and f16 with
/// f32 accumulation; f32 through TF32, as Burn's own CUDA products compute f32 (so the two
/// routines agree on what an f32 product means).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct Dtypes {
    pub(super) operands: DType,
    pub(super) out: DType,
}

impl Dtypes {
    pub(super) fn of(lhs: DType, rhs: DType, out: DType) -> Option<Self> {
        let supported = matches!(
            (lhs, out),
            (DType::BF16, DType::BF16 | DType::F32)
                | (DType::F16, DType::F16 | DType::F32)
                | (DType::F32, DType::F32)
        );
        (supported && lhs == rhs).then_some(Self { operands: lhs, out })
    }
}

/// A matrix's two strides read as a column-major layout: `Some((transposed, ld))` where the
/// row-major `rows × cols` matrix is, in column-major terms, `cols × rows` with leading
/// dimension `ld` (not transposed) or `rows × cols` (transposed); `None` when neither stride
/// is 1 (a strided view cuBLASLt cannot read).
fn column_major(
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> Option<(bool, usize)> {
    if col_stride == 1 || cols == 1 {
        let ld = if rows == 1 { cols } else { row_stride };
        if ld >= cols.max(1) {
            return Some((false, ld));
        }
    }
    if row_stride == 1 || rows == 1 {
        let ld = if cols == 1 { rows } else { col_stride };
        if ld >= rows.max(1) {
            return Some((true, ld));
        }
    }
    None
}

/// The stride walking `dims` (sizes and strides) as one run of matrices, 0 when they hold one
/// matrix; `None` when no single stride walks them.
fn walk(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let mut walked: Option<(usize, usize)> = None; // (innermost stride, stride after the dims so far)
    for (&size, &stride) in dims
        .iter()
        .zip(strides)
        .rev()
        .filter(|(size, _)| **size > 1)
    {
        walked = match walked {
            None => Some((stride, stride * size)),
            Some((inner, next)) if stride == next => Some((inner, stride * size)),
            Some(_) => return None,
        };
    }
    Some(walked.map_or(0, |(inner, _)| inner))
}

/// A tensor's batch strides for a product whose batch dims are `batch`, split at `split`:
/// `(stride between calls over batch[..split], stride within a call over batch[split..])`, both
/// 0 where the tensor has one matrix broadcast over the batch; `None` when its dims cannot be
/// walked that way.
fn batch_strides(
    shape: &[usize],
    strides: &[usize],
    batch: &[usize],
    split: usize,
) -> Option<(usize, usize)> {
    let dims = &shape[..shape.len() - 2];
    if dims.iter().product::<usize>() == 1 {
        return Some((0, 0));
    }
    if dims != batch {
        return None;
    }
    Some((
        walk(&dims[..split], &strides[..split])?,
        walk(&dims[split..], &strides[split..dims.len()])?,
    ))
}

impl Product {
    /// The product of `lhs · rhs` into `out`, or `None` where cuBLASLt cannot read one of
    /// them as it lies in memory.
    pub(super) fn of(lhs: Matrix, rhs: Matrix, out: Matrix) -> Option<Self> {
        let dtypes = Dtypes::of(lhs.dtype, rhs.dtype, out.dtype)?;
        let (ls, rs, os) = (lhs.shape, rhs.shape, out.shape);
        let rank = os.len();
        if rank < 2 || ls.len() != rank || rs.len() != rank {
            return None;
        }
        let (m, k, n) = (ls[rank - 2], ls[rank - 1], rs[rank - 1]);
        if rs[rank - 2] != k || os[rank - 2] != m || os[rank - 1] != n || m * n * k == 0 {
            return None;
        }
        let (lt, rt, ot) = (lhs.strides, rhs.strides, out.strides);
        let (lhs_t, lhs_ld) = column_major(m, k, lt[rank - 2], lt[rank - 1])?;
        let (rhs_t, rhs_ld) = column_major(k, n, rt[rank - 2], rt[rank - 1])?;
        let (out_t, out_ld) = column_major(m, n, ot[rank - 2], ot[rank - 1])?;
        if out_t {
            return None;
        }
        // One call over the whole batch where every tensor walks it with one stride, else one
        // call per index of all but the last batch dim.
        let batch = &os[..rank - 2];
        let strides_at = |split| {
            Some((
                batch_strides(ls, lt, batch, split)?,
                batch_strides(rs, rt, batch, split)?,
                batch_strides(os, ot, batch, split)?,
            ))
        };
        let split = if strides_at(0).is_some() {
            0
        } else {
            batch.len().saturating_sub(1)
        };
        let (lhs_b, rhs_b, out_b) = strides_at(split)?;
        let operand = |transposed: bool,
                       rows: usize,
                       cols: usize,
                       ld: usize,
                       (call, within): (usize, usize)| {
            // Not transposed: the row-major rows × cols matrix is column-major cols × rows.
            let (rows, cols) = if transposed {
                (rows, cols)
            } else {
                (cols, rows)
            };
            Operand {
                rows: rows as u64,
                cols: cols as u64,
                ld: ld as i64,
                transposed,
                batch_stride: within as i64,
                call_stride: call,
            }
        };
        Some(Self {
            a: operand(rhs_t, k, n, rhs_ld, rhs_b),
            b: operand(lhs_t, m, k, lhs_ld, lhs_b),
            d: operand(false, m, n, out_ld, out_b),
            batch: i32::try_from(batch[split..].iter().product::<usize>()).ok()?,
            calls: batch[..split].iter().product(),
            dtypes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    #[test]
    fn strides_read_as_column_major_layouts() {
        // a contiguous 4×3 matrix is column-major 3×4 with ld 3, not transposed
        assert_eq!(column_major(4, 3, 3, 1), Some((false, 3)));
        // its transpose view (strides swapped) reads the same memory transposed
        assert_eq!(column_major(3, 4, 1, 3), Some((true, 3)));
        // a row of a wider buffer keeps the buffer's row stride
        assert_eq!(column_major(4, 3, 8, 1), Some((false, 8)));
        // neither stride 1: a strided view cuBLASLt cannot read
        assert_eq!(column_major(4, 3, 6, 2), None);
        // a single row: its row stride does not matter
        assert_eq!(column_major(1, 5, 0, 1), Some((false, 5)));
    }

    #[test]
    fn batch_dims_walk_with_one_stride_or_split_into_calls() {
        // [2, 3, m, k] contiguous: one call, matrices 12 apart
        assert_eq!(
            batch_strides(&[2, 3, 4, 3], &[36, 12, 3, 1], &[2, 3], 0),
            Some((0, 12))
        );
        // one matrix for the whole batch
        assert_eq!(
            batch_strides(&[1, 1, 3, 5], &[15, 15, 5, 1], &[2, 3], 0),
            Some((0, 0))
        );
        // heads split off a [b, s, h, d] buffer, [b, h, s, d] with h·d-long rows: no single
        // stride, so a call per b (60 apart) over its h heads (5 apart)
        assert_eq!(
            batch_strides(&[2, 3, 4, 5], &[60, 5, 15, 1], &[2, 3], 0),
            None
        );
        assert_eq!(
            batch_strides(&[2, 3, 4, 5], &[60, 5, 15, 1], &[2, 3], 1),
            Some((60, 5))
        );
        // partly broadcast: one dim 1 where the output has 2
        assert_eq!(
            batch_strides(&[1, 3, 4, 5], &[60, 20, 5, 1], &[2, 3], 0),
            None
        );
    }

    fn contiguous(shape: &[usize]) -> Vec<usize> {
        let mut strides = vec![1; shape.len()];
        for i in (0..shape.len() - 1).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        strides
    }

    #[test]
    fn a_linear_layer_reads_its_weight_transposed_and_its_input_as_one_matrix() {
        // x [4·1024, 1024] · Wᵀ, W stored [3072, 1024] (PyTorch's layout) and viewed [1024, 3072]
        let (x, w_t, out) = ([1, 4096, 1024], [1, 1024, 3072], [1, 4096, 3072]);
        let (xs, ws, os) = (contiguous(&x), vec![3072 * 1024, 1, 1024], contiguous(&out));
        let matrix = |shape, strides| Matrix {
            dtype: DType::BF16,
            shape,
            strides,
        };
        let product = Product::of(matrix(&x, &xs), matrix(&w_t, &ws), matrix(&out, &os)).unwrap();
        // A = Wᵀ as stored, column-major 1024 × 3072 read transposed: op(A) is 3072 × 1024
        assert_eq!(
            (
                product.a.rows,
                product.a.cols,
                product.a.ld,
                product.a.transposed
            ),
            (1024, 3072, 1024, true)
        );
        // B = xᵀ: column-major 1024 × 4096, not transposed
        assert_eq!(
            (
                product.b.rows,
                product.b.cols,
                product.b.ld,
                product.b.transposed
            ),
            (1024, 4096, 1024, false)
        );
        assert_eq!(
            (product.d.rows, product.d.cols, product.d.ld),
            (3072, 4096, 3072)
        );
        assert_eq!((product.batch, product.calls), (1, 1));
    }

    #[test]
    fn attention_scores_over_heads_split_off_the_sequence_run_a_call_per_window() {
        // q [b, h, s, d] viewed from [b, s, h, d]; k contiguous [b, h, s, d] viewed as kᵀ, which
        // cuBLASLt reads transposed
        let (b, h, s, d) = (4, 16, 1024, 128);
        let q_strides = [s * h * d, d, h * d, 1];
        let k_t_strides = [h * s * d, s * d, 1, d];
        let out = [b, h, s, s];
        let product = Product::of(
            Matrix {
                dtype: DType::BF16,
                shape: &[b, h, s, d],
                strides: &q_strides,
            },
            Matrix {
                dtype: DType::BF16,
                shape: &[b, h, d, s],
                strides: &k_t_strides,
            },
            Matrix {
                dtype: DType::F32,
                shape: &out,
                strides: &contiguous(&out),
            },
        )
        .unwrap();
        assert_eq!((product.batch, product.calls), (h as i32, b));
        assert_eq!(
            (product.b.ld, product.b.batch_stride, product.b.call_stride),
            ((h * d) as i64, d as i64, s * h * d)
        );
        assert_eq!(
            (product.a.transposed, product.a.batch_stride),
            (true, (s * d) as i64)
        );
        assert_eq!(product.d.batch_stride, (s * s) as i64);
    }

    #[test]
    fn products_cublaslt_lacks_are_left_to_cubecl() {
        let (shape, strides) = ([8, 8], [8, 1]);
        let matrix = |dtype| Matrix {
            dtype,
            shape: &shape,
            strides: &strides,
        };
        assert!(Product::of(matrix(DType::F32), matrix(DType::BF16), matrix(DType::F32)).is_none());
        assert!(Product::of(matrix(DType::I32), matrix(DType::I32), matrix(DType::I32)).is_none());
        assert!(
            Product::of(matrix(DType::BF16), matrix(DType::BF16), matrix(DType::F32)).is_some()
        );
        let strided = Matrix {
            dtype: DType::F32,
            shape: &shape,
            strides: &[16, 2],
        };
        assert!(Product::of(strided, matrix(DType::F32), matrix(DType::F32)).is_none());
    }
}
