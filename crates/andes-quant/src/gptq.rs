//! GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, arXiv:2210.17323): quantize a linear layer's
//! weight column by column, each time moving the rounding error onto the columns not yet
//! quantized, weighted by the inverse Hessian of the layer's output error on calibration data.
//!
//! The structure is the reference implementation's (IST-DASLab/gptq, `GPTQ.fasterquant`):
//!
//! 1. Dead columns (`H_ii = 0`: the input never fires) get `H_ii = 1` and weight 0.
//! 2. With `act_order`, columns are processed in order of decreasing `H_ii`.
//! 3. `H += damp_percent · mean(diag H) · I`; `U` = upper Cholesky factor of `H⁻¹`.
//! 4. For each column `j`: `q = quantize(w_j)`, `e = (w_j − q) / U_jj`, and every later column
//!    `k` of the current block gets `w_k −= e · U_jk` at once; the later blocks get the whole
//!    block's errors in one batch (`W[:, i2:] −= E · U[i1:i2, i2:]`, "lazy batch updates").
//!
//! The grid is andes-quant's (the crate's RTN rule picks each group's scale and zero point, and
//! [`quantize_code`] rounds), so the result is an ordinary [`QuantizedTensor`]. Where the
//! reference leaves a choice open, andes-quant chooses (`docs/quant-formats.md`, section "GPTQ"):
//!
//! * Without `act_order`, a group's scale and zero point are chosen when the quantizer reaches
//!   the group's first column, from the group's weights with every error so far applied (the
//!   reference's `static_groups=False`; its code reads the lazily updated copy, which for a group
//!   starting inside a block still lacks that block's errors; here the pending errors are
//!   applied, so the block size never changes the result in exact arithmetic).
//! * With `act_order`, groups stay the original ranges of consecutive columns, so the stored
//!   layout is unchanged, and their parameters are chosen from the weights before any column is
//!   quantized (the reference's `static_groups=True`). Grouping in permuted order would need a
//!   per-column group index (`g_idx`) that the format does not store.
//! * Per-channel parameters are chosen after dead columns are zeroed (the reference chooses them
//!   before), so an input that never fires does not widen its row's grid.
//! * The order of `act_order` is a stable sort: equal diagonals keep their column order.
//!
//! Everything but the grid is f64 (Hessian, factorization, error feedback); a column is rounded
//! from the f32 value of its updated weights, as RTN rounds f32 weights.

use serde::{Deserialize, Serialize};

use crate::cholesky::inverse_cholesky_upper;
use crate::error::QuantError;
use crate::format::QuantFormat;
use crate::grid::{dequantize_code, quantize_code};
use crate::hessian::Hessian;
use crate::pack::{pack_into, packed_len};
use crate::product::{Layout, multiply_add};
use crate::rtn::{GroupParams, group_params};
use crate::tensor::{QuantizedTensor, WeightShape};

/// How [`quantize_gptq`] runs. `Default` gives the reference implementation's defaults: 1 %
/// damping, natural column order, blocks of 128 columns.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptqOptions {
    /// Damping added to every diagonal entry of the Hessian, as a fraction of the mean diagonal
    /// (0.01 = 1 %, the reference's `percdamp`). It makes a Hessian of collinear or too few
    /// calibration tokens invertible and limits how far one column's error is pushed onto the
    /// others. Finite and ≥ 0.
    pub damp_percent: f64,
    /// Quantize columns in order of decreasing Hessian diagonal (the reference's `act_order`,
    /// `desc_act` in AutoGPTQ): the inputs with the most energy are rounded first, while the
    /// most columns remain to absorb their error. Groups stay the original column ranges.
    pub act_order: bool,
    /// Columns per lazy batch update. Only speed and memory traffic depend on it; the result is
    /// the same in exact arithmetic (up to f64 rounding in practice). At least 1.
    pub block_size: usize,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp_percent: 0.01,
            act_order: false,
            block_size: 128,
        }
    }
}

impl GptqOptions {
    fn check(&self) -> Result<(), QuantError> {
        if !(self.damp_percent.is_finite() && self.damp_percent >= 0.0) {
            return Err(QuantError::InvalidGptqOption {
                option: "damp_percent",
                value: self.damp_percent.to_string(),
                expected: "a finite fraction >= 0 of the mean Hessian diagonal (0.01 = 1 %)",
            });
        }
        if self.block_size == 0 {
            return Err(QuantError::InvalidGptqOption {
                option: "block_size",
                value: "0".to_string(),
                expected: "at least 1 column",
            });
        }
        Ok(())
    }
}

