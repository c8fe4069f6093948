//! The key-value cache, with optional OKV-style eviction to a fixed budget of entries per
//! layer.
//!
//! Eviction rule (andes's reading of AndesVL's OKV; the report names the algorithm but not
//! its details): each layer keeps at most `budget` entries. Every entry accumulates the
//! attention it receives: the softmax probability, summed over the layer's query heads and
//! over every query since the entry was written. After each forward step, a layer over budget
//! drops the entries with the smallest accumulated attention (the oldest first on ties),
//! never one of the first `sink` positions of the sequence nor one of the `recent` newest
//! entries, until it is back at the budget. Keys are cached after RoPE, so a surviving entry
//! keeps its original position and no re-rotation is needed.
//!
//! How it differs: H2O also keeps the accumulated-attention "heavy hitters" plus a recent
//! window, but has no protected first tokens (the attention sinks StreamingLLM found);
//! StreamingLLM keeps only the sinks and the recent window and never looks at scores;
//! SnapKV scores the prompt once, from the attention of an observation window at its end
//! (pooled), and does not evict during decoding. Here scores keep accumulating during
//! decoding and eviction runs after every step.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// How many entries a layer keeps and which it never drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBudget {
    /// Entries kept per layer.
    pub entries: usize,
    /// The first positions of the sequence, always kept.
    pub sink: usize,
    /// The newest entries, always kept.
    pub recent: usize,
}

impl KvBudget {
    /// A budget of `entries` with 4 sink positions and a recent window of a quarter of it.
    pub fn new(entries: usize) -> Self {
        Self {
            entries,
            sink: 4.min(entries / 4),
            recent: entries / 4,
        }
    }

    /// A budget of `entries` that keeps the newest entries only (every entry is in the
    /// recent window, so scores never decide): the baseline eviction is measured against.
    pub fn recent_only(entries: usize) -> Self {
        Self {
            entries,
            sink: 0,
            recent: entries,
        }
    }
}

/// The number format cached keys and values are kept in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvFormat {
    /// As computed: decoding gives the dequantized reference's tokens.
    #[default]
    F32,
    /// Rounded to IEEE half precision when cached (llama.cpp's default): half the memory and
    /// half the bytes attention reads a step, at a small cost in agreement with f32.
    F16,
}

impl std::str::FromStr for KvFormat {
    type Err = String;

    /// A format by its [`KvFormat::name`].
    fn from_str(name: &str) -> Result<Self, String> {
        [KvFormat::F32, KvFormat::F16]
            .into_iter()
            .find(|format| format.name() == name)
            .ok_or_else(|| format!("no KV format `{name}`: f32 or f16"))
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl KvFormat {
    /// `f32` or `f16`: what the command line and the JSON reports call it.
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
        }
    }

    /// Bytes of one cached number.
    pub fn bytes(self) -> usize {
        match self {
            KvFormat::F32 => 4,
            KvFormat::F16 => 2,
        }
    }
}

/// A number a cache can hold: rounded to on the way in, widened to f32 on the way out.
pub trait Element: Copy + Default + Send + Sync + std::fmt::Debug {
    /// Appends `row`, rounded to this format.
    fn push_row(head: &mut Vec<Self>, row: &[f32]);
    /// `row` in f32: itself, or widened into `scratch` (as long as `row`); with `F16C`, by
    /// the x86 conversion instructions, which the caller promises the CPU has.
    fn widen<'a, const F16C: bool>(row: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
}

impl Element for f32 {
    fn push_row(head: &mut Vec<f32>, row: &[f32]) {
        head.extend_from_slice(row);
    }

    #[inline(always)]
    fn widen<'a, const F16C: bool>(row: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        row
    }
}

impl Element for f16 {
    fn push_row(head: &mut Vec<f16>, row: &[f32]) {
        let start = head.len();
        head.resize(start + row.len(), f16::ZERO);
        head[start..].convert_from_f32_slice(row);
    }

