//! Deterministic tensors and their values, for the tests of the operations that run in one
//! piece (attention, RMSNorm, the rotary rotation) against their composed forms.

use burn::tensor::{Device, Tensor, TensorData};

/// `shape` filled with `2·sin(0.618·(7919·i + 104729·seed))`: values spread over about
/// [-2, 2], different for each seed.
pub fn filled<const D: usize>(shape: [usize; D], seed: usize, device: &Device) -> Tensor<D> {
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| 2.0 * ((i * 7919 + seed * 104_729) as f32 * 0.618).sin())
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The tensor's values in f32, row-major.
pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// The largest difference between `a` and `b` over the largest magnitude in `b` (at least 1):
/// how far a kernel lands from its reference, on the reference's scale. Infinite where the
/// lengths differ or a value is not finite (a maximum would pass over a NaN).
#[cfg(feature = "cuda-untuned")]
pub fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.iter().chain(b).any(|x| !x.is_finite()) {
        return f32::INFINITY;
    }
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
