//! The Qwen3 decoder-only language model, field names mirroring the Hugging Face layout
//! (`model.layers.N.self_attn.q_proj`, ...), so the checkpoint mapping is mechanical.

mod attention;
mod block;
mod config;
mod init;
mod mlp;

pub use attention::Attention;
pub use block::DecoderLayer;
pub use config::{EosTokenIds, HiddenAct, Qwen3Config};
pub use mlp::Mlp;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::error::ModelError;
use crate::kv_cache::{KvCache, Position};
use crate::precision::mixed_linear;
use crate::rms_norm::rms_norm;
use crate::rope::RotaryEmbedding;

/// The transformer body: embedding, decoder blocks, final norm.
#[derive(Module, Debug)]
pub struct Qwen3Model {
    /// `[vocab, hidden]`
    pub embed_tokens: Embedding,
    /// The decoder blocks in order.
    pub layers: Vec<DecoderLayer>,
    /// Norm applied after the last block.
    pub norm: RmsNorm,
    /// cos/sin tables shared by every layer (constants, not parameters).
    pub rotary: RotaryEmbedding,
}

/// Qwen3 with its language-modelling head (`Qwen3ForCausalLM` in transformers).
#[derive(Module, Debug)]
pub struct Qwen3ForCausalLM {
    /// The transformer body.
    pub model: Qwen3Model,
    /// `[hidden, vocab]`; `None` when `tie_word_embeddings` reuses the embedding matrix.
    pub lm_head: Option<Linear>,
}

impl Qwen3ForCausalLM {
    /// A lazily-initialised model: parameters are allocated (randomly) only when first used,
    /// so loading a checkpoint over it costs no random initialisation.
    pub fn new(config: &Qwen3Config, device: &Device) -> Result<Self, ModelError> {
        let rope = config.rotary().map_err(|(key, message)| {
            ModelError::InvalidInput(format!("config key `{key}`: {message}"))
        })?;
        let norm = RmsNormConfig::new(config.hidden_size)
            .with_epsilon(config.rms_norm_eps)
            .init(device);
        let model = Qwen3Model {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, config.hidden_size).init(device),
            layers: (0..config.num_hidden_layers)
                .map(|_| DecoderLayer::new(config, device))
                .collect(),
            norm,
            rotary: RotaryEmbedding::new(rope, device),
        };
        let lm_head = (!config.tie_word_embeddings).then(|| {
            LinearConfig::new(config.hidden_size, config.vocab_size)
                .with_bias(false)
                .init(device)
        });
        Ok(Self { model, lm_head })
    }

    /// Final hidden states `[batch, seq, hidden]` for `tokens` (`[batch, seq]`), which
    /// continue the sequence held in `cache`; the cache is extended by `seq` positions.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, ModelError> {
        self.forward_embeddings(self.embed(tokens), cache)
    }

    /// Token embeddings `[batch, seq, hidden]` of `tokens` (`[batch, seq]`).
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.model.embed_tokens.forward(tokens)
    }

    /// Final hidden states for input embeddings `[batch, seq, hidden]` (token embeddings
    /// with visual embeddings spliced in, for AndesVL), continuing the sequence in `cache`.
    pub fn forward_embeddings(
        &self,
        embeddings: Tensor<3>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, ModelError> {
        let [_, seq, _] = embeddings.dims();
        let position = cache.position(seq)?;
        let end = match position {
            Position::Start(start) => start + seq,
            Position::Device { .. } | Position::Packed { .. } => cache.len(),
        };
        let limit = self.model.rotary.context();
        if end > limit {
            return Err(ModelError::InvalidInput(format!(
                "sequence of {end} positions exceeds the model's context of {limit} \
                 (max_position_embeddings, stretched by yarn or dynamic rope scaling)"
            )));
        }
        let hidden = self.decode_layers(embeddings, &position, cache);
        drop(position);
        cache.advance();
        Ok(hidden)
    }

    /// Final hidden states `[batch, seq, hidden]` of rows that each hold several records side
    /// by side (padding-free packing): `segments` (`batch × seq` record indices, row after
    /// row) restricts every token's attention to earlier tokens of its own record and
    /// restarts positions at each record, so each record computes what it would alone.
    pub fn forward_packed(
        &self,
        tokens: Tensor<2, Int>,
        segments: &[u32],
    ) -> Result<Tensor<3>, ModelError> {
        let [batch, seq] = tokens.dims();
        let limit = self.model.rotary.max_positions();
        if seq > limit {
            return Err(ModelError::InvalidInput(format!(
                "packed rows of {seq} tokens exceed the {limit} positions of the rotary tables"
            )));
        }
        let device = tokens.device();
        let position = Position::packed(segments, batch, &device);
        let mut cache = self.new_cache();
        Ok(self.decode_layers(self.embed(tokens), &position, &mut cache))
    }

    /// Every decoder layer, then the final norm, over `x` at `position`.
    fn decode_layers(&self, x: Tensor<3>, position: &Position, cache: &mut KvCache) -> Tensor<3> {
        let mask = position.attention_mask(x.dims()[1], &x.device());
        let mut x = x;
        for (layer, layer_cache) in self.model.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &self.model.rotary, position, &mask, layer_cache);
        }
        rms_norm(&self.model.norm, x)
    }

    /// Entries of the vocabulary (rows of the token embedding).
    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.lazy_shape().dims::<2>()[0]
    }

    /// Logits `[batch, seq, vocab]` from hidden states `[batch, seq, hidden]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let (weight, bias) = self.head();
        mixed_linear(hidden, weight, bias)
    }

    /// The LM head's weight `[hidden, vocab]` (the embedding's transpose when tied) and bias.
    pub fn head(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        match &self.lm_head {
            Some(head) => (head.weight.val(), head.bias.as_ref().map(|b| b.val())),
            None => (self.model.embed_tokens.weight.val().transpose(), None),
        }
    }

    /// The LM head's weight with a row per token, `[vocab, hidden]`: the embedding matrix
    /// itself when tied (so a gradient computed in this layout adds to the embedding's as it
    /// is), else the head's weight transposed.
    pub fn head_rows(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(head) => head.weight.val().transpose(),
            None => self.model.embed_tokens.weight.val(),
        }
    }

    /// Logits `[batch, seq, vocab]` for every position of `tokens`.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, ModelError> {
        Ok(self.logits(self.forward_hidden(tokens, cache)?))
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.model.layers.len())
    }
}
