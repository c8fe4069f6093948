//! The key/value cache that makes incremental decoding cost one token per step.

use burn::tensor::Tensor;

/// Keys and values of one attention layer for every position seen so far,
/// `[batch, kv_heads, positions, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache {
    entries: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerKvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_none()
    }

    /// Appends this step's keys and values; returns all cached keys and values.
    pub fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.entries.take() {
            None => (k, v),
            Some((k_old, v_old)) => (
                Tensor::cat(vec![k_old, k], 2),
                Tensor::cat(vec![v_old, v], 2),
            ),
        };
        self.entries = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// One [`LayerKvCache`] per decoder layer; a fresh cache starts a new sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Indexed by layer.
    pub layers: Vec<LayerKvCache>,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerKvCache::default(); num_layers],
        }
    }

    /// Positions already processed (the position of the next token).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKvCache::len)
    }

    /// Whether no token has been processed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
