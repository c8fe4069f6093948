//! The quantization grid: the one formula that maps a code to a weight, the one rule that maps a
//! weight to a code, and the one rule that rounds a scale to f16.
//!
//! Every piece of andes that turns codes into numbers (dequantization here, the Burn fake-quant
//! used in QALFT training, the runtime kernels) must compute exactly these, in f32, in this order,
//! so that what training saw is bit for bit what the package runs.

use half::f16;

use crate::format::Bits;

/// The value of `code` on the grid `(scale, zero)`: `f32(scale) · (code − zero)`.
///
/// This is THE dequantization formula of andes. `code − zero` is exact in f32 (both are small
/// integers, or half-integers for binary), so the result has exactly one rounding, the product;
/// an implementation that fuses or reorders (`scale·code − scale·zero`) would round differently.
///
/// * `scale`: the group's f16 scale, the distance between adjacent levels (negative for a
///   symmetric group whose largest-magnitude weight is positive, see `docs/quant-formats.md`).
/// * `zero`: the stored zero point for asymmetric formats (an integer in `0..=max_code`), or
///   [`Bits::symmetric_zero`] for symmetric ones.
#[inline]
pub fn dequantize_code(code: u8, scale: f16, zero: f32) -> f32 {
    f32::from(scale) * (f32::from(code) - zero)
}

/// The code round-to-nearest gives `weight` on the grid `(scale, zero)` of `bits`: the inverse of
/// [`dequantize_code`] up to rounding and clipping.
///
/// For every width but binary: `x = weight / f32(scale)` (an f32 division, not a multiplication
/// by a reciprocal), `r = round_half_to_even(x)`, `code = clamp(r + zero, 0, max_code)`. Rounding
/// half to even is what `torch.round` and Burn's `round` do, so the fake-quant can reproduce it
/// with stock tensor ops. The rounding happens before `zero` is added: adding first could round
/// `x + zero` in f32 and move a code.
///
/// Binary: `code = 1` if `weight ≥ 0` (so zero maps to `+scale/2`), else 0; mirrored when the
/// scale is negative, so the code is always the nearer of the two levels.
///
/// A zero scale (a group of zeros, or one whose scale underflows f16) gives the code whose level
/// is zero: `zero` itself, and 1 for binary, whose level is `+0`. Fixing that code keeps
/// quantization idempotent on such groups.
#[inline]
pub fn quantize_code(weight: f32, scale: f16, zero: f32, bits: Bits) -> u8 {
    let scale = f32::from(scale);
    if bits == Bits::Int1 {
        return u8::from(scale == 0.0 || (weight >= 0.0) == (scale > 0.0));
    }
    if scale == 0.0 {
        return zero as u8;
    }
    let rounded = (weight / scale).round_ties_even();
    (rounded + zero).clamp(0.0, f32::from(bits.max_code())) as u8
}

/// The f16 scale for an f32 scale: the nearest f16 toward zero (truncation), `None` when the
/// magnitude exceeds the largest f16 (65504) or the scale is not finite.
///
/// Toward zero, not to nearest, because a grid no wider than the f32 one is what makes RTN a
/// projection: the weight that defines a symmetric scale lands exactly on the end code, and an
/// asymmetric group always reaches both end codes, so quantizing a dequantized tensor gives back
/// the same codes and scales. The price is at most one f16 ulp (2⁻¹⁰ relative) of clipping at
/// one end. A result of zero is returned as `+0`, never `-0`.
pub fn scale_to_f16(scale: f32) -> Option<f16> {
    if !scale.is_finite() || scale.abs() > f32::from(f16::MAX) {
        return None;
    }
    let nearest = f16::from_f32(scale);
    let toward_zero = if f32::from(nearest).abs() > scale.abs() {
        // f16 is sign-magnitude: one less in the bit pattern is one ulp smaller in magnitude.
        f16::from_bits(nearest.to_bits() - 1)
    } else {
        nearest
    };
    if f32::from(toward_zero) == 0.0 {
        Some(f16::ZERO)
    } else {
        Some(toward_zero)
    }
}

