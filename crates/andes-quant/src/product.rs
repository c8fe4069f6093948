//! Dense matrix products for GPTQ's f64 linear algebra, on the `gemm` crate's kernels (those of
//! Burn's CPU backend, so nothing more to build), over matrices that lie anywhere in a slice.

/// Where a matrix lies in a slice: element (r, c) at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Layout {
    /// The matrix from (`row`, `col`) of a row-major one with `stride` columns.
    pub(crate) fn row_major(row: usize, col: usize, stride: usize) -> Self {
        Layout {
            offset: row * stride + col,
            row_stride: stride,
            col_stride: 1,
        }
    }

    /// The same elements read as the transpose.
    pub(crate) fn transposed(self) -> Self {
        Layout {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The index of element (`rows − 1`, `cols − 1`), the farthest one.
    fn last(&self, rows: usize, cols: usize) -> usize {
        self.offset + (rows - 1) * self.row_stride + (cols - 1) * self.col_stride
    }
}

/// `dst += alpha · lhs · rhs` for `lhs` `[m, k]`, `rhs` `[k, n]` and `dst` `[m, n]` where their
/// layouts put them, on the `gemm` crate's kernels (those of Burn's CPU backend), in the
/// calling thread: quantization already runs one linear per core.
pub(crate) fn multiply_add(
    (dst, d): (&mut [f64], Layout),
    (lhs, a): (&[f64], Layout),
    (rhs, b): (&[f64], Layout),
    [m, n, k]: [usize; 3],
    alpha: f64,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(
        d.last(m, n) < dst.len() && a.last(m, k) < lhs.len() && b.last(k, n) < rhs.len(),
        "a matrix reaches past its slice"
    );
    // SAFETY: every element each layout reaches lies in its slice (checked above), and `dst`,
    // borrowed mutably, overlaps neither input. gemm computes dst := 1·dst + alpha·lhs·rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.offset),
            d.col_stride as isize,
            d.row_stride as isize,
            true,
            lhs.as_ptr().add(a.offset),
            a.col_stride as isize,
            a.row_stride as isize,
            rhs.as_ptr().add(b.offset),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
