//! Activations rounded to int8, for products in integer arithmetic.
//!
//! Decoding is bound by how fast the weights stream through the cores, and widening each
//! 4-bit code to f32 for a fused multiply-add costs several instructions a weight. llama.cpp
//! instead rounds the input vector to int8 in blocks (its `Q8_K`) and multiplies codes by
//! codes in integers (`vpdpbusd`: 64 byte products summed into sixteen 32-bit lanes in one
//! instruction), scaling each block's integer sum once. [`Int8Inputs`] is that rounding: a
//! block of inputs ([`Layout::block`]: 128, or 64 for weights in groups of 64) shares the scale
//! `max|x|/127` and each input becomes `round(x / scale)`. A row's product is then
//! `Σ_g s_g·Σ_{b∈g} scale_b·Σ_{i∈b} codeᵢ·qᵢ − Σ_g s_g·z_g·Σ_{i∈g} xᵢ`, the zero points' term
//! still from the exact f32 sums.
//!
//! The rounding moves each product by at most `Σ_b scale_b/2 · Σ_{i∈b} |wᵢ|` (half a step
//! of each block's grid per input), so results differ slightly from the f32 products and a
//! greedy decode can pick another token where two are nearly tied: the products are opt-in
//! (`PackedMatrix::set_int8_activations`), and [`Int8Inputs::reference_product`] is their
//! exact definition, which the kernels are tested against.

/// The block sizes the integer kernels take, largest first: one or two 64-byte registers of
/// rounded inputs.
const BLOCKS: [usize; 2] = [128, 64];

/// How a matrix's integer kernel takes its rounded inputs: blocks of `block` inputs sharing a
/// scale (a group of the weights' grid is whole blocks), and within a block the order of the
/// weights' codes in memory. A byte of packed codes holds `codes_per_byte` consecutive codes,
/// lowest bits first; the kernel splits a block's bytes into that many planes of one code a
/// byte (shifts and a mask), plane `s` holding codes `s, s + codes_per_byte, …`, so a block's
/// inputs come plane by plane: as they are for one code a byte, the even ones then the odd
/// ones for int4, every fourth for int2, every eighth for int1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Inputs a scale covers: 128 or 64.
    pub block: usize,
    /// Codes a byte of the weights holds: 1, 2, 4 or 8.
    pub codes_per_byte: usize,
}

impl Layout {
    /// The layout for rows of `cols` codes, `codes_per_byte` a byte, in groups of `group`:
    /// the largest block that both divide; none when neither 128 nor 64 does.
    pub fn for_rows(codes_per_byte: usize, group: usize, cols: usize) -> Option<Self> {
        let block = BLOCKS
            .into_iter()
            .find(|&b| group.is_multiple_of(b) && cols.is_multiple_of(b))?;
        Some(Self {
            block,
            codes_per_byte,
        })
    }

    /// Where input `i` of a block sits in the block's rounded inputs.
    pub fn slot(&self, i: usize) -> usize {
        let planes = self.codes_per_byte;
        (i % planes) * (self.block / planes) + i / planes
    }
}

/// One input vector rounded to int8, block by block.
#[derive(Debug, Clone)]
pub struct Int8Inputs {
    /// The rounded inputs, each block in its layout's order.
    pub codes: Vec<i8>,
    /// Each block's scale.
    pub scales: Vec<f32>,
    /// The blocks' size and order.
    pub layout: Layout,
}

impl Int8Inputs {
    /// `x` (a whole number of blocks long) rounded block by block, laid out per `layout`.
    pub fn new(x: &[f32], layout: Layout) -> Self {
        match layout.codes_per_byte {
            1 => Self::rounded::<1>(x, layout),
            2 => Self::rounded::<2>(x, layout),
            4 => Self::rounded::<4>(x, layout),
            _ => Self::rounded::<8>(x, layout),
        }
    }

    /// [`Int8Inputs::new`] for `PLANES` codes a byte: a block's inputs taken plane by plane
    /// with strides known when compiled, where `Layout::slot` divided twice an input (with
    /// a library call to round it, a tenth of a token's serial work on two threads).
    fn rounded<const PLANES: usize>(x: &[f32], layout: Layout) -> Self {
        let block = layout.block;
        assert!(x.len().is_multiple_of(block), "whole blocks of {block}");
        assert_eq!(layout.codes_per_byte, PLANES, "the layout's planes");
        let per_plane = block / PLANES;
        let mut codes = vec![0i8; x.len()];
        let mut scales = Vec::with_capacity(x.len() / block);
        for (inputs, rounded) in x.chunks(block).zip(codes.chunks_mut(block)) {
            let max = inputs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            for (plane, rounded) in rounded.chunks_exact_mut(per_plane).enumerate() {
                for (j, code) in rounded.iter_mut().enumerate() {
                    *code = nearest_int8(inputs[j * PLANES + plane] / scale);
                }
            }
            scales.push(scale);
        }
        Self {
            codes,
            scales,
            layout,
        }
    }

