//! Fake quantization on Burn tensors: the weight a phone will run, computed inside training so
//! that gradients can flow around the rounding.
//!
//! Forward, per element, with the group's scale `s` (an f16 value) and zero point `z`:
//! `code = clamp(round(w / s) + z, 0, qmax)` (binary: the nearer of its two levels), then
//! `w_q = s · (code − z)`: exactly [`crate::quantize_code`] and [`crate::dequantize_code`], op for
//! op in f32, so the output equals `dequantize(quantize_on_grid(w))` bit for bit. Backward:
//!
//! * weights, straight through (Bengio et al. 2013) and clipped: `∂w_q/∂w = 1` where
//!   `w / s + z` lies inside `[0, qmax]`, else 0;
//! * scales, LSQ (Esser et al. 2020, arXiv:1902.08153, eq. 3): `∂w_q/∂s = round(w/s) − w/s`
//!   inside the grid, `qmin − z` or `qmax − z` at the clipped ends, times the gradient scale
//!   `g = 1 / √(group_len · qmax)` (LSQ's `1/√(N·Q_P)`) so scale steps match weight steps.
//!
//! The trick that gives both: `code` is computed without gradient, and a surrogate with the
//! wanted derivative is added as `surrogate − detach(surrogate)`, which is exactly zero in the
//! forward pass; the same is done for the f16 rounding of the scale and the gradient scale `g`.

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use half::f16;

use crate::error::QuantError;
use crate::format::{Bits, QuantFormat};
use crate::rtn::quantize_on_grid;
use crate::tensor::{QuantizedTensor, WeightShape};

/// A quantization grid for one `[out_features, in_features]` weight (Hugging Face layout), with
/// scales that may train.
#[derive(Module, Debug)]
pub struct FakeQuantizer {
    /// The scales, `[out_features, groups_per_row]`, held in f32 but rounded to f16 (to nearest)
    /// in every forward pass, as the package stores them. Trainable unless frozen.
    pub scale: Param<Tensor<2>>,
    /// The zero points as [`crate::dequantize_code`] takes them, `[out_features,
    /// groups_per_row]`; constant.
    pub zero: Tensor<2>,
    #[module(skip)]
    format: QuantFormat,
}

impl FakeQuantizer {
    /// The grid of `quantized` (its f16 scales and its zero points) on `device`, scales
    /// trainable when `learn_scales`.
    pub fn from_grid(quantized: &QuantizedTensor, device: &Device, learn_scales: bool) -> Self {
        let shape = quantized.shape();
        let groups = quantized.groups_per_row();
        let scales: Vec<f32> = quantized.scales().iter().map(|&s| f32::from(s)).collect();
        let grid = |values: Vec<f32>| {
            Tensor::<2>::from_data(
                TensorData::new(values, [shape.out_features, groups]),
                device,
            )
        };
        Self {
            scale: Param::from_tensor(grid(scales)).set_require_grad(learn_scales),
            zero: grid(quantized.zero_points()),
            format: quantized.format(),
        }
    }

    /// The format of the grid.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// `weight` `[out_features, in_features]` as its quantized values, with the straight-through
    /// and LSQ gradients of the module docs.
    pub fn forward(&self, weight: Tensor<2>) -> Tensor<2> {
        let [out_features, in_features] = weight.dims();
        let bits = self.format.bits();
        let qmax = f64::from(bits.max_code());
        let group_len = self.format.granularity().group_len(in_features);
        let per_element = |grid: Tensor<2>| {
            let groups = grid.dims()[1];
            grid.unsqueeze_dim::<3>(2)
                .expand([out_features, groups, group_len])
                .reshape([out_features, groups * group_len])
                .slice([0..out_features, 0..in_features])
        };
        let raw = self.scale.val();
        let g = 1.0 / ((group_len as f64) * qmax).sqrt();
        let scaled = raw.clone().mul_scalar(g);
        let f16_scale = raw.cast(DType::F16).cast(DType::F32).detach();
        let scale = per_element(f16_scale + (scaled.clone() - scaled.detach()));
        let zero = per_element(self.zero.clone());
        let zero_scale = scale.clone().equal_elem(0.0);
        let x = weight.clone() / scale.clone().mask_fill(zero_scale.clone(), 1.0);
        let code = if bits == Bits::Int1 {
            let positive_weight = weight.detach().greater_equal_elem(0.0);
            let positive_scale = scale.clone().detach().greater_elem(0.0);
            positive_weight
                .equal(positive_scale)
                .float()
                .mask_fill(zero_scale.clone(), 1.0)
        } else {
            (x.clone().detach().round() + zero.clone())
                .clamp(0.0, qmax)
                .mask_where(zero_scale.clone(), zero.clone())
        };
        let surrogate = (x + zero.clone())
            .clamp(0.0, qmax)
            .mask_fill(zero_scale, 0.0);
        let code = code + (surrogate.clone() - surrogate.detach());
        scale * (code - zero)
    }

