//! Properties every format must keep, checked on random matrices: RTN lands each weight on its
//! nearest level with the clipping the format documents, quantizing a dequantized tensor gives
//! back the same codes, the stored bytes cost what `bits_per_weight` says, and a stored tensor
//! reads back through `from_parts`.

use andes_quant::{
    Bits, QuantFormat, QuantizedTensor, WeightShape, bits_per_weight, dequantize, dequantize_code,
    quantize_rtn, reconstruction_error,
};
use proptest::prelude::*;

/// A weight: exactly 0 one time in ten, else ±[0.05, 20] (large enough that every f16 scale is a
/// normal number, so the one-ulp clipping bounds below apply).
fn weight() -> impl Strategy<Value = f32> {
    prop_oneof![
        1 => Just(0.0f32),
        9 => (0.05f32..20.0, any::<bool>()).prop_map(|(m, negative)| if negative { -m } else { m }),
    ]
}

/// A weight on a coarse binary grid (multiples of 1/4): exact ties, equal magnitudes of both
/// signs and exactly representable scales, the cases where rounding rules matter.
fn tie_prone_weight() -> impl Strategy<Value = f32> {
    (-40i32..=40).prop_map(|k| k as f32 * 0.25)
}

/// A matrix of 1..=3 rows and 1..=300 columns (odd widths exercise partial groups and padding),
/// half the time of continuous weights, half of tie-prone ones.
fn matrix() -> impl Strategy<Value = (WeightShape, Vec<f32>)> {
    let shape = (1usize..=3, 1usize..=300).prop_map(|(out, inp)| WeightShape::new(out, inp));
    shape.prop_flat_map(|shape| {
        let n = shape.numel();
        let weights = prop_oneof![
            prop::collection::vec(weight(), n),
            prop::collection::vec(tie_prone_weight(), n),
        ];
        (Just(shape), weights)
    })
}

/// Checks the error of every element of one group against the bounds of `format`.
fn check_group(
    format: QuantFormat,
    weights: &[f32],
    restored: &[f32],
    scale: half::f16,
    zero: f32,
) -> Result<(), TestCaseError> {
    let bits = format.bits();
    let step = f32::from(scale).abs();
    let qmax = bits.max_code();
    let end_a = dequantize_code(0, scale, zero);
    let end_b = dequantize_code(qmax, scale, zero);
    let (lo, hi) = (end_a.min(end_b), end_a.max(end_b));
    let absmax = weights.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    let tol = 1e-5 * step + 1e-6 * absmax;
    if step == 0.0 {
        prop_assert!(
            weights.iter().all(|&w| w == 0.0),
            "zero scale on a nonzero group"
        );
    }
    let range = weights.iter().fold(0.0f32, |m, &w| m.max(w))
        - weights.iter().fold(0.0f32, |m, &w| m.min(w));
    for (&w, &w_hat) in weights.iter().zip(restored) {
        // Within the grid every weight lands on its nearest level: error at most half a step.
        let clipped = w.clamp(lo, hi);
        prop_assert!(
            (clipped - w_hat).abs() <= step / 2.0 + tol,
            "{format}: {w} -> {w_hat}, step {step}"
        );
        let error = (w - w_hat).abs();
        match bits {
            Bits::Int1 => {
                prop_assert_eq!(w_hat.abs(), step / 2.0);
                prop_assert_eq!(w_hat >= 0.0, w >= 0.0);
            }
            // Absmean ternary clips by design; nearest level is all it promises.
            Bits::Ternary => {}
            _ if format.symmetric() => {
                // Only the side opposite the anchor clips, by at most one step (plus the one-ulp
                // f16 truncation of the scale, stretched over 2^(b-1) steps).
                let half_range = f32::from(bits.max_code() / 2 + 1);
                let bound = step * (1.0 + half_range / 1024.0);
                prop_assert!(
                    error <= bound + tol,
                    "{format}: {w} -> {w_hat}, step {step}"
                );
            }
            _ => {
                // Half a step, plus what the f16 truncation took off the grid's width.
                let shortfall = (range - f32::from(qmax) * step).max(0.0);
                prop_assert!(
                    error <= step / 2.0 + shortfall + tol,
                    "{format}: {w} -> {w_hat}, step {step}, shortfall {shortfall}"
                );
            }
        }
    }
    Ok(())
}