/// Quantizes a `[out_features, in_features]` row-major f32 weight matrix in `format` by GPTQ,
/// minimizing the layer's output error on the calibration activations summarized by `hessian`
/// rather than the weights' own error as [`crate::quantize_rtn`] does.
///
/// Errors on what RTN refuses (a buffer that does not match `shape`, an empty shape, a
/// non-finite weight, a scale beyond f16), on a Hessian of another width or with no tokens, on
/// invalid options, and on a damped Hessian that is not positive definite (possible only with
/// `damp_percent = 0`).
pub fn quantize_gptq(
    weights: &[f32],
    shape: WeightShape,
    hessian: &Hessian,
    format: QuantFormat,
    options: GptqOptions,
) -> Result<QuantizedTensor, QuantError> {
    shape.check_weights(weights)?;
    options.check()?;
    let cols = shape.in_features;
    if hessian.in_features() != cols {
        return Err(QuantError::HessianShape {
            hessian: hessian.in_features(),
            shape: shape.to_string(),
            in_features: cols,
        });
    }
    if !hessian.is_full() {
        return Err(QuantError::DiagonalHessian);
    }
    if hessian.tokens() == 0 {
        return Err(QuantError::NoCalibrationTokens { in_features: cols });
    }
    let mut h = hessian.matrix();
    let mut w: Vec<f64> = weights.iter().map(|&v| f64::from(v)).collect();
    for i in 0..cols {
        if h[i * cols + i] == 0.0 {
            h[i * cols + i] = 1.0;
            w.iter_mut().skip(i).step_by(cols).for_each(|v| *v = 0.0);
        }
    }
    let mut run = Gptq::new(format, shape, options.act_order, &h);
    if options.act_order {
        run.choose_static_params(&w)?;
    }
    let mut h = permute_symmetric(&h, &run.order);
    let mean_diagonal = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[i * cols + i] += options.damp_percent * mean_diagonal;
    }
    let u =
        inverse_cholesky_upper(&h, cols).map_err(|j| QuantError::HessianNotPositiveDefinite {
            column: run.order[j],
            damp_percent: options.damp_percent,
        })?;
    run.quantize(
        permute_columns(&w, cols, &run.order),
        &u,
        options.block_size,
    )?;
    Ok(run.into_tensor())
}

/// The state of one GPTQ run. Columns are processed in `order`; the working weights and `U` are
/// kept in that order, codes and group parameters in the original one.
struct Gptq {
    format: QuantFormat,
    shape: WeightShape,
    group_len: usize,
    groups: usize,
    /// Processing position → original column.
    order: Vec<usize>,
    /// Group parameters fixed before the run (act_order) rather than at each group's start.
    static_groups: bool,
    /// `[out_features, groups]`, original group order.
    params: Vec<GroupParams>,
    /// `[out_features, in_features]`, original column order.
    codes: Vec<u8>,
}

impl Gptq {
    fn new(format: QuantFormat, shape: WeightShape, act_order: bool, h: &[f64]) -> Self {
        let cols = shape.in_features;
        let granularity = format.granularity();
        let groups = granularity.groups_per_row(cols);
        let mut order: Vec<usize> = (0..cols).collect();
        if act_order {
            // `sort_by` is stable: equal diagonals (dead columns, all set to 1) keep their order.
            order.sort_by(|&a, &b| h[b * cols + b].total_cmp(&h[a * cols + a]));
        }
        let zero = GroupParams {
            scale: half::f16::ZERO,
            zero: 0.0,
        };
        Gptq {
            format,
            shape,
            group_len: granularity.group_len(cols),
            groups,
            order,
            static_groups: act_order,
            params: vec![zero; shape.out_features * groups],
            codes: vec![0; shape.numel()],
        }
    }

    /// RTN's parameters of every group of `w` (`[out_features, in_features]`, original order).
    fn choose_static_params(&mut self, w: &[f64]) -> Result<(), QuantError> {
        let mut values = Vec::with_capacity(self.group_len);
        for (row, weights) in w.chunks(self.shape.in_features).enumerate() {
            for (group, group_weights) in weights.chunks(self.group_len).enumerate() {
                values.clear();
                values.extend(group_weights.iter().map(|&v| v as f32));
                self.params[row * self.groups + group] = self.group_params(&values, row, group)?;
            }
        }
        Ok(())
    }