    /// The rounded input `i` (in the inputs' own order) as the value it stands for.
    pub fn value(&self, i: usize) -> f32 {
        let block = self.layout.block;
        let slot = self.layout.slot(i % block);
        f32::from(self.codes[i - i % block + slot]) * self.scales[i / block]
    }

    /// `Σ_g s_g·Σ_{b∈g} scale_b·Σ_{i∈b} codeᵢ·qᵢ` for one row's `codes` (one per input, in the
    /// inputs' order) in groups of `group` with scales `group_scales`, integers summed
    /// exactly: what the integer kernels compute, up to the order of their f32 additions.
    pub fn reference_product(&self, codes: &[u8], group: usize, group_scales: &[f32]) -> f64 {
        let block = self.layout.block;
        let mut total = 0.0f64;
        for (b, scale) in self.scales.iter().enumerate() {
            let integer: i64 = (b * block..(b + 1) * block)
                .map(|i| i64::from(codes[i]) * (self.value(i) / scale).round() as i64)
                .sum();
            total +=
                f64::from(group_scales[b * block / group]) * f64::from(*scale) * integer as f64;
        }
        total
    }
}

/// `v.round()` (halves away from zero) clamped to ±127: the truncation of `v` moved by just
/// under a half towards its sign, which equals the rounding for every float of magnitude up to
/// 200 (checked for each one) and needs no library call on x86-64's baseline, as `round` does.
fn nearest_int8(v: f32) -> i8 {
    const JUST_UNDER_HALF: f32 = 0.499_999_97;
    ((v + JUST_UNDER_HALF.copysign(v)) as i32).clamp(-127, 127) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each input lands within half a step of its block's grid, the block's largest on ±127,
    /// in every layout; a block of zeros stays zero.
    #[test]
    fn inputs_round_to_their_blocks_grid_in_every_layout() {
        let mut x: Vec<f32> = (0..3 * 128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[2 * 128..].iter_mut().for_each(|v| *v = 0.0);
        for block in BLOCKS {
            for codes_per_byte in [1, 2, 4, 8] {
                let layout = Layout::for_rows(codes_per_byte, block, 3 * 128).unwrap();
                assert_eq!(layout.block, block);
                let inputs = Int8Inputs::new(&x, layout);
                for (i, &v) in x.iter().enumerate() {
                    let step = inputs.scales[i / block];
                    assert!(
                        (inputs.value(i) - v).abs() <= step / 2.0 + 1e-6,
                        "{layout:?} {i}"
                    );
                }
                let largest = |b: usize| {
                    inputs.codes[b * block..(b + 1) * block]
                        .iter()
                        .map(|q| q.unsigned_abs())
                        .max()
                };
                assert_eq!(largest(0), Some(127), "{layout:?}");
                assert_eq!(largest(2 * 128 / block), Some(0), "{layout:?}");
            }
        }
    }

    /// The rounding is `round` (halves away from zero), clamped: at every half up to ±200
    /// and the floats on either side of it, and on a sweep of every 4,099th float up to 200
    /// (the whole range was checked once, outside the tests).
    #[test]
    fn rounding_takes_halves_away_from_zero() {
        let round = |v: f32| v.round().clamp(-127.0, 127.0) as i8;
        let halves = (-400..=400).map(|k| k as f32 / 2.0);
        let near = halves.flat_map(|h| [h.next_down(), h, h.next_up()]);
        let sweep = (0..=200f32.to_bits())
            .step_by(4099)
            .map(f32::from_bits)
            .flat_map(|v| [v, -v]);
        for v in near.chain(sweep) {
            assert_eq!(nearest_int8(v), round(v), "{v:e}");
        }
    }

    /// A block's inputs come plane by plane: int4's odd inputs after its even ones, int2's
    /// every fourth, int1's every eighth; groups of 64 take blocks of 64.
    #[test]
    fn blocks_hold_their_inputs_plane_by_plane() {
        let x: Vec<f32> = (0..128).map(|i| i as f32 - 64.0).collect();
        let natural = Int8Inputs::new(&x, Layout::for_rows(1, 128, 128).unwrap());
        let nibbles = Int8Inputs::new(&x, Layout::for_rows(2, 128, 128).unwrap());
        assert_eq!(nibbles.codes[1], natural.codes[2]);
        assert_eq!(nibbles.codes[64], natural.codes[1]);
        let crumbs = Int8Inputs::new(&x, Layout::for_rows(4, 128, 128).unwrap());
        assert_eq!(crumbs.codes[1], natural.codes[4]);
        assert_eq!(crumbs.codes[32 + 1], natural.codes[5]);
        let bits = Layout::for_rows(8, 64, 128).unwrap();
        assert_eq!(bits.block, 64);
        assert_eq!((bits.slot(8), bits.slot(1), bits.slot(63)), (1, 8, 63));
        assert_eq!(Layout::for_rows(2, 32, 128), None);
    }
}
