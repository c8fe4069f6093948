//! Qwen3's decoder over packed matrices: RMSNorm, grouped-query attention with per-head
//! q/k norms and rotary positions, SwiGLU, all in f32 on the host, every projection a
//! [`PackedMatrix`] product, LoRA adapters applied beside it unmerged.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use andes_model::rope::{Frequencies, Rope};

use crate::attention::{Attended, Group};
use crate::kv::{KvCache, KvFormat, LayerCache, per_format};
use crate::packed::PackedMatrix;
use crate::team;

/// The sizes the decoder is built from (a Qwen3 `config.json`'s).
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderShape {
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Longest sequence the model runs (`max_position_embeddings`, stretched by a `yarn` or
    /// `dynamic` rope scaling: `Rope::context`).
    pub max_positions: usize,
}

/// One decoder block: its norms and its seven projections in [`PROJECTIONS`] order.
#[derive(Debug, Clone)]
pub struct Block {
    /// Before attention.
    pub input_norm: Vec<f32>,
    /// Per-head query norm.
    pub q_norm: Vec<f32>,
    /// Per-head key norm.
    pub k_norm: Vec<f32>,
    /// Before the MLP.
    pub post_norm: Vec<f32>,
    /// `q, k, v, o, gate, up, down`.
    pub projections: [PackedMatrix; 7],
}

/// The projections of a block in the order [`Block::projections`] holds them (the order of
/// `andes_model::lora::LoraTarget::ALL`).
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// A LoRA update `scale · B·A` on one projection, kept apart from the packed weight.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// `[rank, in]`.
    pub a: PackedMatrix,
    /// `[out, rank]`.
    pub b: PackedMatrix,
    /// `alpha / rank`.
    pub scale: f32,
}

/// An adapter: per block, an update for each adapted projection.
pub type Adapter = Vec<[Option<LoraDelta>; 7]>;

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last one (a generation step).
    Last,
    /// Every one (verifying a speculative block, scoring text).
    All,
}

/// The language model.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Its sizes.
    pub shape: DecoderShape,
    /// Token embeddings `[vocab, hidden]` (also the head when tied).
    pub embed: PackedMatrix,
    /// An untied head `[vocab, hidden]`.
    pub head: Option<PackedMatrix>,
    /// The final norm.
    pub norm: Vec<f32>,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// The rotary embedding; each pass asks it for the frequencies of its length (only
    /// `dynamic` scaling gives different ones).
    pub rope: Rope,
    adapters: BTreeMap<String, Adapter>,
    active: Option<String>,
    kv_format: KvFormat,
}

impl Decoder {
    /// A decoder of these parts, no adapter attached.
    pub fn new(
        shape: DecoderShape,
        embed: PackedMatrix,
        head: Option<PackedMatrix>,
        norm: Vec<f32>,
        blocks: Vec<Block>,
        rope: Rope,
    ) -> Self {
        Self {
            shape,
            embed,
            head,
            norm,
            blocks,
            rope,
            adapters: BTreeMap::new(),
            active: None,
            kv_format: KvFormat::default(),
        }
    }

    /// Attaches adapter `name` (inactive).
    pub fn attach(&mut self, name: &str, adapter: Adapter) {
        self.adapters.insert(name.to_string(), adapter);
    }