    fn group_params(
        &self,
        values: &[f32],
        row: usize,
        group: usize,
    ) -> Result<GroupParams, QuantError> {
        group_params(values, self.format).map_err(|scale| QuantError::ScaleOverflow {
            row,
            group,
            scale,
        })
    }

    /// Quantizes every column of `w` (`[out_features, in_features]`, processing order) with the
    /// error feedback of `u` (upper Cholesky factor of the damped inverse Hessian, same order).
    fn quantize(
        &mut self,
        mut w: Vec<f64>,
        u: &[f64],
        block_size: usize,
    ) -> Result<(), QuantError> {
        let (rows, cols) = (self.shape.out_features, self.shape.in_features);
        // Scaled errors `e` of the current block, `[rows, block_size]`.
        let mut errors = vec![0.0f64; rows * block_size];
        for i1 in (0..cols).step_by(block_size) {
            let i2 = (i1 + block_size).min(cols);
            let block = Block {
                i1,
                i2,
                size: block_size,
            };
            for j in i1..i2 {
                if !self.static_groups && j % self.group_len == 0 {
                    self.choose_group_params(&w, u, &errors, block, j)?;
                }
                self.quantize_column(&mut w, u, &mut errors, block, j);
            }
            // Lazy batch update: the later blocks receive this block's errors at once,
            // W[:, i2:] −= E · U[i1:i2, i2:], one matrix product.
            multiply_add(
                (&mut w, Layout::row_major(0, i2, cols)),
                (&errors, Layout::row_major(0, 0, block_size)),
                (u, Layout::row_major(i1, i2, cols)),
                [rows, cols - i2, i2 - i1],
                -1.0,
            );
        }
        Ok(())
    }

    /// Parameters of the group starting at column `j` (no act_order, so `j` is also the
    /// original column), from its weights with every error so far applied: columns inside the
    /// block are up to date; columns past it still lack this block's errors, added here.
    fn choose_group_params(
        &mut self,
        w: &[f64],
        u: &[f64],
        errors: &[f64],
        block: Block,
        j: usize,
    ) -> Result<(), QuantError> {
        let cols = self.shape.in_features;
        let end = (j + self.group_len).min(cols);
        let group = j / self.group_len;
        let mut values = Vec::with_capacity(end - j);
        for row in 0..self.shape.out_features {
            let weights = &w[row * cols..(row + 1) * cols];
            let block_errors = &errors[row * block.size..row * block.size + j - block.i1];
            values.clear();
            values.extend(weights[j..end.min(block.i2)].iter().map(|&v| v as f32));
            for c in block.i2..end {
                let applied: f64 = block_errors
                    .iter()
                    .zip(block.i1..j)
                    .map(|(&e, k)| e * u[k * cols + c])
                    .sum();
                values.push((weights[c] - applied) as f32);
            }
            self.params[row * self.groups + group] = self.group_params(&values, row, group)?;
        }
        Ok(())
    }

    /// Rounds column `j` (processing order) of every row and moves each row's error onto the
    /// block's later columns.
    fn quantize_column(
        &mut self,
        w: &mut [f64],
        u: &[f64],
        errors: &mut [f64],
        block: Block,
        j: usize,
    ) {
        let cols = self.shape.in_features;
        let bits = self.format.bits();
        let original = self.order[j];
        let group = original / self.group_len;
        let d = u[j * cols + j];
        let feedback = &u[j * cols + j + 1..j * cols + block.i2];
        for row in 0..self.shape.out_features {
            let params = self.params[row * self.groups + group];
            let weights = &mut w[row * cols..(row + 1) * cols];
            let value = weights[j];
            let code = quantize_code(value as f32, params.scale, params.zero, bits);
            let e = (value - f64::from(dequantize_code(code, params.scale, params.zero))) / d;
            for (v, &uk) in weights[j + 1..block.i2].iter_mut().zip(feedback) {
                *v -= e * uk;
            }
            errors[row * block.size + j - block.i1] = e;
            self.codes[row * cols + original] = code;
        }
    }

