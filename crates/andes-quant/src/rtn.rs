//! Round-to-nearest (RTN) quantization: a scale (and zero point) per group from the group's own
//! weights, then every weight to its nearest level. It is the baseline every other method is
//! measured against and the initialiser of QALFT's fake-quantized base.
//!
//! How each format picks its scale (f32, then [`scale_to_f16`], toward zero):
//!
//! * symmetric int2..int8 (llama.cpp `Q4_0`): `s = m / -2^(b-1)`, where `m` is the group's first
//!   weight of largest magnitude. `m` lands exactly on code 0 (level `-2^(b-1)·s = m`); levels run
//!   `-2^(b-1)·s ..= (2^(b-1)-1)·s`, so weights of the opposite sign beyond `(2^(b-1)-1)·|s|`
//!   clip, by at most `|s|`. The scale is negative when `m > 0`.
//! * asymmetric int2..int8 (GPTQ's min/max): `lo = min(w, 0)`, `hi = max(w, 0)`,
//!   `s = (hi - lo) / (2^b - 1)`, `zero = clamp(round(-lo / s), 0, 2^b - 1)` computed with the
//!   f16 scale. Including 0 in the range keeps zero on the grid. If `hi` does not reach the top
//!   code (only when both ends sit exactly half a step off the grid), the scale steps one f16 ulp
//!   toward zero and the zero point is recomputed.
//! * ternary (BitNet b1.58, Ma et al. 2024, arXiv:2402.17764, eq. 1–3): `s = mean(|w|)` of the
//!   group ("absmean"), codes `clamp(round(w / s), -1, 1) + 1`. BitNet takes the mean over the
//!   whole matrix; here it is per group or per channel. A nonzero group's scale is at least the
//!   smallest f16 (2⁻²⁴), so tiny groups keep their signs through re-quantization.
//! * binary: levels `±α` with `α = mean(|w|)`, the L2-optimal scale of `sign(w)` (XNOR-Net,
//!   Rastegari et al. 2016, arXiv:1603.05279; BitNet, arXiv:2310.11453). The stored scale is the
//!   step between the two levels, `2α`, so binary uses the same `scale · (code − 0.5)` formula.
//!
//! Means are summed in f64, so a group's mean of identical magnitudes is exact and quantizing a
//! dequantized tensor reproduces its codes (and, except for ternary, its scales).

use half::f16;

use crate::error::QuantError;
use crate::format::{Bits, QuantFormat};
use crate::grid::{quantize_code, scale_to_f16, step_toward_zero};
use crate::pack::{pack_into, packed_len};
use crate::tensor::{QuantizedTensor, WeightShape};

/// Quantizes a `[out_features, in_features]` row-major f32 weight matrix by round-to-nearest in
/// `format`. Errors on a buffer that does not match `shape`, an empty shape, a non-finite weight
/// and a group whose scale exceeds the f16 range.
pub fn quantize_rtn(
    weights: &[f32],
    shape: WeightShape,
    format: QuantFormat,
) -> Result<QuantizedTensor, QuantError> {
    shape.check_weights(weights)?;
    let group_len = format.granularity().group_len(shape.in_features);
    let mut scales = Vec::new();
    let mut zeros = Vec::new();
    for (row, values) in weights.chunks(shape.in_features).enumerate() {
        for (group, group_values) in values.chunks(group_len).enumerate() {
            let params = group_params(group_values, format)
                .map_err(|scale| QuantError::ScaleOverflow { row, group, scale })?;
            scales.push(params.scale);
            zeros.push(params.zero);
        }
    }
    Ok(round_onto_grid(weights, shape, format, scales, &zeros))
}

