//! A quantized weight matrix as a package stores it: packed codes, f16 scales and packed zero
//! points, plus the format and shape that say how to read them.

use std::fmt;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::error::QuantError;
use crate::format::QuantFormat;
use crate::grid::dequantize_code;
use crate::pack::{check_packed, packed_len, unpack_into};

/// Shape of a linear layer's weight, `[out_features, in_features]`, stored row-major: row `r`
/// holds the weights of output channel `r` (the PyTorch / Hugging Face `nn.Linear` layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WeightShape {
    /// Rows: output channels.
    pub out_features: usize,
    /// Columns: input elements of each row.
    pub in_features: usize,
}

impl WeightShape {
    /// A `[out_features, in_features]` shape.
    pub fn new(out_features: usize, in_features: usize) -> Self {
        WeightShape {
            out_features,
            in_features,
        }
    }

    /// Number of weights, `out_features · in_features`.
    pub fn numel(self) -> usize {
        self.out_features * self.in_features
    }

    /// Refuses an empty shape and a buffer of the wrong length.
    pub(crate) fn check(self, len: usize) -> Result<(), QuantError> {
        if self.numel() == 0 {
            return Err(QuantError::EmptyShape {
                shape: self.to_string(),
            });
        }
        if len != self.numel() {
            return Err(QuantError::ShapeMismatch {
                shape: self.to_string(),
                expected: self.numel(),
                found: len,
            });
        }
        Ok(())
    }

    /// Refuses what [`WeightShape::check`] refuses and any non-finite weight, naming its place.
    pub(crate) fn check_weights(self, weights: &[f32]) -> Result<(), QuantError> {
        self.check(weights.len())?;
        match weights.iter().position(|w| !w.is_finite()) {
            Some(i) => Err(QuantError::NonFiniteWeight {
                row: i / self.in_features,
                col: i % self.in_features,
                value: weights[i],
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for WeightShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.out_features, self.in_features)
    }
}

/// A quantized `[out_features, in_features]` weight matrix. Its three buffers are exactly the
/// bytes a package stores (layouts in `docs/quant-formats.md`), and construction checks them, so
/// every `QuantizedTensor` dequantizes without error:
///
/// * `packed`: `out_features` rows of `packed_len(bits, in_features)` bytes; each row starts on a
///   byte boundary and is packed by [`crate::pack`].
/// * `scales`: `[out_features, groups_per_row]` f16, row-major.
/// * `zeros`: empty for symmetric formats; for asymmetric ones the integer zero points
///   `[out_features, groups_per_row]`, each row packed like codes of the same width (so an int4
///   zero point costs 4 bits) and starting on a byte boundary.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    format: QuantFormat,
    shape: WeightShape,
    packed: Vec<u8>,
    scales: Vec<f16>,
    zeros: Vec<u8>,
}

impl QuantizedTensor {
    /// Assembles a tensor from stored parts (as read from a package), refusing parts whose
    /// lengths do not match the format and shape, non-canonical packing and non-finite scales.
    pub fn from_parts(
        format: QuantFormat,
        shape: WeightShape,
        packed: Vec<u8>,
        scales: Vec<f16>,
        zeros: Vec<u8>,
    ) -> Result<Self, QuantError> {
        if shape.numel() == 0 {
            return Err(QuantError::EmptyShape {
                shape: shape.to_string(),
            });
        }
        let bits = format.bits();
        let groups = format.granularity().groups_per_row(shape.in_features);
        let code_row = packed_len(bits, shape.in_features);
        let zero_row = if format.symmetric() {
            0
        } else {
            packed_len(bits, groups)
        };
        let part_length = |part, expected, found| QuantError::PartLength {
            part,
            format: format.to_string(),
            shape: shape.to_string(),
            expected,
            found,
        };
        let checks = [
            ("packed codes", shape.out_features * code_row, packed.len()),
            ("scales", shape.out_features * groups, scales.len()),
            ("zero points", shape.out_features * zero_row, zeros.len()),
        ];
        for (part, expected, found) in checks {
            if expected != found {
                return Err(part_length(part, expected, found));
            }
        }
        for row in packed.chunks(code_row) {
            check_packed(row, bits, shape.in_features)?;
        }
        if zero_row > 0 {
            for row in zeros.chunks(zero_row) {
                check_packed(row, bits, groups)?;
            }
        }
        if let Some((index, value)) = scales.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(QuantError::NonFiniteScale {
                index,
                value: f32::from(*value),
            });
        }
        Ok(QuantizedTensor {
            format,
            shape,
            packed,
            scales,
            zeros,
        })
    }

    /// The format the codes are in.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// `[out_features, in_features]` of the original weight.
    pub fn shape(&self) -> WeightShape {
        self.shape
    }

    /// Packed codes, row by row.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// f16 scales, `[out_features, groups_per_row]`.
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// Packed zero points (empty for symmetric formats).
    pub fn zeros(&self) -> &[u8] {
        &self.zeros
    }

    /// Scales per row.
    pub fn groups_per_row(&self) -> usize {
        self.format
            .granularity()
            .groups_per_row(self.shape.in_features)
    }