    fn into_tensor(self) -> QuantizedTensor {
        let bits = self.format.bits();
        let (rows, cols) = (self.shape.out_features, self.shape.in_features);
        let mut packed = Vec::with_capacity(rows * packed_len(bits, cols));
        let mut zeros = Vec::new();
        let mut row_zeros = Vec::with_capacity(self.groups);
        for (codes, params) in self.codes.chunks(cols).zip(self.params.chunks(self.groups)) {
            pack_into(codes, bits, &mut packed);
            if !self.format.symmetric() {
                row_zeros.clear();
                row_zeros.extend(params.iter().map(|p| p.zero as u8));
                pack_into(&row_zeros, bits, &mut zeros);
            }
        }
        let scales = self.params.iter().map(|p| p.scale).collect();
        QuantizedTensor::from_trusted_parts(self.format, self.shape, packed, scales, zeros)
    }
}

/// Columns `i1..i2` of the current lazy batch; `size` is the stride of the error buffer.
#[derive(Clone, Copy)]
struct Block {
    i1: usize,
    i2: usize,
    size: usize,
}

/// `H[order][:, order]` of a `[n, n]` matrix.
fn permute_symmetric(h: &[f64], order: &[usize]) -> Vec<f64> {
    let n = order.len();
    let mut out = Vec::with_capacity(n * n);
    for &a in order {
        out.extend(order.iter().map(|&b| h[a * n + b]));
    }
    out
}