/// Rounds every weight of a `[out_features, in_features]` matrix to the nearest level of a grid
/// the caller chose: `scales` and `zeros` are `[out_features, groups_per_row]` row-major, the
/// zero points as [`crate::dequantize_code`] takes them (the implied
/// [`Bits::symmetric_zero`] for symmetric formats, integers `0..=max_code` otherwise).
///
/// This is how a grid learned elsewhere (QALFT's trained scales) becomes package bytes: the
/// codes are [`quantize_code`] of each weight, which is what the fake-quant computes.
pub fn quantize_on_grid(
    weights: &[f32],
    shape: WeightShape,
    format: QuantFormat,
    scales: &[f16],
    zeros: &[f32],
) -> Result<QuantizedTensor, QuantError> {
    shape.check_weights(weights)?;
    let bits = format.bits();
    let groups = format.granularity().groups_per_row(shape.in_features);
    let grid_len = shape.out_features * groups;
    for (part, found) in [("scales", scales.len()), ("zero points", zeros.len())] {
        if found != grid_len {
            return Err(QuantError::PartLength {
                part,
                format: format.to_string(),
                shape: shape.to_string(),
                expected: grid_len,
                found,
            });
        }
    }
    for (i, (&scale, &zero)) in scales.iter().zip(zeros).enumerate() {
        let valid_zero = if format.symmetric() {
            zero == bits.symmetric_zero()
        } else {
            zero.fract() == 0.0 && (0.0..=f32::from(bits.max_code())).contains(&zero)
        };
        if !f32::from(scale).is_finite() || !valid_zero {
            return Err(QuantError::InvalidGrid {
                row: i / groups,
                group: i % groups,
                scale: f32::from(scale),
                zero,
            });
        }
    }
    Ok(round_onto_grid(
        weights,
        shape,
        format,
        scales.to_vec(),
        zeros,
    ))
}

/// [`quantize_on_grid`] for a checked matrix and a valid grid: codes by [`quantize_code`],
/// packed with the zero points.
fn round_onto_grid(
    weights: &[f32],
    shape: WeightShape,
    format: QuantFormat,
    scales: Vec<f16>,
    zeros: &[f32],
) -> QuantizedTensor {
    let bits = format.bits();
    let in_features = shape.in_features;
    let group_len = format.granularity().group_len(in_features);
    let groups = format.granularity().groups_per_row(in_features);
    let mut packed = Vec::with_capacity(shape.out_features * packed_len(bits, in_features));
    let mut packed_zeros = Vec::new();
    let mut codes = Vec::with_capacity(in_features);
    let mut row_zeros = Vec::with_capacity(groups);
    for (row, values) in weights.chunks(in_features).enumerate() {
        codes.clear();
        row_zeros.clear();
        for (group, group_values) in values.chunks(group_len).enumerate() {
            let (scale, zero) = (scales[row * groups + group], zeros[row * groups + group]);
            codes.extend(
                group_values
                    .iter()
                    .map(|&w| quantize_code(w, scale, zero, bits)),
            );
            row_zeros.push(zero as u8);
        }
        pack_into(&codes, bits, &mut packed);
        if !format.symmetric() {
            pack_into(&row_zeros, bits, &mut packed_zeros);
        }
    }
    QuantizedTensor::from_trusted_parts(format, shape, packed, scales, packed_zeros)
}

/// Scale and zero point of one group, as [`crate::dequantize_code`] takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct GroupParams {
    pub(crate) scale: f16,
    pub(crate) zero: f32,
}

/// RTN's scale and zero point for one nonempty group; `Err` carries an f32 scale too large for
/// f16.
pub(crate) fn group_params(values: &[f32], format: QuantFormat) -> Result<GroupParams, f32> {
    let bits = format.bits();
    match bits {
        Bits::Int1 => symmetric_params(2.0 * mean_abs(values), bits),
        Bits::Ternary => {
            let absmean = mean_abs(values);
            let params = symmetric_params(absmean, bits)?;
            // Re-quantizing a dequantized group gives a smaller absmean (its zero codes now
            // count); flooring a nonzero group's scale at the smallest f16 keeps that from
            // truncating to zero and erasing the group's ±1 codes.
            Ok(if absmean > 0.0 && f32::from(params.scale) == 0.0 {
                GroupParams {
                    scale: f16::MIN_POSITIVE_SUBNORMAL,
                    ..params
                }
            } else {
                params
            })
        }
        _ if format.symmetric() => {
            symmetric_params(largest_magnitude(values) / -bits.symmetric_zero(), bits)
        }
        _ => asymmetric_params(values, bits),
    }
}

