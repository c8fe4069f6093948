//! The key/value cache that makes incremental decoding cost one token per step.
//!
//! Two layouts. A *growing* cache appends each step's keys and values (a new, longer tensor
//! each step, the position known on the host): any prompt, any batch, what transformers'
//! dynamic cache does. A *fixed* cache holds `capacity` positions allocated once, writes each
//! step's entry in place at a position held on the device and masks the positions not yet
//! written: a decoding step then reads and writes the same buffers every time, so it can be
//! captured once and replayed as one device graph (`crate::replayed_decode`), which is what
//! llama.cpp and vLLM do with CUDA graphs.

use burn::tensor::{Bool, Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::ModelError;

/// Where the tokens of one forward pass sit in the sequence.
// One value a forward pass, passed by reference: the size of the device variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Position {
    /// `seq` tokens from this position on, known on the host (growing cache).
    Start(usize),
    /// One token at the position `index` (`[1]`) held on the device (fixed cache); `future`
    /// (`[1, 1, 1, capacity]`) is true at the positions after it, which attention must not see.
    Device {
        /// The token's position.
        index: Tensor<1, Int>,
        /// Positions not written yet.
        future: Tensor<4, Bool>,
    },
    /// Several records side by side in each row of a fresh sequence (padding-free packing):
    /// each token's position within its record, and which keys each query may not see.
    Packed {
        /// `[batch, seq]`: positions restarting at 0 at each record.
        positions: Tensor<2, Int>,
        /// `[batch, 1, seq, seq]`: true where the key is another record's or in the future.
        blocked: Tensor<4, Bool>,
    },
}

impl Position {
    /// Which keys each query of a forward pass of `seq` tokens may not see, `[batch or 1, 1,
    /// seq, keys]`, made once a pass and shared by every layer: for a growing cache the keys
    /// after each query's own position among the `start + seq` so far (a prompt's continuation
    /// sees the whole cache), for a fixed one the positions not written yet, for packed rows
    /// other records' keys and later ones.
    pub fn attention_mask(&self, seq: usize, device: &Device) -> Tensor<4, Bool> {
        match self {
            Position::Start(start) => {
                let keys = start + seq;
                let rows = Tensor::<1, Int>::arange(*start as i64..keys as i64, device)
                    .reshape([seq, 1])
                    .expand([seq, keys]);
                let cols = Tensor::<1, Int>::arange(0..keys as i64, device)
                    .reshape([1, keys])
                    .expand([seq, keys]);
                rows.lower(cols).reshape([1, 1, seq, keys])
            }
            Position::Device { future, .. } => future.clone(),
            Position::Packed { blocked, .. } => blocked.clone(),
        }
    }

    /// The positions and attention blocks of rows whose tokens belong to the records
    /// `segments` names (`rows × seq` record indices, row after row), for
    /// [`Position::Packed`].
    pub fn packed(segments: &[u32], rows: usize, device: &Device) -> Self {
        let seq = segments.len() / rows;
        let mut positions = Vec::with_capacity(segments.len());
        let mut blocked = Vec::with_capacity(rows * seq * seq);
        for row in segments.chunks(seq) {
            let mut start = 0;
            for (i, segment) in row.iter().enumerate() {
                if i > 0 && row[i - 1] != *segment {
                    start = i;
                }
                positions.push((i - start) as i64);
                blocked.extend((0..seq).map(|j| j > i || row[j] != *segment));
            }
        }
        Position::Packed {
            positions: Tensor::from_data(TensorData::new(positions, [rows, seq]), device),
            blocked: Tensor::from_data(TensorData::new(blocked, [rows, 1, seq, seq]), device),
        }
    }
}

/// Keys and values of one attention layer for every position seen so far,
/// `[batch, kv_heads, positions, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct LayerKvCache {
    entries: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerKvCache {
    /// Number of positions held: those cached (growing) or the capacity (fixed).
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_none()
    }

    /// Stores this step's keys and values at `position`; returns every position's keys and
    /// values (the unwritten ones of a fixed cache too: [`Position::mask`] hides them).
    pub fn append(
        &mut self,
        k: Tensor<4>,
        v: Tensor<4>,
        position: &Position,
    ) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match (self.entries.take(), position) {
            (None, _) => (k, v),
            (Some((k_old, v_old)), Position::Start(_)) => (
                Tensor::cat(vec![k_old, k], 2),
                Tensor::cat(vec![v_old, v], 2),
            ),
            // In place: the cache is the only owner of its buffers, so a replayed step writes
            // where the captured one did.
            (Some((k_all, v_all)), Position::Device { index, .. }) => (
                k_all.select_assign(2, index.clone(), k, IndexingUpdateOp::Assign),
                v_all.select_assign(2, index.clone(), v, IndexingUpdateOp::Assign),
            ),
            (Some(_), Position::Packed { .. }) => {
                unreachable!(
                    "packed records start a fresh cache (Qwen3ForCausalLM::forward_packed)"
                )
            }
        };
        self.entries = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// The next position of a fixed cache, on the device.
