//! The Qwen3 configuration, read straight from a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::rope::{Rope, RopeScaling};

/// Hyper-parameters of a Qwen3 decoder, with the Hugging Face key names so that a
/// checkpoint's `config.json` deserializes into it unchanged and saves back the same way.
///
/// Keys this crate does not use (`architectures`, `torch_dtype`, ...) are kept in `extra`
/// and written back on save, so a round trip through andes loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen3Config {
    /// Must be `"qwen3"`.
    pub model_type: String,
    /// Size of the token vocabulary (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's inner projection.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when below the query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head; Qwen3 sets it independently of `hidden_size / heads`.
    pub head_dim: usize,
    /// Context the model was trained for: the longest sequence andes runs, unless a `yarn`
    /// or `dynamic` scaling stretches it ([`Rope::context`]).
    pub max_position_embeddings: usize,
    /// Epsilon inside every RMSNorm.
    pub rms_norm_eps: f64,
    /// Whether the LM head reuses the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections carry biases (false in every released Qwen3).
    #[serde(default)]
    pub attention_bias: bool,
    /// MLP activation; only `silu` exists in Qwen3.
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// Rotary base frequency (transformers 4.x layout; 5.x nests it in `rope_parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary scaling (transformers 4.x layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Rotary settings (transformers 5.x layout: `rope_type`, `rope_theta`, scaling keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeScaling>,
    /// Sliding-window attention switch; Qwen3 ships with it off and andes refuses it on.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// End-of-sequence token id(s) from the config, used when the tokenizer names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<EosTokenIds>,
    /// Every other key of the file, kept verbatim for saving.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `eos_token_id` is a single id in some checkpoints and a list in others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EosTokenIds {
    /// One id.
    One(u32),
    /// Several ids, any of which ends generation.
    Many(Vec<u32>),
}

impl EosTokenIds {
    /// All the ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// The MLP's activation as `config.json` names it: Qwen3 gates its SwiGLU with SiLU only,
/// so any other name is refused at load rather than computed wrongly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// `x · sigmoid(x)`.
    #[default]
    Silu,
}

impl Qwen3Config {
    /// The shape the phone cost model reads: parameters every token's forward pass touches
    /// (the embedding rows excluded, the head included), layers, and the KV cache's width.
    pub fn cost_shape(&self) -> andes_quant::ModelShape {
        let (h, layers) = (self.hidden_size as u64, self.num_hidden_layers as u64);
        let attention = h
            * self.head_dim as u64
            * (2 * self.num_attention_heads as u64 + 2 * self.num_key_value_heads as u64);
        let mlp = 3 * h * self.intermediate_size as u64;
        let head = self.vocab_size as u64 * h;
        andes_quant::ModelShape {
            active_params: layers * (attention + mlp) + head,
            head_weights: head,
            layers,
            kv_heads: self.num_key_value_heads as u64,
            head_dim: self.head_dim as u64,
        }
    }

    /// Elements the parameters and the rotary tables of this model take, at least, counted
    /// without overflow: what building it allocates, which a loader of untrusted files
    /// compares with the bytes those files hold before building anything.
    pub fn allocated_elements(&self) -> u128 {
        let product = |factors: &[usize]| {
            factors
                .iter()
                .fold(1u128, |acc, &f| acc.saturating_mul(f as u128))
        };
        let heads = 2 * self.num_attention_heads as u128 + 2 * self.num_key_value_heads as u128;
        let attention = product(&[self.hidden_size, self.head_dim]).saturating_mul(heads);
        let mlp = product(&[3, self.hidden_size, self.intermediate_size]);
        let layers =
            product(&[self.num_hidden_layers]).saturating_mul(attention.saturating_add(mlp));
        let heads_of_vocabulary = if self.tie_word_embeddings { 1 } else { 2 };
        let embeddings = product(&[heads_of_vocabulary, self.vocab_size, self.hidden_size]);
        let tables = self.rotary().map_or(0, |rope| {
            product(&[2, rope.fixed_positions(), self.head_dim])
        });
        layers.saturating_add(embeddings).saturating_add(tables)
    }

    /// Reads and validates `config.json`; every error names the file and the key.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses `config.json` text; `path` only labels errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let value = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: path.to_owned(),
            key: String::new(),
            message: format!("not JSON: {e}"),
        })?;
        Self::from_section(value, path, "")
    }

    /// Parses a Qwen3 configuration that sits at `prefix` inside `path` (an AndesVL
    /// model's `text_config.`); errors name the full dotted key.
    pub fn from_section(
        value: serde_json::Value,
        path: &Path,
        prefix: &str,
    ) -> Result<Self, ModelError> {
        let config: Self =
            serde_path_to_error::deserialize(value).map_err(|e| ModelError::Config {
                path: path.to_owned(),
                key: format!("{prefix}{}", e.path()),
                message: e.inner().to_string(),
            })?;
        config.validate(path, prefix)?;
        Ok(config)
    }

    fn validate(&self, path: &Path, prefix: &str) -> Result<(), ModelError> {
        let fail = |key: &str, message: String| {
            Err(ModelError::Config {
                path: path.to_owned(),
                key: format!("{prefix}{key}"),
                message,
            })
        };
        if self.model_type != "qwen3" {
            return fail(
                "model_type",
                format!("found {:?}, expected \"qwen3\"", self.model_type),
            );
        }
        if self.use_sliding_window {
            return fail(
                "use_sliding_window",
                "sliding-window attention is not supported; expected false".into(),
            );
        }
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return fail(key, "found 0, expected a positive integer".into());
            }
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return fail(
                "rms_norm_eps",
                format!("found {}, expected a positive number", self.rms_norm_eps),
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return fail(
                "head_dim",
                format!("found {}, expected a positive even number", self.head_dim),
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return fail(
                "num_key_value_heads",
                format!(
                    "found {}, expected a divisor of num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        self.rope()
            .map(|_| ())
            .map_err(|(key, message)| ModelError::Config {
                path: path.to_owned(),
                key,
                message,
            })
    }

    /// The rotary base and scaling, whichever layout the file used.
    pub fn rope(&self) -> Result<(f64, RopeScaling), (String, String)> {
        match (&self.rope_parameters, &self.rope_scaling) {
            (Some(params), _) => {
                let theta = params.rope_theta.or(self.rope_theta).ok_or_else(|| {
                    (
                        "rope_parameters.rope_theta".to_string(),
                        "missing; expected the rotary base, e.g. 1000000.0".to_string(),
                    )
                })?;
                params.validated("rope_parameters").map(|s| (theta, s))
            }
            (None, scaling) => {
                let theta = self.rope_theta.unwrap_or(10_000.0);
                let scaling = scaling.clone().unwrap_or_default();
                scaling.validated("rope_scaling").map(|s| (theta, s))
            }
        }
    }

    /// The rotary embedding: base and scaling as [`Qwen3Config::rope`] reads them, with the
    /// head width and `max_position_embeddings` the scalings compute from.
    pub fn rotary(&self) -> Result<Rope, (String, String)> {
        let (theta, scaling) = self.rope()?;
        Ok(Rope {
            head_dim: self.head_dim,
            theta,
            scaling,
            max_position_embeddings: self.max_position_embeddings,
        })
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