    /// The package form of `weight` (`[out_features, in_features]` row-major f32) on this grid,
    /// scales rounded to f16 as the forward pass rounds them: its dequantization is
    /// [`Self::forward`]'s output bit for bit.
    pub fn quantize(
        &self,
        weight: &[f32],
        shape: WeightShape,
    ) -> Result<QuantizedTensor, QuantError> {
        let values = |t: Tensor<2>| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 tensor data")
        };
        let scales: Vec<f16> = values(self.scale.val())
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let zeros = values(self.zero.clone());
        quantize_on_grid(weight, shape, self.format, &scales, &zeros)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::rtn::quantize_rtn;
    use crate::tensor::dequantize;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Weights `[out, in]` with a spread of magnitudes and exact zeros, so groups clip, round
    /// ties and (for one row) have a zero scale.
    fn weights(out: usize, inp: usize, device: &Device) -> (Vec<f32>, Tensor<2>) {
        let w = Tensor::<2>::random([out, inp], Distribution::Normal(0.0, 0.05), device);
        let mut values = host(w);
        values[..inp].iter_mut().for_each(|v| *v = 0.0);
        values[inp + 3] = 0.4;
        let tensor = Tensor::from_data(TensorData::new(values.clone(), [out, inp]), device);
        (values, tensor)
    }

    #[test]
    fn forward_equals_dequantize_of_the_packed_weight_bit_for_bit_for_every_format() {
        let device = Device::flex();
        // 200 inputs: not a multiple of any group size, so the last group of a row is short.
        let shape = WeightShape::new(6, 200);
        let (values, tensor) = weights(shape.out_features, shape.in_features, &device);
        for format in QuantFormat::all() {
            let rtn = quantize_rtn(&values, shape, format).unwrap();
            let fake = FakeQuantizer::from_grid(&rtn, &device, true);
            let forward = host(fake.forward(tensor.clone()));
            let packed = fake.quantize(&values, shape).unwrap();
            assert_eq!(packed, rtn, "{format}: re-quantizing on the RTN grid");
            let reference = dequantize(&packed);
            let differ = forward
                .iter()
                .zip(&reference)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "{format}: {differ} elements differ");
        }
    }

    #[test]
    fn a_trained_scale_is_exported_as_the_forward_pass_saw_it() {
        let device = Device::flex();
        let shape = WeightShape::new(4, 64);
        let (values, tensor) = weights(shape.out_features, shape.in_features, &device);
        let format: QuantFormat = "int3-g32-asym".parse().unwrap();
        let mut fake = FakeQuantizer::from_grid(
            &quantize_rtn(&values, shape, format).unwrap(),
            &device,
            true,
        );
        // A scale that is no f16: the forward pass and the package both round it to nearest.
        fake.scale = fake.scale.map(|s| s.mul_scalar(1.000_123_4));
        let forward = host(fake.forward(tensor));
        let reference = dequantize(&fake.quantize(&values, shape).unwrap());
        assert!(
            forward
                .iter()
                .zip(&reference)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    /// LSQ's gradients, eq. 3 of Esser et al. (2020), computed in f64 from the formula for the
    /// loss `Σ c·w_q`, against Burn's autodiff through [`FakeQuantizer::forward`].
    #[test]
    fn gradients_are_straight_through_and_lsq() {
        let device = Device::flex().autodiff();
        let format: QuantFormat = "int2-g32-asym".parse().unwrap();
        let shape = WeightShape::new(2, 64);
        let values: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 300.0)
            .collect();
        let upstream: Vec<f32> = (0..128)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 4.0)
            .collect();
        let rtn = quantize_rtn(&values, shape, format).unwrap();
        let mut fake = FakeQuantizer::from_grid(&rtn, &device, true);
        // Shrink the scales so some weights clip and the clipped branch is exercised.
        fake.scale = fake
            .scale
            .map(|s| {
                s.mul_scalar(0.75)
                    .cast(DType::F16)
                    .cast(DType::F32)
                    .detach()
            })
            .set_require_grad(true);
        let w = Tensor::<2>::from_data(TensorData::new(values.clone(), [2, 64]), &device)
            .require_grad();
        let c = Tensor::<2>::from_data(TensorData::new(upstream.clone(), [2, 64]), &device);
        let grads = (fake.forward(w.clone()) * c).sum().backward();
        let grad_w = host(w.grad(&grads).unwrap());
        let grad_s = host(fake.scale.val().grad(&grads).unwrap());
        let scales = host(fake.scale.val().inner());
        let zeros = host(fake.zero.clone().inner());
        let qmax = 3.0f64;
        let g = 1.0 / (32.0 * qmax).sqrt();
        let mut expected_s = [0.0f64; 4];
        for (i, (&w, &c)) in values.iter().zip(&upstream).enumerate() {
            let group = (i / 64) * 2 + (i % 64) / 32;
            let (s, z) = (f64::from(scales[group]), f64::from(zeros[group]));
            let x = f64::from(w) / s;
            let inside = (0.0..=qmax).contains(&(x + z));
            let expected_w = if inside { f64::from(c) } else { 0.0 };
            assert!((f64::from(grad_w[i]) - expected_w).abs() < 1e-6, "∂w[{i}]");
            let d_scale = if inside {
                x.round_ties_even() - x
            } else if x + z < 0.0 {
                -z
            } else {
                qmax - z
            };
            expected_s[group] += f64::from(c) * d_scale * g;
        }
        for (group, expected) in expected_s.iter().enumerate() {
            let got = f64::from(grad_s[group]);
            assert!(
                (got - expected).abs() < 1e-4 * (1.0 + expected.abs()),
                "∂s[{group}]: {got} vs {expected}"
            );
        }
    }
}