    /// The attached adapters' names.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.keys().map(String::as_str).collect()
    }

    /// Makes adapter `name` active (none: the bare base); an unknown name is refused.
    pub fn activate(&mut self, name: Option<&str>) -> Result<(), String> {
        if let Some(name) = name
            && !self.adapters.contains_key(name)
        {
            return Err(format!(
                "no adapter `{name}`; attached: {}",
                self.adapter_names().join(", ")
            ));
        }
        self.active = name.map(str::to_string);
        Ok(())
    }

    /// Multiplies every projection and the head in integers against inputs rounded to int8
    /// where they allow it ([`PackedMatrix::set_int8_activations`]): faster, not the f32
    /// products.
    pub fn set_int8_activations(&mut self, on: bool) {
        let blocks = self
            .blocks
            .iter_mut()
            .flat_map(|b| b.projections.iter_mut());
        for matrix in blocks.chain([&mut self.embed]).chain(self.head.as_mut()) {
            matrix.set_int8_activations(on);
        }
    }

    /// Keeps the caches it makes ([`Decoder::cache`]) in `format`.
    pub fn set_kv_format(&mut self, format: KvFormat) {
        self.kv_format = format;
    }

    /// Bytes a decoding step reads: every projection, the head, the final norm.
    pub fn weight_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| b.projections.iter().map(PackedMatrix::bytes).sum::<usize>())
            .sum();
        blocks + self.head.as_ref().unwrap_or(&self.embed).bytes()
    }

    /// An empty cache for this model, in its KV format.
    pub fn cache(&self, budget: Option<crate::kv::KvBudget>) -> KvCache {
        KvCache::new(
            self.blocks.len(),
            self.shape.kv_heads,
            self.shape.head_dim,
            budget,
            self.kv_format,
        )
    }

    /// Token embeddings `[ids.len(), hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Vec<f32> {
        ids.iter()
            .flat_map(|&id| self.embed.row(id as usize))
            .collect()
    }

    /// Runs `inputs` (`[tokens, hidden]` embeddings) at the cache's next positions, appends
    /// their keys and values (the caller applies the cache's budget, once it knows which
    /// entries stay), and returns logits `[rows, vocab]` for the positions `logits` asks for.
    pub fn forward(&self, inputs: Vec<f32>, cache: &mut KvCache, logits: Logits) -> Vec<f32> {
        let hidden = self.shape.hidden;
        let tokens = inputs.len() / hidden;
        let positions: Vec<usize> = (cache.next_position..cache.next_position + tokens).collect();
        let frequencies = self.rope.frequencies(cache.next_position + tokens);
        let rotations = Self::rotations(&positions, &frequencies);
        let adapter = self.active.as_ref().map(|name| &self.adapters[name]);
        let track = cache.budget.is_some();
        let mut x = inputs;
        for (index, block) in self.blocks.iter().enumerate() {
            let deltas = adapter.map(|a| &a[index]);
            // The projections `which` of one input, multiplied together (one pass over the
            // threads), each with the active adapter's update.
            let project = |which: &[usize], input: &[f32]| -> Vec<Vec<f32>> {
                let matrices: Vec<&PackedMatrix> =
                    which.iter().map(|&w| &block.projections[w]).collect();
                let mut outputs = PackedMatrix::multiply_each(&matrices, input);
                for (&w, y) in which.iter().zip(&mut outputs) {
                    if let Some(delta) = deltas.and_then(|d| d[w].as_ref()) {
                        let update = delta.b.multiply(&delta.a.multiply(input));
                        y.iter_mut()
                            .zip(update)
                            .for_each(|(y, u)| *y += delta.scale * u);
                    }
                }
                outputs
            };
            let h = rms_norm(&x, &block.input_norm, self.shape.eps);
            let [mut q, mut k, v] =
                <[Vec<f32>; 3]>::try_from(project(&[0, 1, 2], &h)).expect("three projections");
            self.rotate(&mut q, &block.q_norm, &rotations);
            self.rotate(&mut k, &block.k_norm, &rotations);
            let layer = &mut cache.layers[index];
            layer.append(&k, &v, &positions);
            let context = self.attend(&q, layer, &positions, track);
            add(&mut x, &project(&[3], &context)[0]);
            let h = rms_norm(&x, &block.post_norm, self.shape.eps);
            let [gate, up] =
                <[Vec<f32>; 2]>::try_from(project(&[4, 5], &h)).expect("two projections");
            let inner: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            add(&mut x, &project(&[6], &inner)[0]);
        }
        cache.next_position += tokens;
        let rows = match logits {
            Logits::Last => &x[(tokens - 1) * hidden..],
            Logits::All => &x[..],
        };
        let normed = rms_norm(rows, &self.norm, self.shape.eps);
        self.head.as_ref().unwrap_or(&self.embed).multiply(&normed)
    }

    /// Per-head RMSNorm then rotary embedding of `x` (`[tokens, heads · head_dim]`), each
    /// token's angles from `rotations` ([`Decoder::rotations`]).
    fn rotate(&self, x: &mut [f32], norm: &[f32], rotations: &[(f32, f32)]) {
        let d = self.shape.head_dim;
        let half = d / 2;
        let tokens = rotations.len() / half;
        let heads_per_token = x.len() / tokens / d;
        for (i, head) in x.chunks_mut(d).enumerate() {
            let normed = rms_norm(head, norm, self.shape.eps);
            let token = &rotations[i / heads_per_token * half..][..half];
            for (j, &(sin, cos)) in token.iter().enumerate() {
                let (a, b) = (normed[j], normed[j + half]);
                head[j] = a * cos - b * sin;
                head[j + half] = b * cos + a * sin;
            }
        }
    }

    /// Each position's rotary `(sin, cos)` for every frequency, scaled by the attention
    /// factor: made once a forward pass for every layer and head, where each head computed
    /// its own (43,008 `sin_cos` a decoded token on a Qwen3-0.6B shape: 28 layers × 24 heads ×
    /// 64).
    fn rotations(positions: &[usize], rope: &Frequencies) -> Vec<(f32, f32)> {
        let factor = rope.attention_factor;
        positions
            .iter()
            .flat_map(|&position| {
                rope.inv_freq.iter().map(move |&frequency| {
                    let (sin, cos) = (position as f32 * frequency).sin_cos();
                    (sin * factor, cos * factor)
                })
            })
            .collect()
    }

    /// Causal attention of `q` (`[tokens, heads · head_dim]`, at `positions`) over the
    /// layer's entries at or before each query's position, a task for each key-value head and
    /// run of [`TOKENS_A_TASK`] tokens ([`Group`]); with `track`, each entry's accumulated
    /// attention grows by what it received.
    fn attend(
        &self,
        q: &[f32],
        layer: &mut LayerCache,
        positions: &[usize],
        track: bool,
    ) -> Vec<f32> {
        let (heads, kv_heads, d) = (self.shape.heads, self.shape.kv_heads, self.shape.head_dim);
        let group = heads / kv_heads;
        let runs = positions.len().div_ceil(TOKENS_A_TASK);
        let (rows, entry_positions) = (&layer.rows, &layer.positions);
        let results: Vec<OnceLock<Vec<Attended>>> =
            (0..runs * kv_heads).map(|_| OnceLock::new()).collect();
        team::for_each(results.len(), &|task| {
            let (run, kv) = (task / kv_heads, task % kv_heads);
            let tokens = run * TOKENS_A_TASK..((run + 1) * TOKENS_A_TASK).min(positions.len());
            let (mut queries, mut visible) = (Vec::new(), Vec::new());
            for t in tokens {
                let seen = entry_positions.partition_point(|&p| p <= positions[t]);
                for h in kv * group..(kv + 1) * group {
                    queries.push(&q[(t * heads + h) * d..][..d]);
                    visible.push(seen);
                }
            }
            let attending = Group {
                queries,
                visible,
                scale: 1.0 / (d as f32).sqrt(),
            };
            let attended = per_format!(rows, cached => attending
                .attend(&cached.keys[kv], &cached.values[kv]));
            if results[task].set(attended).is_err() {
                unreachable!("a group attended twice");
            }
        });
        // each query's result, token by token and head by head
        let mut by_query: Vec<Option<Attended>> =
            (0..positions.len() * heads).map(|_| None).collect();
        for (task, result) in results.into_iter().enumerate() {
            let (run, kv) = (task / kv_heads, task % kv_heads);
            let attended = result.into_inner().expect("every group attended");
            for (i, one) in attended.into_iter().enumerate() {
                let (t, h) = (run * TOKENS_A_TASK + i / group, kv * group + i % group);
                by_query[t * heads + h] = Some(one);
            }
        }
        let mut context = Vec::with_capacity(by_query.len() * d);
        for one in by_query
            .into_iter()
            .map(|one| one.expect("every query attended"))
        {
            if track {
                layer
                    .scores
                    .iter_mut()
                    .zip(&one.weights)
                    .for_each(|(s, w)| *s += w);
            }
            context.extend(one.context);
        }
        context
    }
}

/// Tokens whose queries share a pass over the cache: a speculative block's, or a prompt's
/// eight at a time (enough tasks for the team, each reading a key or value eight times while
/// it is in the first-level cache).
const TOKENS_A_TASK: usize = 8;

/// RMSNorm of each `weight.len()`-wide row of `x`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let n = weight.len();
    x.chunks(n)
        .flat_map(|row| {
            let mean = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
            let inv = 1.0 / (mean + eps).sqrt();
            row.iter().zip(weight).map(move |(v, w)| v * inv * w)
        })
        .collect()
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
