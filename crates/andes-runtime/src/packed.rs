//! Matrix products straight from a package's packed codes.
//!
//! A [`PackedMatrix`] keeps the codes exactly as the package stores them (row-major, each row
//! on a byte boundary, `docs/quant-formats.md`): those bytes are what a decoding step reads,
//! so their size is the memory traffic the runtime pays. Repacking at load only widens the
//! f16 scales and the packed zero points to f32 (a few percent of the bytes) and builds a
//! per-byte decoding table for the width.
//!
//! A product takes one row at a time: the row's codes are decoded into an f32 scratch row
//! (one table lookup per byte: 8 codes for int1, 5 for ternary, 4 for int2, 2 for int4, 1
//! for int8; int3 decodes 8 codes from every 3 bytes), then each group contributes
//! `scale · (Σ codeᵢ·xᵢ − zero · Σ xᵢ)`, where `Σ xᵢ` over the group is computed once per
//! input vector for all rows. The scratch row stays in L1 and the dot products run over
//! contiguous f32 in eight independent lanes, which the compiler vectorizes. Rows are split
//! across threads; a product of several vectors (prefill, a speculative block) decodes each
//! row once for all of them.

use andes_quant::{Bits, QuantizedTensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Rows given to one task: enough work to amortize scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 32;

/// How a row's bytes become codes.
#[derive(Debug, Clone)]
enum Codes {
    /// `per_byte` codes per byte, looked up in a 256-entry table of `per_byte` f32 each.
    Table { per_byte: usize, table: Vec<f32> },
    /// Three bytes hold eight 3-bit codes, least significant first.
    Int3,
}

/// A `[rows, cols]` weight matrix to multiply vectors by: packed codes with their groups'
/// scales and zero points, or plain f32 (an unquantized model).
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    weights: Weights,
}

#[derive(Debug, Clone)]
enum Weights {
    Packed {
        codes: Codes,
        bytes: Vec<u8>,
        row_bytes: usize,
        group: usize,
        groups: usize,
        scales: Vec<f32>,
        zeros: Vec<f32>,
    },
    Float(Vec<f32>),
    Half(Vec<f16>),
}

impl PackedMatrix {
    /// The package's tensor, codes kept packed.
    pub fn from_quantized(tensor: &QuantizedTensor) -> Self {
        let shape = tensor.shape();
        let format = tensor.format();
        let bits = format.bits();
        let codes = match bits {
            Bits::Int3 => Codes::Int3,
            Bits::Ternary => Codes::Table {
                per_byte: 5,
                table: table(5, |byte, i| (byte / 3u32.pow(i as u32)) % 3),
            },
            other => {
                let width = other.stream_bits().expect("integer widths stream") as usize;
                let per_byte = 8 / width;
                let mask = (1u32 << width) - 1;
                Codes::Table {
                    per_byte,
                    table: table(per_byte, |byte, i| (byte >> (i * width)) & mask),
                }
            }
        };
        let groups = tensor.groups_per_row();
        PackedMatrix {
            rows: shape.out_features,
            cols: shape.in_features,
            weights: Weights::Packed {
                codes,
                row_bytes: tensor.packed().len() / shape.out_features,
                bytes: tensor.packed().to_vec(),
                group: format.granularity().group_len(shape.in_features),
                groups,
                scales: tensor.scales().iter().map(|s| f32::from(*s)).collect(),
                zeros: tensor.zero_points(),
            },
        }
    }