#[derive(Debug, Clone)]
struct DevicePosition {
    /// `[1]`: where the next token goes.
    index: Tensor<1, Int>,
    /// `[capacity]`: `0, 1, …`, compared with `index` to mask the unwritten positions.
    slots: Tensor<1, Int>,
}

/// One [`LayerKvCache`] per decoder layer; a fresh cache starts a new sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Indexed by layer.
    pub layers: Vec<LayerKvCache>,
    /// `Some` for a fixed cache.
    device_position: Option<DevicePosition>,
}

impl KvCache {
    /// An empty growing cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerKvCache::default(); num_layers],
            device_position: None,
        }
    }

    /// A fixed cache of `capacity` positions holding what `self` (a growing cache of batch 1,
    /// e.g. after the prefill) holds; the next token goes at position `self.len()`.
    pub fn into_fixed(self, capacity: usize) -> Result<Self, ModelError> {
        let len = self.len();
        if self.device_position.is_some() || len == 0 || capacity <= len {
            return Err(ModelError::InvalidInput(format!(
                "a fixed KV cache of {capacity} positions needs a filled growing cache of fewer \
                 positions (it holds {len})"
            )));
        }
        let device = self.layers[0]
            .entries
            .as_ref()
            .map(|(k, _)| k.device())
            .expect("a filled cache holds entries");
        let layers = self
            .layers
            .into_iter()
            .map(|layer| {
                let (k, v) = layer.entries.expect("every layer holds `len` positions");
                let [batch, kv_heads, _, head_dim] = k.dims();
                let fixed = |t: Tensor<4>| {
                    Tensor::<4>::zeros([batch, kv_heads, capacity, head_dim], &device)
                        .cast(t.dtype())
                        .slice_assign([0..batch, 0..kv_heads, 0..len, 0..head_dim], t)
                };
                LayerKvCache {
                    entries: Some((fixed(k), fixed(v))),
                }
            })
            .collect();
        Ok(Self {
            layers,
            device_position: Some(DevicePosition {
                index: Tensor::from_data([len as i64], &device),
                slots: Tensor::arange(0..capacity as i64, &device),
            }),
        })
    }

    /// Where the next `seq` tokens go; a fixed cache takes one token at a time.
    pub fn position(&self, seq: usize) -> Result<Position, ModelError> {
        match &self.device_position {
            None => Ok(Position::Start(self.len())),
            Some(_) if seq != 1 => Err(ModelError::InvalidInput(format!(
                "a fixed KV cache decodes one token a step, not {seq}"
            ))),
            Some(DevicePosition { index, slots }) => {
                let capacity = slots.dims()[0];
                let future = slots
                    .clone()
                    .greater(index.clone().expand([capacity]))
                    .reshape([1, 1, 1, capacity]);
                Ok(Position::Device {
                    index: index.clone(),
                    future,
                })
            }
        }
    }

    /// Moves a fixed cache's position one token on, in place on the device (a growing cache
    /// moved on when its layers appended).
    // `[0..1]` is the one-dimensional slice of the position's one element.
    #[allow(clippy::single_range_in_vec_init)]
    pub fn advance(&mut self) {
        if let Some(DevicePosition { index, .. }) = &mut self.device_position {
            index.inplace(|index| {
                let next = index.clone().add_scalar(1);
                index.slice_assign([0..1], next)
            });
        }
    }

    /// The device position of a fixed cache (`[1]`), `None` for a growing one.
    pub fn device_index(&self) -> Option<Tensor<1, Int>> {
        self.device_position.as_ref().map(|p| p.index.clone())
    }

    /// Positions already processed (the position of the next token) of a growing cache; a
    /// fixed cache's capacity.
    pub fn len(&self) -> usize {
        match &self.device_position {
            None => self.layers.first().map_or(0, LayerKvCache::len),
            Some(DevicePosition { slots, .. }) => slots.dims()[0],
        }
    }

    /// Whether no token has been processed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