    /// All codes unpacked, `[out_features, in_features]` row-major.
    pub fn codes(&self) -> Vec<u8> {
        let bits = self.format.bits();
        let row_len = packed_len(bits, self.shape.in_features);
        let mut codes = Vec::with_capacity(self.shape.numel());
        for row in self.packed.chunks(row_len) {
            unpack_into(row, bits, self.shape.in_features, &mut codes);
        }
        codes
    }

    /// The zero point of every group as used by [`dequantize_code`], `[out_features,
    /// groups_per_row]`: the stored integers for asymmetric formats, the implied
    /// [`crate::Bits::symmetric_zero`] for symmetric ones.
    pub fn zero_points(&self) -> Vec<f32> {
        let bits = self.format.bits();
        let groups = self.groups_per_row();
        if self.format.symmetric() {
            return vec![bits.symmetric_zero(); self.scales.len()];
        }
        let mut zeros = Vec::with_capacity(self.scales.len());
        for row in self.zeros.chunks(packed_len(bits, groups)) {
            unpack_into(row, bits, groups, &mut zeros);
        }
        zeros.into_iter().map(f32::from).collect()
    }

    /// Assembles a tensor whose parts the caller built with this crate's packing.
    pub(crate) fn from_trusted_parts(
        format: QuantFormat,
        shape: WeightShape,
        packed: Vec<u8>,
        scales: Vec<f16>,
        zeros: Vec<u8>,
    ) -> Self {
        debug_assert!(
            QuantizedTensor::from_parts(
                format,
                shape,
                packed.clone(),
                scales.clone(),
                zeros.clone()
            )
            .is_ok()
        );
        QuantizedTensor {
            format,
            shape,
            packed,
            scales,
            zeros,
        }
    }
}

/// The f32 weights a quantized tensor stands for, `[out_features, in_features]` row-major: every
/// element is [`dequantize_code`] of its code with its group's scale and zero point.
pub fn dequantize(tensor: &QuantizedTensor) -> Vec<f32> {
    let shape = tensor.shape();
    let group_len = tensor.format().granularity().group_len(shape.in_features);
    let groups = tensor.groups_per_row();
    let codes = tensor.codes();
    let zeros = tensor.zero_points();
    let mut weights = Vec::with_capacity(shape.numel());
    for (r, row) in codes.chunks(shape.in_features).enumerate() {
        for (g, group) in row.chunks(group_len).enumerate() {
            let scale = tensor.scales[r * groups + g];
            let zero = zeros[r * groups + g];
            weights.extend(group.iter().map(|&c| dequantize_code(c, scale, zero)));
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Bits;

    fn int4_g32_asym() -> QuantFormat {
        "int4-g32-asym".parse().expect("valid")
    }

    #[test]
    fn from_parts_refuses_each_wrong_length_and_names_the_part() {
        let shape = WeightShape::new(2, 40);
        let ok = |packed: usize, scales: usize, zeros: usize| {
            QuantizedTensor::from_parts(
                int4_g32_asym(),
                shape,
                vec![0; packed],
                vec![f16::ONE; scales],
                vec![0; zeros],
            )
        };
        // 40 int4 codes = 20 bytes a row; 2 groups a row; 2 int4 zero points = 1 byte a row.
        assert!(ok(40, 4, 2).is_ok());
        for (bad, part) in [
            (ok(39, 4, 2), "packed codes"),
            (ok(40, 3, 2), "scales"),
            (ok(40, 4, 3), "zero points"),
        ] {
            match bad {
                Err(QuantError::PartLength { part: found, .. }) => assert_eq!(found, part),
                other => panic!("expected a {part} length error, got {other:?}"),
            }
        }
    }

    #[test]
    fn from_parts_refuses_nan_scales_and_empty_shapes() {
        let nan = QuantizedTensor::from_parts(
            int4_g32_asym(),
            WeightShape::new(1, 8),
            vec![0; 4],
            vec![f16::NAN],
            vec![0],
        );
        assert!(matches!(
            nan,
            Err(QuantError::NonFiniteScale { index: 0, .. })
        ));
        let empty = QuantizedTensor::from_parts(
            int4_g32_asym(),
            WeightShape::new(0, 8),
            vec![],
            vec![],
            vec![],
        );
        assert!(matches!(empty, Err(QuantError::EmptyShape { .. })));
    }

    #[test]
    fn dequantize_reads_each_groups_scale_and_zero() {
        // One row of 40 int4 codes: group 0 = 32 codes of 3, group 1 = 8 codes of 5.
        let format = int4_g32_asym();
        let mut codes = vec![3u8; 32];
        codes.extend([5u8; 8]);
        let packed = crate::pack(&codes, Bits::Int4).expect("in range");
        let zeros = crate::pack(&[1, 7], Bits::Int4).expect("in range");
        let scales = vec![f16::from_f32(0.5), f16::from_f32(2.0)];
        let tensor =
            QuantizedTensor::from_parts(format, WeightShape::new(1, 40), packed, scales, zeros)
                .expect("consistent");
        let weights = dequantize(&tensor);
        assert_eq!(&weights[..32], &[1.0; 32]);
        assert_eq!(&weights[32..], &[-4.0; 8]);
        assert_eq!(tensor.zero_points(), vec![1.0, 7.0]);
    }
}