/// `W[:, order]` of a `[rows, cols]` matrix.
fn permute_columns(w: &[f64], cols: usize, order: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(w.len());
    for row in w.chunks(cols) {
        out.extend(order.iter().map(|&c| row[c]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtn::quantize_rtn;
    use crate::tensor::dequantize;

    /// Deterministic values in [-1, 1) (splitmix64), so the tests need no RNG crate.
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// A Hessian of `tokens` correlated activations over `cols` features: each token mixes a few
    /// shared directions, and feature scales differ, so act_order has something to reorder.
    fn correlated_hessian(cols: usize, tokens: usize, seed: u64) -> Hessian {
        let shared = noise(seed, 3 * cols);
        let own = noise(seed + 1, tokens * cols);
        let mix = noise(seed + 2, tokens * 3);
        let mut x = Vec::with_capacity(tokens * cols);
        for t in 0..tokens {
            for c in 0..cols {
                let common: f32 = (0..3).map(|k| mix[t * 3 + k] * shared[k * cols + c]).sum();
                x.push((own[t * cols + c] + 2.0 * common) * (1.0 + (c % 7) as f32));
            }
        }
        let mut h = Hessian::new(cols);
        h.accumulate(&x, tokens).expect("finite activations");
        h
    }

    fn format(name: &str) -> QuantFormat {
        name.parse().expect("valid format")
    }

    fn with(act_order: bool, block_size: usize) -> GptqOptions {
        GptqOptions {
            act_order,
            block_size,
            ..GptqOptions::default()
        }
    }

    #[test]
    fn an_isotropic_hessian_leaves_nothing_to_compensate_so_gptq_is_rtn() {
        // One token per feature, x_t = e_t: H = 2/n · I, no off-diagonal to push errors along.
        let (rows, cols) = (3, 40);
        let mut x = vec![0.0f32; cols * cols];
        x.iter_mut().step_by(cols + 1).for_each(|v| *v = 1.0);
        let mut h = Hessian::new(cols);
        h.accumulate(&x, cols).expect("valid");
        let w = noise(7, rows * cols);
        let shape = WeightShape::new(rows, cols);
        for name in [
            "int4-g32-sym",
            "int3-channel-asym",
            "ternary-g32",
            "int1-channel-sym",
        ] {
            let rtn = quantize_rtn(&w, shape, format(name)).expect("quantizes");
            for act_order in [false, true] {
                let gptq = quantize_gptq(&w, shape, &h, format(name), with(act_order, 128));
                assert_eq!(gptq.as_ref(), Ok(&rtn), "{name}, act_order {act_order}");
            }
        }
    }

    #[test]
    fn block_size_changes_only_speed_not_the_result() {
        let (rows, cols) = (6, 100);
        let h = correlated_hessian(cols, 150, 11);
        let w = noise(12, rows * cols);
        let shape = WeightShape::new(rows, cols);
        // g64 over 100 columns has a short last group; blocks of 7 split groups across blocks.
        for name in ["int4-g32-sym", "int3-channel-sym", "int2-g64-asym"] {
            for act_order in [false, true] {
                let run =
                    |block| quantize_gptq(&w, shape, &h, format(name), with(act_order, block));
                let reference = run(128).expect("quantizes");
                for block in [1, 7, 32, 100] {
                    assert_eq!(
                        run(block).as_ref(),
                        Ok(&reference),
                        "{name} {act_order} {block}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_input_that_never_fires_gets_a_zero_weight_and_does_not_widen_the_grid() {
        let (rows, cols, tokens) = (2, 40, 60);
        let mut x = noise(3, tokens * cols);
        x.iter_mut().skip(5).step_by(cols).for_each(|v| *v = 0.0);
        let mut h = Hessian::new(cols);
        h.accumulate(&x, tokens).expect("valid");
        let shape = WeightShape::new(rows, cols);
        let w = noise(4, rows * cols);
        let mut huge = w.clone();
        huge[5] = 1000.0;
        for name in ["int4-channel-sym", "int4-g32-asym", "int2-g32-sym"] {
            for act_order in [false, true] {
                let options = with(act_order, 16);
                let q = quantize_gptq(&w, shape, &h, format(name), options).expect("quantizes");
                let restored = dequantize(&q);
                assert_eq!(restored[5], 0.0, "{name}");
                assert_eq!(restored[cols + 5], 0.0, "{name}");
                let q_huge = quantize_gptq(&huge, shape, &h, format(name), options);
                assert_eq!(
                    q_huge.as_ref(),
                    Ok(&q),
                    "{name}: the dead weight changed the result"
                );
            }
        }
    }

    #[test]
    fn every_format_quantizes_and_reads_back() {
        let (rows, cols) = (2, 70);
        let h = correlated_hessian(cols, 90, 21);
        let w = noise(22, rows * cols);
        let shape = WeightShape::new(rows, cols);
        for f in QuantFormat::all() {
            for act_order in [false, true] {
                let q = quantize_gptq(&w, shape, &h, f, with(act_order, 32)).expect("quantizes");
                assert_eq!(dequantize(&q).len(), rows * cols, "{f}");
            }
        }
    }

    #[test]
    fn refuses_bad_calibration_and_options_naming_what_is_wrong() {
        let f = format("int4-channel-sym");
        let shape = WeightShape::new(1, 2);
        let w = [0.5f32, -0.25];
        let mut h = Hessian::new(2);
        let no_tokens = quantize_gptq(&w, shape, &h, f, GptqOptions::default());
        assert_eq!(
            no_tokens,
            Err(QuantError::NoCalibrationTokens { in_features: 2 })
        );
        // Two tokens, (2, 2) and (0, 0): H = [[4, 4], [4, 4]], singular without damping.
        h.accumulate(&[2.0, 2.0, 0.0, 0.0], 2).expect("valid");
        let undamped = GptqOptions {
            damp_percent: 0.0,
            ..GptqOptions::default()
        };
        assert!(matches!(
            quantize_gptq(&w, shape, &h, f, undamped),
            Err(QuantError::HessianNotPositiveDefinite { column: 0, .. })
        ));
        assert!(quantize_gptq(&w, shape, &h, f, GptqOptions::default()).is_ok());
        let wide = quantize_gptq(&[0.0; 3], WeightShape::new(1, 3), &h, f, undamped);
        assert!(matches!(
            wide,
            Err(QuantError::HessianShape {
                hessian: 2,
                in_features: 3,
                ..
            })
        ));
        for (option, bad) in [
            (
                "damp_percent",
                GptqOptions {
                    damp_percent: -0.01,
                    ..undamped
                },
            ),
            (
                "damp_percent",
                GptqOptions {
                    damp_percent: f64::NAN,
                    ..undamped
                },
            ),
            (
                "block_size",
                GptqOptions {
                    block_size: 0,
                    ..undamped
                },
            ),
        ] {
            match quantize_gptq(&w, shape, &h, f, bad) {
                Err(QuantError::InvalidGptqOption { option: found, .. }) => {
                    assert_eq!(found, option)
                }
                other => panic!("{option}: expected an option error, got {other:?}"),
            }
        }
    }

    #[test]
    fn options_read_from_json_default_what_is_missing() {
        let options: GptqOptions = serde_json::from_str(r#"{"act_order": true}"#).expect("valid");
        assert_eq!(options, with(true, 128));
        assert!(serde_json::from_str::<GptqOptions>(r#"{"blocksize": 64}"#).is_err());
    }
}
