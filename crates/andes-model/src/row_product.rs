//! `x·W + b` for the projections, with one-row products split along the inner dimension.
//!
//! Decoding at batch 1 multiplies one row by each weight. cubek's matrix product spreads its
//! blocks over the output only, so a `[1, 3072]·[3072, 1024]` down projection launches 64
//! blocks on a GPU of 132 multiprocessors and streams its 12.6 MB of weight at about 3% of the
//! memory bandwidth (Nsight Compute on an H200,
//! `benchmarks/results/2026-11-26-h200-forward-replay/`). Cutting the inner dimension into
//! chunks makes it a batched product with that many times the blocks, followed by one sum over
//! the chunks.
//!
//! Under mixed precision ([`crate::precision::Autocast`]) the product reads its operands in
//! the autocast dtype and returns the caller's dtype.

use burn::tensor::Tensor;
use burn::tensor::module::linear;

use crate::precision::operand;

/// Inner-dimension chunks are kept at least this long, so each block still streams a
/// useful run of the weight.
const MIN_CHUNK: usize = 128;
/// At most this many chunks: enough blocks to fill the GPU for the projections of small models.
const MAX_CHUNKS: usize = 16;

/// `x·weight + bias` for `x` `[.., in]` and `weight` `[in, out]`, as [`linear`]; a single row
/// (`x` holding `in` values) goes through inner-dimension chunks when `in` is long enough.
pub fn linear_rows<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dtype = x.dtype();
    split_product(operand(x), operand(weight), bias.map(operand)).cast(dtype)
}

fn split_product<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let [inner, outer] = weight.dims();
    let chunks = chunks(inner);
    if x.shape().num_elements() != inner || chunks == 1 {
        return linear(x, weight, bias);
    }
    let mut out_shape = x.dims();
    out_shape[D - 1] = outer;
    let partial = x
        .reshape([chunks, 1, inner / chunks])
        .matmul(weight.reshape([chunks, inner / chunks, outer]));
    let product = partial.sum_dim(0).reshape(out_shape);
    match bias {
        Some(bias) => product + bias.unsqueeze(),
        None => product,
    }
}

/// The most chunks (a power of two up to [`MAX_CHUNKS`]) that divide `inner` into runs of at
/// least [`MIN_CHUNK`]; 1 when `inner` is too short to split.
fn chunks(inner: usize) -> usize {
    let mut chunks = 1;
    while chunks < MAX_CHUNKS
        && inner.is_multiple_of(chunks * 2)
        && inner / (chunks * 2) >= MIN_CHUNK
    {
        chunks *= 2;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn chunks_follow_the_inner_dimension() {
        assert_eq!(chunks(64), 1);
        assert_eq!(chunks(256), 2);
        assert_eq!(chunks(1024), 8);
        assert_eq!(chunks(3072), 16);
        assert_eq!(chunks(1000), 4);
        assert_eq!(chunks(1001), 1);
    }

    /// A split one-row product equals the plain one (bias included), and more rows are
    /// left to the plain product.
    #[test]
    fn a_split_row_product_equals_the_plain_product() {
        let device = Device::flex();
        let normal = Distribution::Normal(0.0, 1.0);
        let weight = Tensor::<2>::random([1024, 96], normal, &device);
        let bias = Tensor::<1>::random([96], normal, &device);
        for rows in [1, 3] {
            let x = Tensor::<3>::random([1, rows, 1024], normal, &device);
            let split = linear_rows(x.clone(), weight.clone(), Some(bias.clone()));
            let plain = linear(x, weight.clone(), Some(bias.clone()));
            assert_eq!(split.dims(), [1, rows, 96]);
            split
                .into_data()
                .assert_approx_eq::<f32>(&plain.into_data(), Tolerance::absolute(1e-4));
        }
    }
}