    #[inline(always)]
    fn widen<'a, const F16C: bool>(row: &'a [f16], scratch: &'a mut [f32]) -> &'a [f32] {
        #[cfg(target_arch = "x86_64")]
        if F16C {
            // SAFETY: the caller's promise that the CPU has F16C (and so AVX).
            unsafe { widen_f16c(row, scratch) };
            return scratch;
        }
        // half's own conversion: a call each eight values, 13% of a long decode's samples
        // where the instructions inline into attention
        row.convert_to_f32_slice(scratch);
        scratch
    }
}

/// `scratch ← row` widened eight at a time by `vcvtph2ps`, inlined into the caller.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
#[inline]
unsafe fn widen_f16c(row: &[f16], scratch: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_storeu_ps};
    assert!(scratch.len() >= row.len());
    let whole = row.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: eight values from i lie inside both slices (asserted, i + 8 ≤ whole).
        unsafe {
            let halves = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(scratch.as_mut_ptr().add(i), _mm256_cvtph_ps(halves));
        }
    }
    for (s, h) in scratch[whole..].iter_mut().zip(&row[whole..]) {
        *s = h.to_f32();
    }
}

/// Each key-value head's keys (after RoPE) and values, `[entries, head_dim]` a head: a
/// head's entries side by side, so that attention streams them (entries `kv_heads ·
/// head_dim` wide put each of a head's rows on a page of its own, which no prefetcher
/// follows).
#[derive(Debug, Clone)]
pub struct Heads<T> {
    /// Rotated keys, a vector a key-value head.
    pub keys: Vec<Vec<T>>,
    /// Values, a vector a key-value head.
    pub values: Vec<Vec<T>>,
}

impl<T: Element> Heads<T> {
    fn new(kv_heads: usize) -> Self {
        Self {
            keys: vec![Vec::new(); kv_heads],
            values: vec![Vec::new(); kv_heads],
        }
    }

    /// Appends each token's keys and values, `[tokens, kv_heads · head_dim]` as the
    /// projections give them: row `i` of `head_dim` belongs to head `i mod kv_heads`.
    fn append(&mut self, keys: &[f32], values: &[f32], head_dim: usize) {
        let heads = self.keys.len();
        let rows = keys.chunks(head_dim).zip(values.chunks(head_dim));
        for (i, (key, value)) in rows.enumerate() {
            T::push_row(&mut self.keys[i % heads], key);
            T::push_row(&mut self.values[i % heads], value);
        }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Vec<T>> {
        self.keys.iter_mut().chain(&mut self.values)
    }
}

/// The heads of a layer in the cache's [`KvFormat`].
#[derive(Debug, Clone)]
pub enum KvRows {
    /// [`KvFormat::F32`].
    F32(Heads<f32>),
    /// [`KvFormat::F16`].
    F16(Heads<f16>),
}

/// `$body` with `$heads` bound to the [`Heads`] of `$rows`, whatever its format: one piece of
/// code for both.
macro_rules! per_format {
    ($rows:expr, $heads:ident => $body:expr) => {
        match $rows {
            $crate::kv::KvRows::F32($heads) => $body,
            $crate::kv::KvRows::F16($heads) => $body,
        }
    };
}
pub(crate) use per_format;

/// One layer's entries: their keys and values ([`KvRows`]), each entry's position and
/// accumulated attention.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Keys and values, a vector a key-value head.
    pub rows: KvRows,
    /// Sequence position of each entry.
    pub positions: Vec<usize>,
    /// Attention each entry has received so far.
    pub scores: Vec<f32>,
    head_dim: usize,
}