fn check_error_bounds(weights: &[f32], q: &QuantizedTensor) -> Result<(), TestCaseError> {
    let shape = q.shape();
    let format = q.format();
    let group_len = format.granularity().group_len(shape.in_features);
    let groups = q.groups_per_row();
    let restored = dequantize(q);
    let zeros = q.zero_points();
    let rows = weights
        .chunks(shape.in_features)
        .zip(restored.chunks(shape.in_features));
    for (r, (row, row_hat)) in rows.enumerate() {
        let parts = row.chunks(group_len).zip(row_hat.chunks(group_len));
        for (g, (group, group_hat)) in parts.enumerate() {
            let i = r * groups + g;
            check_group(format, group, group_hat, q.scales()[i], zeros[i])?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rtn_error_is_half_a_step_plus_documented_clipping((shape, weights) in matrix()) {
        for format in QuantFormat::all() {
            let q = quantize_rtn(&weights, shape, format).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_error_bounds(&weights, &q)?;
        }
    }

    #[test]
    fn quantizing_a_dequantized_tensor_gives_back_its_codes((shape, weights) in matrix()) {
        for format in QuantFormat::all() {
            let q = quantize_rtn(&weights, shape, format).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = quantize_rtn(&dequantize(&q), shape, format)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again.codes(), q.codes(), "{}", format);
            // Ternary's absmean shrinks when some codes are zero; every other scale is recovered.
            if format.bits() != Bits::Ternary {
                prop_assert_eq!(&again, &q, "{}", format);
            }
        }
    }

    #[test]
    fn stored_bytes_cost_what_bits_per_weight_says((shape, weights) in matrix()) {
        for format in QuantFormat::all() {
            let q = quantize_rtn(&weights, shape, format).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(q.bits_per_weight(), bits_per_weight(format, shape), "{}", format);
            let read_back = QuantizedTensor::from_parts(
                format,
                shape,
                q.packed().to_vec(),
                q.scales().to_vec(),
                q.zeros().to_vec(),
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&read_back, &q);
        }
    }
}

/// A deterministic bell-shaped matrix (sum of uniforms), so error comparisons do not depend on a
/// random seed.
fn bell_matrix(rows: usize, cols: usize) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..rows * cols)
        .map(|_| 0.02 * (0..4).map(|_| uniform()).sum::<f32>())
        .collect()
}

fn error_of(weights: &[f32], shape: WeightShape, format: &str) -> f64 {
    let format: QuantFormat = format.parse().expect("valid format");
    let q = quantize_rtn(weights, shape, format).expect("quantizes");
    reconstruction_error(weights, &dequantize(&q)).expect("same length")
}

#[test]
fn more_bits_and_smaller_groups_reconstruct_better() {
    let shape = WeightShape::new(32, 256);
    let w = bell_matrix(32, 256);
    let by_width: Vec<f64> = ["int8", "int4", "int3", "int2"]
        .iter()
        .map(|b| error_of(&w, shape, &format!("{b}-g128-sym")))
        .collect();
    assert!(by_width.windows(2).all(|p| p[0] < p[1]), "{by_width:?}");
    assert!(by_width[0] < 0.01, "int8 error {}", by_width[0]);
    let by_group: Vec<f64> = ["g32", "g64", "g128", "channel"]
        .iter()
        .map(|g| error_of(&w, shape, &format!("int4-{g}-asym")))
        .collect();
    assert!(by_group.windows(2).all(|p| p[0] <= p[1]), "{by_group:?}");
    let ternary = error_of(&w, shape, "ternary-g128");
    // Absmean ternary on bell-shaped weights leaves an error of about half the weight norm.
    assert!(ternary < 0.55, "ternary {ternary}");
}