/// The next f16 toward zero from a nonzero `scale` (`+0` from the smallest subnormal).
pub(crate) fn step_toward_zero(scale: f16) -> f16 {
    let smaller = f16::from_bits(scale.to_bits() - 1);
    if f32::from(smaller) == 0.0 {
        f16::ZERO
    } else {
        smaller
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(x: f32) -> f16 {
        f16::from_f32(x)
    }

    #[test]
    fn dequantize_is_scale_times_code_minus_zero() {
        assert_eq!(dequantize_code(0, h(0.5), 8.0), -4.0);
        assert_eq!(dequantize_code(15, h(0.5), 8.0), 3.5);
        assert_eq!(dequantize_code(15, h(-0.5), 8.0), -3.5);
        assert_eq!(dequantize_code(1, h(2.0), 0.5), 1.0);
        assert_eq!(dequantize_code(0, h(2.0), 0.5), -1.0);
        assert_eq!(dequantize_code(2, h(0.25), 1.0), 0.25);
    }

    #[test]
    fn ties_round_to_even_before_the_zero_is_added() {
        // x = 2.5 → 2, x = 3.5 → 4, x = -2.5 → -2.
        assert_eq!(quantize_code(2.5, h(1.0), 8.0, Bits::Int4), 10);
        assert_eq!(quantize_code(3.5, h(1.0), 8.0, Bits::Int4), 12);
        assert_eq!(quantize_code(-2.5, h(1.0), 8.0, Bits::Int4), 6);
        assert_eq!(quantize_code(0.5, h(1.0), 1.0, Bits::Ternary), 1);
        assert_eq!(quantize_code(1.5, h(1.0), 1.0, Bits::Ternary), 2);
    }

    #[test]
    fn codes_clip_to_the_grid() {
        assert_eq!(quantize_code(100.0, h(1.0), 8.0, Bits::Int4), 15);
        assert_eq!(quantize_code(-100.0, h(1.0), 8.0, Bits::Int4), 0);
        assert_eq!(quantize_code(-100.0, h(1.0), 3.0, Bits::Int2), 0);
        assert_eq!(quantize_code(7.0, h(1.0), 1.0, Bits::Ternary), 2);
    }

    #[test]
    fn binary_picks_the_nearer_level_and_zero_goes_up() {
        assert_eq!(quantize_code(0.3, h(2.0), 0.5, Bits::Int1), 1);
        assert_eq!(quantize_code(0.0, h(2.0), 0.5, Bits::Int1), 1);
        assert_eq!(quantize_code(-0.0, h(2.0), 0.5, Bits::Int1), 1);
        assert_eq!(quantize_code(-7.0, h(2.0), 0.5, Bits::Int1), 0);
        assert_eq!(quantize_code(0.3, h(-2.0), 0.5, Bits::Int1), 0);
    }

    #[test]
    fn a_zero_scale_gives_the_code_of_level_zero() {
        assert_eq!(quantize_code(1.0, f16::ZERO, 8.0, Bits::Int4), 8);
        assert_eq!(quantize_code(-1.0, f16::ZERO, 0.0, Bits::Int4), 0);
        assert_eq!(quantize_code(-1.0, f16::ZERO, 1.0, Bits::Ternary), 1);
        assert_eq!(quantize_code(-1.0, f16::ZERO, 0.5, Bits::Int1), 1);
        assert_eq!(
            dequantize_code(1, f16::ZERO, 0.5).to_bits(),
            0.0f32.to_bits()
        );
    }

    #[test]
    fn scale_rounding_keeps_exact_values_and_refuses_overflow() {
        assert_eq!(scale_to_f16(0.125), Some(h(0.125)));
        assert_eq!(scale_to_f16(-3.0), Some(h(-3.0)));
        assert_eq!(scale_to_f16(65504.0), Some(f16::MAX));
        assert_eq!(scale_to_f16(65505.0), None);
        assert_eq!(scale_to_f16(f32::NAN), None);
        assert_eq!(scale_to_f16(f32::INFINITY), None);
        assert_eq!(scale_to_f16(-1e-12).map(f16::to_bits), Some(0));
        assert_eq!(step_toward_zero(f16::from_bits(1)), f16::ZERO);
        assert_eq!(
            step_toward_zero(h(1.0)),
            f16::from_bits(h(1.0).to_bits() - 1)
        );
    }

    proptest! {
        #[test]
        fn scale_rounding_is_the_nearest_f16_toward_zero(scale in -65504.0f32..65504.0) {
            let rounded = scale_to_f16(scale).expect("in range");
            let r = f32::from(rounded);
            prop_assert!(r.abs() <= scale.abs());
            prop_assert!(r == 0.0 || r.signum() == scale.signum());
            // The next f16 away from zero would exceed the scale.
            let next = f16::from_bits(rounded.to_bits() + 1);
            if r != 0.0 && f32::from(next).is_finite() {
                prop_assert!(f32::from(next).abs() > scale.abs());
            }
        }

        #[test]
        fn quantize_then_dequantize_lands_on_the_nearest_level(
            weight in -20.0f32..20.0,
            scale in 0.01f32..4.0,
            zero in 0u8..=15,
        ) {
            let scale = scale_to_f16(scale).expect("in range");
            let code = quantize_code(weight, scale, f32::from(zero), Bits::Int4);
            let value = dequantize_code(code, scale, f32::from(zero));
            let s = f32::from(scale);
            let lo = dequantize_code(0, scale, f32::from(zero));
            let hi = dequantize_code(15, scale, f32::from(zero));
            let clipped = weight.clamp(lo, hi);
            prop_assert!((clipped - value).abs() <= s / 2.0 + 1e-5 * s, "{weight} -> {value}");
        }
    }
}
