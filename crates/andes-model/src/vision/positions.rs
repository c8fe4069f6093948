//! Absolute and rotary position tables for a patch grid of any shape (native resolution).

use burn::tensor::{Device, Tensor, TensorData};

/// Row-major `[out_len, in_len]` weights of PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` along one axis:
/// a triangle filter widened by the downscale factor, normalised per output (SigLIP2 resizes
/// its learned position grid this way). Computed in f32 in the order transformers uses.
pub fn antialiased_bilinear_weights(in_len: usize, out_len: usize) -> Vec<f32> {
    let scale = in_len as f32 / out_len as f32;
    let support = scale.max(1.0);
    let mut weights = vec![0.0f32; out_len * in_len];
    for (o, row) in weights.chunks_exact_mut(in_len).enumerate() {
        let center = (o as f32 + 0.5) * scale - 0.5;
        for (i, w) in row.iter_mut().enumerate() {
            *w = (1.0 - (i as f32 - center).abs() / support).max(0.0);
        }
        let total: f32 = row.iter().sum();
        row.iter_mut().for_each(|w| *w /= total);
    }
    weights
}

/// Row-major `[out_len, in_len]` weights of PyTorch's bicubic resize along one axis
/// (`F.interpolate(mode="bicubic", align_corners=False)`, and `F.grid_sample(mode="bicubic",
/// padding_mode="border")` at pixel centres): source `(o + 0.5)·in/out − 0.5`, Keys' cubic
/// with a = −0.75 on the four nearest taps, a tap outside the grid read from the nearest
/// edge (its weight added there).
pub fn bicubic_weights(in_len: usize, out_len: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = in_len as f32 / out_len as f32;
    let mut weights = vec![0.0f32; out_len * in_len];
    for (o, row) in weights.chunks_exact_mut(in_len).enumerate() {
        let source = scale * (o as f32 + 0.5) - 0.5;
        let floor = source.floor();
        let t = source - floor;
        let taps = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, w) in taps.into_iter().enumerate() {
            let index = (floor as isize - 1 + k as isize).clamp(0, in_len as isize - 1);
            row[index as usize] += w;
        }
    }
    weights
}

/// Resizes a learned `[side, side, dim]` grid to `[rows·cols, dim]` (row-major patches) with
/// antialiased bilinear interpolation along rows, then along columns.
pub fn resize_grid(grid: Tensor<3>, rows: usize, cols: usize) -> Tensor<2> {
    separable_resize(grid, rows, cols, antialiased_bilinear_weights)
}

/// [`resize_grid`] with PyTorch's bicubic weights ([`bicubic_weights`]).
pub fn bicubic_resize_grid(grid: Tensor<3>, rows: usize, cols: usize) -> Tensor<2> {
    separable_resize(grid, rows, cols, bicubic_weights)
}

fn separable_resize(
    grid: Tensor<3>,
    rows: usize,
    cols: usize,
    weights: fn(usize, usize) -> Vec<f32>,
) -> Tensor<2> {
    let [side, side_w, dim] = grid.dims();
    let device = grid.device();
    let weight_tensor = |in_len, out_len| {
        Tensor::<2>::from_data(
            TensorData::new(weights(in_len, out_len), [out_len, in_len]),
            &device,
        )
    };
    let row_weights = weight_tensor(side, rows);
    let col_weights = weight_tensor(side_w, cols);
    // [rows, side] · [side, side_w·dim] → [rows, side_w, dim]
    let by_rows = row_weights
        .matmul(grid.reshape([side, side_w * dim]))
        .reshape([rows, side_w, dim]);
    // [rows, cols, side_w] · [rows, side_w, dim] → [rows, cols, dim]
    let col_weights: Tensor<3> = col_weights.unsqueeze::<3>().expand([rows, cols, side_w]);
    col_weights.matmul(by_rows).reshape([rows * cols, dim])
}

/// AIMv2's native-resolution position embeddings, `[rows·cols, dim]`: per patch the four
/// quarters `[sin(c·ω) | cos(c·ω) | sin(r·ω) | cos(r·ω)]` with `ω_k = 10000^(-k/(dim/4))`,
/// column quarters first as the checkpoints were trained; computed in f64, stored in f32.
pub fn sincos_2d(rows: usize, cols: usize, dim: usize, device: &Device) -> Tensor<2> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut values = Vec::with_capacity(rows * cols * dim);
    for r in 0..rows {
        for c in 0..cols {
            for position in [c as f64, r as f64] {
                values.extend(omega.iter().map(|w| (position * w).sin() as f32));
                values.extend(omega.iter().map(|w| (position * w).cos() as f32));
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [rows * cols, dim]), device)
}

/// cos/sin tables `[rows·cols, head_dim]` of 2D rotary embeddings (the scheme of Qwen2-VL's
/// vision tower): the first half of the angles follows the patch row, the second half its
/// column, each with inverse frequencies `θ^(-2k/(head_dim/2))`, then both halves duplicated
/// for the rotate-half convention.
pub fn rope_2d_tables(
    rows: usize,
    cols: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let dim = head_dim / 2;
    let inv_freq: Vec<f32> = (0..dim / 2)
        .map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(rows * cols * head_dim);
    let mut sin = Vec::with_capacity(rows * cols * head_dim);
    for r in 0..rows {
        for c in 0..cols {
            let angles: Vec<f32> = [r, c]
                .iter()
                .flat_map(|&p| inv_freq.iter().map(move |f| p as f32 * f))
                .collect();
            for _copy in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
    }
    let shape = [rows * cols, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_resize_is_identity_and_rows_sum_to_one() {
        let identity = antialiased_bilinear_weights(4, 4);
        for o in 0..4 {
            for i in 0..4 {
                assert_eq!(identity[o * 4 + i], if o == i { 1.0 } else { 0.0 });
            }
        }
        for (in_len, out_len) in [(16, 5), (16, 37), (3, 1)] {
            for row in antialiased_bilinear_weights(in_len, out_len).chunks(in_len) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn bicubic_is_the_identity_at_the_same_size_and_rows_sum_to_one() {
        let identity = bicubic_weights(5, 5);
        for o in 0..5 {
            for i in 0..5 {
                let expected = if o == i { 1.0 } else { 0.0 };
                assert!(
                    (identity[o * 5 + i] - expected).abs() < 1e-7,
                    "{identity:?}"
                );
            }
        }
        for (in_len, out_len) in [(4, 7), (16, 5), (2, 9)] {
            for row in bicubic_weights(in_len, out_len).chunks(in_len) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn downscale_by_two_averages_pairs_with_the_triangle_filter() {
        // in 4 → out 2: scale 2, centre 0.5 for output 0: weights ∝ 1 - |i - 0.5|/2 over i=0..3
        // = [0.75, 0.75, 0.25, 0] → normalised by 1.75: [3/7, 3/7, 1/7, 0].
        let w = antialiased_bilinear_weights(4, 2);
        let expected = [3.0 / 7.0, 3.0 / 7.0, 1.0 / 7.0, 0.0];
        for (a, b) in w[..4].iter().zip(expected) {
            assert!((a - b).abs() < 1e-7, "{w:?}");
        }
    }
}
