//! Activations rounded to int8, for products in integer arithmetic.
//!
//! Decoding is bound by how fast the weights stream through the cores, and widening each
//! 4-bit code to f32 for a fused multiply-add costs several instructions a weight. llama.cpp
//! instead rounds the input vector to int8 in blocks (its `Q8_K`) and multiplies codes by
//! codes in integers (`vpdpbusd`: 64 byte products summed into sixteen 32-bit lanes in one
//! instruction), scaling each block's integer sum once. [`Int8Inputs`] is that rounding: a
//! block of [`BLOCK`] inputs shares the scale `max|x|/127` and each input becomes
//! `round(x / scale)`. A row's product is then `Σ_g s_g·Σ_{b∈g} scale_b·Σ_{i∈b} codeᵢ·qᵢ − Σ_g
//! s_g·z_g·Σ_{i∈g} xᵢ`, the zero points' term still from the exact f32 sums.
//!
//! The rounding moves each product by at most `Σ_b scale_b/2 · Σ_{i∈b} |wᵢ|` (half a step
//! of each block's grid per input), so results differ slightly from the f32 products and a
//! greedy decode can pick another token where two are nearly tied: the products are opt-in
//! (`PackedMatrix::with_int8_activations`), and [`Int8Inputs::reference_product`] is their
//! exact definition, which the kernels are tested against.

/// Inputs a scale covers, and the unit the integer kernels take: a group of the weights'
/// grid must be whole blocks.
pub const BLOCK: usize = 128;

/// One input vector rounded to int8, block by block.
#[derive(Debug, Clone)]
pub struct Int8Inputs {
    /// The rounded inputs, in the order the weights' codes come in (see [`Order`]).
    pub codes: Vec<i8>,
    /// Each block's scale.
    pub scales: Vec<f32>,
}

/// The order of the rounded inputs within a block: the weights' codes' order in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// As the inputs come (one code a byte).
    Natural,
    /// The block's even-indexed inputs, then its odd ones: int4 bytes hold code `2j` in their
    /// low nibble and `2j + 1` in their high one, and the kernel splits a block's 64 bytes
    /// into the low nibbles and the high ones.
    Nibbles,
}

impl Int8Inputs {
    /// `x` (a whole number of blocks long) rounded block by block, in `order`.
    pub fn new(x: &[f32], order: Order) -> Self {
        assert!(x.len().is_multiple_of(BLOCK), "whole blocks of {BLOCK}");
        let mut codes = Vec::with_capacity(x.len());
        let mut scales = Vec::with_capacity(x.len() / BLOCK);
        for block in x.chunks(BLOCK) {
            let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            let round = |v: f32| (v / scale).round().clamp(-127.0, 127.0) as i8;
            match order {
                Order::Natural => codes.extend(block.iter().map(|&v| round(v))),
                Order::Nibbles => {
                    codes.extend(block.iter().step_by(2).map(|&v| round(v)));
                    codes.extend(block.iter().skip(1).step_by(2).map(|&v| round(v)));
                }
            }
            scales.push(scale);
        }
        Self { codes, scales }
    }

    /// The rounded input `i` (in the inputs' own order) as the value it stands for.
    pub fn value(&self, i: usize, order: Order) -> f32 {
        let (block, within) = (i / BLOCK, i % BLOCK);
        let slot = match order {
            Order::Natural => within,
            Order::Nibbles => within / 2 + (within % 2) * (BLOCK / 2),
        };
        f32::from(self.codes[block * BLOCK + slot]) * self.scales[block]
    }

    /// `Σ_g s_g·Σ_{b∈g} scale_b·Σ_{i∈b} codeᵢ·qᵢ` for one row's `codes` (one per input, in the
    /// inputs' order) in groups of `group` with scales `group_scales`, integers summed
    /// exactly: what the integer kernels compute, up to the order of their f32 additions.
    pub fn reference_product(
        &self,
        codes: &[u8],
        order: Order,
        group: usize,
        group_scales: &[f32],
    ) -> f64 {
        let mut total = 0.0f64;
        for (b, scale) in self.scales.iter().enumerate() {
            let integer: i64 = (b * BLOCK..(b + 1) * BLOCK)
                .map(|i| i64::from(codes[i]) * (self.value(i, order) / scale).round() as i64)
                .sum();
            total +=
                f64::from(group_scales[b * BLOCK / group]) * f64::from(*scale) * integer as f64;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each input lands within half a step of its block's grid, the block's largest on ±127,
    /// in either order; a block of zeros stays zero.
    #[test]
    fn inputs_round_to_their_blocks_grid_in_either_order() {
        let mut x: Vec<f32> = (0..3 * BLOCK)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[2 * BLOCK..].iter_mut().for_each(|v| *v = 0.0);
        for order in [Order::Natural, Order::Nibbles] {
            let inputs = Int8Inputs::new(&x, order);
            for (i, &v) in x.iter().enumerate() {
                let step = inputs.scales[i / BLOCK];
                assert!(
                    (inputs.value(i, order) - v).abs() <= step / 2.0 + 1e-6,
                    "{order:?} {i}"
                );
            }
            let largest = |b: usize| {
                inputs.codes[b * BLOCK..(b + 1) * BLOCK]
                    .iter()
                    .map(|q| q.unsigned_abs())
                    .max()
            };
            assert_eq!(largest(0), Some(127));
            assert_eq!(largest(2), Some(0));
        }
        // Nibble order puts a block's odd inputs after its even ones.
        let nibbles = Int8Inputs::new(&x, Order::Nibbles);
        let natural = Int8Inputs::new(&x, Order::Natural);
        assert_eq!(nibbles.codes[1], natural.codes[2]);
        assert_eq!(nibbles.codes[BLOCK / 2], natural.codes[1]);
    }
}