impl LayerCache {
    /// An empty layer of `kv_heads` heads `head_dim` wide, in `format`.
    pub fn new(kv_heads: usize, head_dim: usize, format: KvFormat) -> Self {
        Self {
            rows: match format {
                KvFormat::F32 => KvRows::F32(Heads::new(kv_heads)),
                KvFormat::F16 => KvRows::F16(Heads::new(kv_heads)),
            },
            positions: Vec::new(),
            scores: Vec::new(),
            head_dim,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the layer holds no entry.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Appends the entries of tokens at `positions`, whose keys and values come as the
    /// projections give them: `[tokens, kv_heads · head_dim]`.
    pub fn append(&mut self, keys: &[f32], values: &[f32], positions: &[usize]) {
        per_format!(&mut self.rows, heads => heads.append(keys, values, self.head_dim));
        self.positions.extend_from_slice(positions);
        self.scores
            .extend(std::iter::repeat_n(0.0, positions.len()));
    }

    /// Room for `entries` entries in all, taken at once.
    fn reserve(&mut self, entries: usize) {
        let more = entries.saturating_sub(self.len());
        let d = self.head_dim;
        per_format!(&mut self.rows, heads => heads.all().for_each(|h| h.reserve_exact(more * d)));
        self.positions.reserve_exact(more);
        self.scores.reserve_exact(more);
    }

    /// Keeps the entries whose flag is true.
    fn retain(&mut self, keep: &[bool]) {
        let d = self.head_dim;
        let mut next = 0;
        for (i, &kept) in keep.iter().enumerate() {
            if kept {
                if next != i {
                    per_format!(&mut self.rows, heads => heads
                        .all()
                        .for_each(|h| h.copy_within(i * d..(i + 1) * d, next * d)));
                    self.positions[next] = self.positions[i];
                    self.scores[next] = self.scores[i];
                }
                next += 1;
            }
        }
        self.truncate(next);
    }

    /// Keeps the first `entries` entries.
    fn truncate(&mut self, entries: usize) {
        let d = self.head_dim;
        per_format!(&mut self.rows, heads => heads.all().for_each(|h| h.truncate(entries * d)));
        self.positions.truncate(entries);
        self.scores.truncate(entries);
    }
}

/// The cache of every layer, and the position of the next token.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer.
    pub layers: Vec<LayerCache>,
    /// `kv_heads · head_dim`: the width of one entry.
    pub width: usize,
    /// Position the next token takes.
    pub next_position: usize,
    /// Eviction, when bounded.
    pub budget: Option<KvBudget>,
    /// What the entries are kept in.
    pub format: KvFormat,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_heads` heads `head_dim` wide, in `format`.
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        budget: Option<KvBudget>,
        format: KvFormat,
    ) -> Self {
        Self {
            layers: vec![LayerCache::new(kv_heads, head_dim, format); layers],
            width: kv_heads * head_dim,
            next_position: 0,
            budget,
            format,
        }
    }

    /// Room for `entries` entries a layer, taken at once: a run that knows its length
    /// (prompt and tokens to generate) holds no more than its entries, where growing a
    /// vector a head by doubling left up to as much again unused.
    pub fn reserve(&mut self, entries: usize) {
        for layer in &mut self.layers {
            layer.reserve(entries);
        }
    }

    /// Entries held, over all layers.
    pub fn entries(&self) -> usize {
        self.layers.iter().map(LayerCache::len).sum()
    }

    /// Bytes the entries take (keys and values).
    pub fn bytes(&self) -> usize {
        self.entries() * self.width * 2 * self.format.bytes()
    }

    /// Bytes every layer holding `tokens` entries would take.
    pub fn bytes_for(&self, tokens: usize) -> usize {
        self.layers.len() * tokens * self.width * 2 * self.format.bytes()
    }

    /// Drops the newest entries so that the next token takes position `position` again (a
    /// speculative block's rejected tokens).
    pub fn rewind(&mut self, position: usize) {
        for layer in &mut self.layers {
            let keep = layer.positions.partition_point(|&p| p < position);
            layer.truncate(keep);
        }
        self.next_position = position;
    }

    /// Applies the budget (see the module docs) to every layer.
    pub fn evict(&mut self) {
        let Some(budget) = self.budget else { return };
        for layer in &mut self.layers {
            let n = layer.len();
            if n <= budget.entries {
                continue;
            }
            let mut candidates: Vec<usize> = (0..n.saturating_sub(budget.recent))
                .filter(|&i| layer.positions[i] >= budget.sink)
                .collect();
            candidates.sort_by(|&a, &b| {
                layer.scores[a]
                    .total_cmp(&layer.scores[b])
                    .then(layer.positions[a].cmp(&layer.positions[b]))
            });
            let mut keep = vec![true; n];
            for &i in candidates.iter().take(n - budget.entries) {
                keep[i] = false;
            }
            layer.retain(&keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Head `h`'s keys (or values) of `layer`, widened to f32.
    fn head(layer: &LayerCache, h: usize, keys: bool) -> Vec<f32> {
        per_format!(&layer.rows, heads => {
            let rows = if keys { &heads.keys[h] } else { &heads.values[h] };
            let mut widened = vec![0.0; rows.len()];
            Element::widen::<false>(rows, &mut widened).to_vec()
        })
    }

    #[test]
    fn eviction_drops_the_least_attended_outside_sinks_and_the_recent_window() {
        let budget = KvBudget {
            entries: 5,
            sink: 1,
            recent: 2,
        };
        for format in [KvFormat::F32, KvFormat::F16] {
            // two key-value heads one wide: an entry's keys are its position and its negation
            let mut cache = KvCache::new(1, 2, 1, Some(budget), format);
            let layer = &mut cache.layers[0];
            let positions: Vec<usize> = (0..8).collect();
            let keys: Vec<f32> = positions
                .iter()
                .flat_map(|&p| [p as f32, -(p as f32)])
                .collect();
            layer.append(&keys, &keys, &positions);
            layer.scores = vec![9.0, 0.1, 5.0, 0.2, 3.0, 0.0, 0.0, 0.0];
            cache.evict();
            // position 0 is a sink, 6 and 7 the recent window; of 1..=5 the three least
            // attended (5: 0.0, 1: 0.1, 3: 0.2) go.
            let layer = &cache.layers[0];
            assert_eq!(layer.positions, vec![0, 2, 4, 6, 7]);
            assert_eq!(head(layer, 0, true), vec![0.0, 2.0, 4.0, 6.0, 7.0]);
            assert_eq!(head(layer, 1, false), vec![-0.0, -2.0, -4.0, -6.0, -7.0]);
            assert_eq!(cache.bytes(), 5 * 2 * 2 * format.bytes());
            cache.rewind(5);
            assert_eq!(cache.layers[0].positions, vec![0, 2, 4]);
            assert_eq!(head(&cache.layers[0], 1, true), vec![-0.0, -2.0, -4.0]);
            assert_eq!(cache.next_position, 5);
        }
    }

    #[test]
    fn half_precision_rounds_each_value_to_the_nearest_half() {
        let mut cache = KvCache::new(1, 1, 4, None, KvFormat::F16);
        let row = [1.0, 1.0 + 1.0 / 4096.0, 0.1, 65504.0];
        cache.layers[0].append(&row, &row, &[0]);
        let want: Vec<f32> = row.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        assert_eq!(head(&cache.layers[0], 0, true), want);
        assert_eq!(want[1], 1.0, "2⁻¹² is below half an f16 ulp of 1");
    }

    #[test]
    fn a_reserved_cache_holds_its_entries_with_nothing_spare() {
        let mut cache = KvCache::new(2, 2, 3, None, KvFormat::F32);
        cache.reserve(5);
        for position in 0..5 {
            let entry = [position as f32; 6];
            cache.layers[1].append(&entry, &entry, &[position]);
        }
        let layer = &cache.layers[1];
        assert_eq!(head(layer, 1, true)[12..15], [4.0; 3]);
        let KvRows::F32(heads) = &layer.rows else {
            unreachable!("an f32 cache")
        };
        let mut all = heads.keys.iter().chain(&heads.values);
        assert!(all.all(|head| head.capacity() == 5 * 3));
    }
}