    /// An unquantized `[rows, cols]` row-major matrix.
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
        PackedMatrix {
            rows,
            cols,
            weights: Weights::Float(values),
        }
    }

    /// An unquantized `[rows, cols]` row-major matrix kept in f16 (a package's float
    /// tensors at the target's precision): half the bytes of f32, widened row by row.
    pub fn from_f16(rows: usize, cols: usize, values: Vec<f16>) -> Self {
        assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
        PackedMatrix {
            rows,
            cols,
            weights: Weights::Half(values),
        }
    }

    /// Row `r` of an unquantized matrix, in f32 (an embedding lookup).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let span = r * self.cols..(r + 1) * self.cols;
        match &self.weights {
            Weights::Float(values) => values[span].to_vec(),
            Weights::Half(values) => values[span].to_f32_vec(),
            Weights::Packed { .. } => unreachable!("embedding tables are not packed"),
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes a product reads: the packed codes, scales and zero points as stored here.
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Packed {
                bytes,
                scales,
                zeros,
                ..
            } => bytes.len() + 4 * (scales.len() + zeros.len()),
            Weights::Float(values) => 4 * values.len(),
            Weights::Half(values) => 2 * values.len(),
        }
    }

    /// `y = W·x` for each of the `x.len() / cols` vectors of `x` (row-major), appended as
    /// rows of `rows` to the returned vector.
    pub fn multiply(&self, x: &[f32]) -> Vec<f32> {
        let count = x.len() / self.cols;
        assert_eq!(
            count * self.cols,
            x.len(),
            "inputs of {} features",
            self.cols
        );
        // outputs[r·count + m]: row-major by output row, so each task owns whole rows
        let mut outputs = vec![0.0f32; self.rows * count];
        match &self.weights {
            Weights::Float(values) => {
                outputs
                    .par_chunks_mut(ROWS_PER_TASK * count)
                    .enumerate()
                    .for_each(|(task, out)| {
                        for (i, out) in out.chunks_mut(count).enumerate() {
                            let r = task * ROWS_PER_TASK + i;
                            let row = &values[r * self.cols..(r + 1) * self.cols];
                            for (m, y) in out.iter_mut().enumerate() {
                                *y = dot(row, &x[m * self.cols..(m + 1) * self.cols]);
                            }
                        }
                    });
            }
            Weights::Half(values) => {
                let cols = self.cols;
                outputs
                    .par_chunks_mut(ROWS_PER_TASK * count)
                    .enumerate()
                    .for_each(|(task, out)| {
                        let mut row = vec![0.0f32; cols];
                        for (i, out) in out.chunks_mut(count).enumerate() {
                            let r = task * ROWS_PER_TASK + i;
                            values[r * cols..(r + 1) * cols].convert_to_f32_slice(&mut row);
                            for (m, y) in out.iter_mut().enumerate() {
                                *y = dot(&row, &x[m * cols..(m + 1) * cols]);
                            }
                        }
                    });
            }
            Weights::Packed {
                codes,
                bytes,
                row_bytes,
                group,
                groups,
                scales,
                zeros,
            } => {
                let (cols, group, groups) = (self.cols, *group, *groups);
                let sums: Vec<f32> = x
                    .chunks(cols)
                    .flat_map(|v| v.chunks(group).map(|g| g.iter().sum::<f32>()))
                    .collect();
                outputs
                    .par_chunks_mut(ROWS_PER_TASK * count)
                    .enumerate()
                    .for_each(|(task, out)| {
                        let mut row = vec![0.0f32; cols.next_multiple_of(8)];
                        for (i, out) in out.chunks_mut(count).enumerate() {
                            let r = task * ROWS_PER_TASK + i;
                            codes.decode(&bytes[r * row_bytes..(r + 1) * row_bytes], &mut row);
                            let row = &row[..cols];
                            let (scales, zeros) = (
                                &scales[r * groups..(r + 1) * groups],
                                &zeros[r * groups..(r + 1) * groups],
                            );
                            for (m, y) in out.iter_mut().enumerate() {
                                let input = &x[m * cols..(m + 1) * cols];
                                let sums = &sums[m * groups..(m + 1) * groups];
                                let mut total = 0.0f32;
                                for g in 0..groups {
                                    let span = g * group..((g + 1) * group).min(cols);
                                    let codes_x = dot(&row[span.clone()], &input[span]);
                                    total += scales[g] * (codes_x - zeros[g] * sums[g]);
                                }
                                *y = total;
                            }
                        }
                    });
            }
        }
        if count == 1 {
            return outputs;
        }
        let mut by_vector = vec![0.0f32; outputs.len()];
        for (r, row) in outputs.chunks(count).enumerate() {
            for (m, &y) in row.iter().enumerate() {
                by_vector[m * self.rows + r] = y;
            }
        }
        by_vector
    }
}

impl Codes {
    /// Decodes one packed row into `out` (at least the row's codes long, a multiple of 8).
    fn decode(&self, bytes: &[u8], out: &mut [f32]) {
        match self {
            Codes::Table { per_byte, table } => {
                let k = *per_byte;
                for (chunk, &byte) in out.chunks_mut(k).zip(bytes) {
                    let entry = &table[byte as usize * k..byte as usize * k + k];
                    chunk.copy_from_slice(&entry[..chunk.len()]);
                }
            }
            Codes::Int3 => {
                for (chunk, triple) in out.chunks_mut(8).zip(bytes.chunks(3)) {
                    let mut word = 0u32;
                    for (i, &b) in triple.iter().enumerate() {
                        word |= u32::from(b) << (8 * i);
                    }
                    for (i, code) in chunk.iter_mut().enumerate() {
                        *code = ((word >> (3 * i)) & 7) as f32;
                    }
                }
            }
        }
    }
}

/// A 256-entry table of `per_byte` codes each, `code(byte, i)` the `i`-th code of `byte`.
fn table(per_byte: usize, code: impl Fn(u32, usize) -> u32) -> Vec<f32> {
    (0..256u32)
        .flat_map(|byte| (0..per_byte).map(move |i| (byte, i)))
        .map(|(byte, i)| code(byte, i) as f32)
        .collect()
}

/// `Σ aᵢ·bᵢ` in eight independent lanes (vectorized by the compiler), then the tail.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_tail, b_tail) = (a8.remainder(), b8.remainder());
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut total = lanes.iter().sum::<f32>();
    for (x, y) in a_tail.iter().zip(b_tail) {
        total += x * y;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use andes_quant::{QuantFormat, WeightShape, dequantize, quantize_rtn};

    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect()
    }

    /// Every format, per channel and per group, with a last group shorter than the others:
    /// the packed product equals the product with the dequantized weights.
    #[test]
    fn every_format_multiplies_like_its_dequantized_weights() {
        let (rows, cols) = (37, 200);
        let w = weights(rows, cols);
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i % 17) as f32 - 8.0) / 9.0)
            .collect();
        for format in QuantFormat::all() {
            let q = quantize_rtn(&w, WeightShape::new(rows, cols), format).unwrap();
            let dense = dequantize(&q);
            let packed = PackedMatrix::from_quantized(&q);
            let y = packed.multiply(&x);
            let one = packed.multiply(&x[cols..2 * cols]);
            for m in 0..3 {
                for r in 0..rows {
                    let expected: f64 = (0..cols)
                        .map(|c| dense[r * cols + c] as f64 * x[m * cols + c] as f64)
                        .sum();
                    let found = y[m * rows + r] as f64;
                    assert!(
                        (found - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                        "{format}: row {r} vector {m}: {found} vs {expected}"
                    );
                }
            }
            assert_eq!(&one[..], &y[rows..2 * rows], "{format}: one vector alone");
        }
    }
}
