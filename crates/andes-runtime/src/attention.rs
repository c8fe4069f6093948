//! Causal attention over a layer's cache, a key-value head at a time.
//!
//! Grouped-query attention gives several query heads one key-value head, and a prompt or a
//! speculative block gives several tokens one cache. A [`Group`] is the queries of one
//! key-value head for a run of tokens: each cached key and value is read once for all of them
//! (while it is in the first-level cache), where a query head at a time read the whole cache
//! once a head and a token. Past a few hundred entries the cache outweighs a small model's
//! weights (a Qwen3-0.6B shape at 569 entries: 130 MB of f32 keys and values a step against
//! 234 MB of int4 weights), so this read is the one that counts.

use crate::kv::Element;
use crate::packed::dot;

/// The queries of one key-value head over a run of tokens.
pub(crate) struct Group<'a> {
    /// Each query (`head_dim` wide), token by token, head by head within a token.
    pub queries: Vec<&'a [f32]>,
    /// Entries each query sees: those at or before its token's position.
    pub visible: Vec<usize>,
    /// `1/√head_dim`.
    pub scale: f32,
}

/// One query's context vector and the attention each visible entry received from it.
pub(crate) struct Attended {
    pub context: Vec<f32>,
    pub weights: Vec<f32>,
}

impl Group<'_> {
    /// Every query's [`Attended`] over the head's `keys` and `values` (`[entries,
    /// head_dim]`, in the cache's format), in the order of `queries`.
    pub fn attend<T: Element>(&self, keys: &[T], values: &[T]) -> Vec<Attended> {
        #[cfg(target_arch = "x86_64")]
        if crate::packed::has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
            return unsafe { self.attend_avx2(keys, values) };
        }
        self.attend_with::<false, T>(keys, values)
    }

    /// [`Group::attend`] compiled for AVX2 with fused multiply-adds, an f16 cache widened by
    /// F16C's instructions.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn attend_avx2<T: Element>(&self, keys: &[T], values: &[T]) -> Vec<Attended> {
        self.attend_with::<true, T>(keys, values)
    }

    /// With `SIMD`, the CPU has FMA and F16C.
    #[inline(always)]
    fn attend_with<const SIMD: bool, T: Element>(&self, keys: &[T], values: &[T]) -> Vec<Attended> {
        // Plain loops: a closure would not inherit `attend_avx2`'s target features.
        let d = self.queries.first().map_or(0, |q| q.len());
        let mut scratch = vec![0.0f32; d];
        let entries = self.visible.iter().copied().max().unwrap_or(0);
        let mut weights: Vec<Vec<f32>> = self.visible.iter().map(|&v| vec![0.0; v]).collect();
        for e in 0..entries {
            let key = T::widen::<SIMD>(&keys[e * d..][..d], &mut scratch);
            for (q, query) in self.queries.iter().enumerate() {
                if e < self.visible[q] {
                    weights[q][e] = dot::<SIMD>(query, key) * self.scale;
                }
            }
        }
        for w in weights.iter_mut() {
            softmax(w);
        }
        let mut contexts = vec![vec![0.0f32; d]; self.queries.len()];
        for e in 0..entries {
            let value = T::widen::<SIMD>(&values[e * d..][..d], &mut scratch);
            for (q, context) in contexts.iter_mut().enumerate() {
                if e < self.visible[q] {
                    let w = weights[q][e];
                    for (c, v) in context.iter_mut().zip(value) {
                        *c = if SIMD { w.mul_add(*v, *c) } else { *c + w * v };
                    }
                }
            }
        }
        contexts
            .into_iter()
            .zip(weights)
            .map(|(context, weights)| Attended { context, weights })
            .collect()
    }
}

/// `w ← softmax(w)` in place: the exponentials in eight-lane blocks the compiler vectorizes
/// ([`exp_nonpositive`]), where `f32::exp` is a library call an entry.
#[inline(always)]
fn softmax(w: &mut [f32]) {
    let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [0.0f32; 8];
    let mut blocks = w.chunks_exact_mut(8);
    for block in &mut blocks {
        for (lane, x) in lanes.iter_mut().zip(block.iter_mut()) {
            *x = exp_nonpositive(*x - max);
            *lane += *x;
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for x in blocks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        total += *x;
    }
    let inverse = 1.0 / total;
    w.iter_mut().for_each(|x| *x *= inverse);
}

/// `eˣ` for `x ≤ 0` (a softmax's scores less their maximum) in arithmetic alone, so that a
/// loop of it vectorizes: Cephes' `expf` (`x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, a degree-6
/// polynomial for `eʳ`, `2ⁿ` written into the exponent bits), within 2 ulp of `f32::exp`.
/// Below −87 (where `eˣ` is under `f32`'s smallest normal) it gives `e⁻⁸⁷`, which no
/// softmax of f32 scores tells from 0 beside its maximum's `e⁰ = 1`.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first exact in few bits, so `x − n·ln 2` loses nothing.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let n = (x * LOG2_E + 0.5).floor();
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectorizable_exponential_is_within_two_ulp_of_the_library_one() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (ours, libm) = (exp_nonpositive(x), x.exp());
            let ulp = (ours.to_bits() as i64 - libm.to_bits() as i64).abs();
            assert!(ulp <= 2, "e^{x}: {ours} against {libm} ({ulp} ulp)");
            x -= 0.000_37;
        }
        assert_eq!(exp_nonpositive(-1000.0), (-87.0f32).exp());
    }

    /// The naive attention of one query, in f64.
    fn reference(query: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f64> {
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                query
                    .iter()
                    .zip(k)
                    .map(|(a, b)| (a * b) as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        (0..query.len())
            .map(|i| {
                exps.iter()
                    .zip(values)
                    .map(|(w, v)| w / total * v[i] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn a_group_attends_as_each_query_alone_over_its_visible_entries() {
        // One key-value head 16 wide, 11 entries; three queries seeing 11, 7 and 1 of them.
        let (d, entries) = (16, 11);
        let value_at = |i: usize| ((i * 7919 % 113) as f32 - 56.0) / 17.0;
        let keys: Vec<f32> = (0..entries * d).map(value_at).collect();
        let values: Vec<f32> = (0..entries * d).map(|i| value_at(i + 5)).collect();
        let queries: Vec<Vec<f32>> = (0..3)
            .map(|q| (0..d).map(|i| value_at(q * 31 + i + 3)).collect())
            .collect();
        let group = Group {
            queries: queries.iter().map(Vec::as_slice).collect(),
            visible: vec![11, 7, 1],
            scale: 0.25,
        };
        let attended = group.attend(&keys, &values);
        for (q, got) in attended.iter().enumerate() {
            let seen = group.visible[q];
            let rows = |all: &[f32]| -> Vec<Vec<f32>> {
                all.chunks(d).take(seen).map(<[f32]>::to_vec).collect()
            };
            let want = reference(&queries[q], &rows(&keys), &rows(&values), 0.25);
            assert_eq!(got.weights.len(), seen);
            assert!((got.weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            for (g, w) in got.context.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "query {q}: {g} against {w}");
            }
        }
    }
}