fn symmetric_params(scale: f32, bits: Bits) -> Result<GroupParams, f32> {
    Ok(GroupParams {
        scale: scale_to_f16(scale).ok_or(scale)?,
        zero: bits.symmetric_zero(),
    })
}

fn asymmetric_params(values: &[f32], bits: Bits) -> Result<GroupParams, f32> {
    let lo = values.iter().fold(0.0f32, |m, &v| m.min(v));
    let hi = values.iter().fold(0.0f32, |m, &v| m.max(v));
    let qmax = f32::from(bits.max_code());
    let exact = (hi - lo) / qmax;
    let mut scale = scale_to_f16(exact).ok_or(exact)?;
    while f32::from(scale) != 0.0 {
        let zero = (-lo / f32::from(scale)).round_ties_even().clamp(0.0, qmax);
        if quantize_code(hi, scale, zero, bits) == bits.max_code() {
            return Ok(GroupParams { scale, zero });
        }
        scale = step_toward_zero(scale);
    }
    Ok(GroupParams {
        scale: f16::ZERO,
        zero: 0.0,
    })
}

/// The first value of largest magnitude, sign kept (llama.cpp's `max` in `quantize_row_q4_0`).
fn largest_magnitude(values: &[f32]) -> f32 {
    values
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// `mean(|w|)`, summed in f64 so the mean of equal magnitudes is exact.
fn mean_abs(values: &[f32]) -> f32 {
    let sum: f64 = values.iter().map(|&v| f64::from(v.abs())).sum();
    (sum / values.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::dequantize;

    fn rtn(weights: &[f32], format: &str) -> QuantizedTensor {
        let format: QuantFormat = format.parse().expect("valid format");
        quantize_rtn(weights, WeightShape::new(1, weights.len()), format).expect("quantizes")
    }

    #[test]
    fn symmetric_scale_puts_the_largest_weight_exactly_on_code_zero() {
        let q = rtn(&[0.5, -1.0, 0.25, 0.9], "int4-channel-sym");
        assert_eq!(q.scales(), &[f16::from_f32(0.125)]);
        assert_eq!(q.codes(), vec![12, 0, 10, 15]);
        assert_eq!(dequantize(&q), vec![0.5, -1.0, 0.25, 0.875]);
        // A positive extreme gives a negative scale.
        let q = rtn(&[1.0, -0.5], "int4-channel-sym");
        assert_eq!(q.scales(), &[f16::from_f32(-0.125)]);
        assert_eq!(dequantize(&q), vec![1.0, -0.5]);
    }

    #[test]
    fn symmetric_clips_the_opposite_extreme_by_one_step() {
        // The first of ±1 anchors the grid; the other clips to 7 steps of 0.125.
        let q = rtn(&[1.0, -1.0], "int4-channel-sym");
        assert_eq!(dequantize(&q), vec![1.0, -0.875]);
    }

    #[test]
    fn ternary_scale_is_the_absmean_of_the_group() {
        let q = rtn(&[0.1, -0.4, 0.0, 2.0], "ternary-channel");
        assert_eq!(q.scales(), &[f16::from_f32(0.625)]);
        assert_eq!(q.codes(), vec![1, 0, 1, 2]);
        assert_eq!(dequantize(&q), vec![0.0, -0.625, 0.0, 0.625]);
    }

    #[test]
    fn ternary_floors_a_tiny_groups_scale_so_requantization_keeps_its_signs() {
        let mut weights = [0.0f32; 32];
        weights[31] = -1e-6;
        let q = rtn(&weights, "ternary-channel");
        assert_eq!(q.scales(), &[f16::MIN_POSITIVE_SUBNORMAL]);
        assert_eq!(q.codes()[31], 0);
        let again = quantize_rtn(&dequantize(&q), q.shape(), q.format()).expect("quantizes");
        assert_eq!(again.codes(), q.codes());
    }

    #[test]
    fn binary_levels_are_plus_minus_the_absmean() {
        let q = rtn(&[0.5, -1.5, 1.0, -1.0], "int1-channel-sym");
        assert_eq!(q.scales(), &[f16::from_f32(2.0)]);
        assert_eq!(dequantize(&q), vec![1.0, -1.0, 1.0, -1.0]);
    }

    #[test]
    fn asymmetric_grid_spans_min_to_max_with_zero_on_it() {
        let q = rtn(&[-1.0, 2.0, 0.0, 1.0], "int2-channel-asym");
        assert_eq!(q.scales(), &[f16::ONE]);
        assert_eq!(q.zero_points(), vec![1.0]);
        assert_eq!(dequantize(&q), vec![-1.0, 2.0, 0.0, 1.0]);
        // All positive: the range starts at 0, so the zero point is 0.
        let q = rtn(&[1.0, 3.0], "int2-channel-asym");
        assert_eq!(q.zero_points(), vec![0.0]);
        assert_eq!(dequantize(&q), vec![1.0, 3.0]);
        // All negative: the range ends at 0, so the zero point is the top code.
        let q = rtn(&[-3.0, -1.0], "int2-channel-asym");
        assert_eq!(q.zero_points(), vec![3.0]);
        assert_eq!(dequantize(&q), vec![-3.0, -1.0]);
    }

    #[test]
    fn asymmetric_double_tie_steps_the_scale_so_the_top_code_is_used() {
        // s = 1 exactly; -lo/s = 2.5 and hi/s = 0.5 both round down to even, which would leave
        // code 3 unused and make re-quantization pick a different grid.
        let q = rtn(&[-2.5, 0.5], "int2-channel-asym");
        let step = f16::from_bits(f16::ONE.to_bits() - 1);
        assert_eq!(q.scales(), &[step]);
        assert_eq!(q.codes(), vec![0, 3]);
        let again = quantize_rtn(&dequantize(&q), q.shape(), q.format()).expect("quantizes");
        assert_eq!(again, q);
    }

    #[test]
    fn zero_groups_get_a_zero_scale_and_the_zero_code() {
        for format in [
            "int4-g32-sym",
            "int4-g32-asym",
            "ternary-g32",
            "int1-g32-sym",
        ] {
            let q = rtn(&[0.0; 40], format);
            assert!(q.scales().iter().all(|s| f32::from(*s) == 0.0), "{format}");
            assert!(dequantize(&q).iter().all(|w| w.to_bits() == 0), "{format}");
        }
    }

    #[test]
    fn refuses_bad_input_with_its_location() {
        let format: QuantFormat = "int4-g32-sym".parse().expect("valid");
        let mismatch = quantize_rtn(&[0.0; 5], WeightShape::new(2, 3), format);
        assert!(matches!(
            mismatch,
            Err(QuantError::ShapeMismatch {
                expected: 6,
                found: 5,
                ..
            })
        ));
        let empty = quantize_rtn(&[], WeightShape::new(0, 3), format);
        assert!(matches!(empty, Err(QuantError::EmptyShape { .. })));
        let mut weights = vec![0.5; 6];
        weights[4] = f32::NAN;
        let nan = quantize_rtn(&weights, WeightShape::new(2, 3), format);
        assert!(matches!(
            nan,
            Err(QuantError::NonFiniteWeight { row: 1, col: 1, .. })
        ));
        let mut huge = vec![0.5; 40];
        huge[35] = 1e9;
        let overflow = quantize_rtn(&huge, WeightShape::new(1, 40), format);
        assert!(matches!(
            overflow,
            Err(QuantError::ScaleOverflow {
                row: 0,
                group: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_grid_the_format_cannot_store_is_refused() {
        let format: QuantFormat = "int4-g32-asym".parse().unwrap();
        let shape = WeightShape::new(1, 64);
        let weights = vec![0.5f32; 64];
        let scales = [f16::from_f32(0.1); 2];
        let err = quantize_on_grid(&weights, shape, format, &scales, &[3.0, 1.5]).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::InvalidGrid {
                    row: 0,
                    group: 1,
                    ..
                }
            ),
            "{err}"
        );
        let err = quantize_on_grid(&weights, shape, format, &scales, &[3.0]).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::PartLength {
                    part: "zero points",
                    ..
                }
            ),
            "{err}"
        );
        let q = quantize_on_grid(&weights, shape, format, &scales, &[3.0, 4.0]).unwrap();
        assert_eq!(q.zero_points(), vec![3.0, 4.0]);
    }
}
