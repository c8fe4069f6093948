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

/// One layer's entries: each key-value head's keys (after RoPE) and values, `[entries,
/// head_dim]` a head (a head's entries side by side: attention streams them, where entries
/// `kv_heads · head_dim` wide put each of a head's rows on a page of its own, which no
/// prefetcher follows), each entry's position and accumulated attention.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Rotated keys, a vector a key-value head.
    pub keys: Vec<Vec<f32>>,
    /// Values, a vector a key-value head.
    pub values: Vec<Vec<f32>>,
    /// Sequence position of each entry.
    pub positions: Vec<usize>,
    /// Attention each entry has received so far.
    pub scores: Vec<f32>,
    head_dim: usize,
}

impl LayerCache {
    /// An empty layer of `kv_heads` heads `head_dim` wide.
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        Self {
            keys: vec![Vec::new(); kv_heads],
            values: vec![Vec::new(); kv_heads],
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
        let (d, heads) = (self.head_dim, self.keys.len());
        for (h, (head_keys, head_values)) in self.keys.iter_mut().zip(&mut self.values).enumerate()
        {
            for t in 0..positions.len() {
                head_keys.extend_from_slice(&keys[(t * heads + h) * d..][..d]);
                head_values.extend_from_slice(&values[(t * heads + h) * d..][..d]);
            }
        }
        self.positions.extend_from_slice(positions);
        self.scores
            .extend(std::iter::repeat_n(0.0, positions.len()));
    }

    /// Keeps the entries whose flag is true.
    fn retain(&mut self, keep: &[bool]) {
        let d = self.head_dim;
        let mut next = 0;
        for (i, &kept) in keep.iter().enumerate() {
            if kept {
                if next != i {
                    for head in self.keys.iter_mut().chain(&mut self.values) {
                        head.copy_within(i * d..(i + 1) * d, next * d);
                    }
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
        for head in self.keys.iter_mut().chain(&mut self.values) {
            head.truncate(entries * self.head_dim);
        }
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
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_heads` heads `head_dim` wide.
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, budget: Option<KvBudget>) -> Self {
        Self {
            layers: vec![LayerCache::new(kv_heads, head_dim); layers],
            width: kv_heads * head_dim,
            next_position: 0,
            budget,
        }
    }

    /// Entries held, over all layers.
    pub fn entries(&self) -> usize {
        self.layers.iter().map(LayerCache::len).sum()
    }

    /// Bytes the entries take (keys and values, f32).
    pub fn bytes(&self) -> usize {
        self.entries() * self.width * 2 * 4
    }

    /// Bytes every layer holding `tokens` entries would take.
    pub fn bytes_for(&self, tokens: usize) -> usize {
        self.layers.len() * tokens * self.width * 2 * 4
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

    #[test]
    fn eviction_drops_the_least_attended_outside_sinks_and_the_recent_window() {
        let budget = KvBudget {
            entries: 5,
            sink: 1,
            recent: 2,
        };
        // two key-value heads one wide: an entry's keys are its position and its negation
        let mut cache = KvCache::new(1, 2, 1, Some(budget));
        let layer = &mut cache.layers[0];
        let positions: Vec<usize> = (0..8).collect();
        let keys: Vec<f32> = positions
            .iter()
            .flat_map(|&p| [p as f32, -(p as f32)])
            .collect();
        layer.append(&keys, &keys, &positions);
        layer.scores = vec![9.0, 0.1, 5.0, 0.2, 3.0, 0.0, 0.0, 0.0];
        cache.evict();
        // position 0 is a sink, 6 and 7 the recent window; of 1..=5 the three least attended
        // (5: 0.0, 1: 0.1, 3: 0.2) go.
        assert_eq!(cache.layers[0].positions, vec![0, 2, 4, 6, 7]);
        assert_eq!(cache.layers[0].keys[0], vec![0.0, 2.0, 4.0, 6.0, 7.0]);
        assert_eq!(
            cache.layers[0].values[1],
            vec![-0.0, -2.0, -4.0, -6.0, -7.0]
        );
        cache.rewind(5);
        assert_eq!(cache.layers[0].positions, vec![0, 2, 4]);
        assert_eq!(cache.layers[0].keys[1], vec![-0.0, -2.0, -4.0]);
        assert_eq!(cache.next_position, 5);
    }
}
