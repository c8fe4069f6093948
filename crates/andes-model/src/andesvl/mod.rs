//! AndesVL: a vision tower at native resolution, the pixel-shuffle projector, and the Qwen3
//! language model, with each image's visual embeddings spliced into the token embeddings at
//! its placeholder span. Parameter names follow AndesVL's released modeling code
//! (`vision_encoder.*`, `mlp.N.*`, `language_model.model.*`, `language_model.lm_head.*`).

mod config;
pub mod rows;

pub use config::{
    ANDESVL, AndesVLConfig, AndesVLLayout, RELEASED_AIMV2, RELEASED_IMAGE_TOKEN, RELEASED_SIGLIP2,
    is_andesvl,
};

use std::ops::Range;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor};

use crate::checkpoint::{
    SINGLE_FILE, SafetensorsShards, SaveDtype, load_parameters, load_parameters_named,
    parameters_safetensors, save_parameters_named, write_atomically,
};
use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::projector::Projector;
use crate::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use crate::vision::{self, VisionTransformer};

/// The assembled vision-language model.
#[derive(Module, Debug)]
pub struct AndesVL {
    /// Pixels → patch features.
    pub vision_encoder: VisionTransformer,
    /// Patch features → language-model embeddings (pixel shuffle + MLP).
    pub mlp: Projector,
    /// The Qwen3 decoder and its head.
    pub language_model: Qwen3ForCausalLM,
}

/// One image of a batch: which sequence, which span of image tokens, and its pixels.
#[derive(Debug, Clone)]
pub struct ImagePlacement {
    /// Row of the token batch.
    pub sequence: usize,
    /// Positions of the image's tokens in that row (one per visual token).
    pub span: Range<usize>,
    /// Preprocessed pixels `[channels, H, W]`.
    pub pixels: Tensor<3>,
}

/// The parts of an AndesVL model around its language model: the vision tower and the
/// projector. A mobile package keeps them in float while the language model's linears are
/// quantized, so they are saved and loaded on their own.
#[derive(Module, Debug)]
pub struct VisionSide {
    /// Pixels → patch features.
    pub vision_encoder: VisionTransformer,
    /// Patch features → language-model embeddings.
    pub mlp: Projector,
}

impl VisionSide {
    /// Visual embeddings `[tokens, text_hidden]` of one preprocessed image `[channels, H, W]`.
    pub fn encode_image(&self, pixels: Tensor<3>) -> Result<Tensor<2>, ModelError> {
        encode_image(&self.vision_encoder, &self.mlp, pixels)
    }

    /// A lazily-initialised vision side for `config`.
    pub fn new(config: &AndesVLConfig, device: &Device) -> Self {
        let vision_hidden = config.vision_config.spec().hidden_size;
        Self {
            vision_encoder: VisionTransformer::new(&config.vision_config, device),
            mlp: Projector::new(
                &config.projector,
                vision_hidden,
                config.text_config.hidden_size,
                device,
            ),
        }
    }
}

impl AndesVL {
    /// A lazily-initialised model for `config`.
    pub fn new(config: &AndesVLConfig, device: &Device) -> Result<Self, ModelError> {
        let language_model = Qwen3ForCausalLM::new(&config.text_config, device)?;
        Ok(Self::from_parts(
            VisionSide::new(config, device),
            language_model,
        ))
    }

    /// Joins a vision side and a language model.
    pub fn from_parts(vision: VisionSide, language_model: Qwen3ForCausalLM) -> Self {
        Self {
            vision_encoder: vision.vision_encoder,
            mlp: vision.mlp,
            language_model,
        }
    }

    /// Splits into the vision side and the language model.
    pub fn into_parts(self) -> (VisionSide, Qwen3ForCausalLM) {
        let vision = VisionSide {
            vision_encoder: self.vision_encoder,
            mlp: self.mlp,
        };
        (vision, self.language_model)
    }

    /// Number of visual tokens an image of `height × width` pixels becomes.
    pub fn visual_tokens(&self, height: usize, width: usize) -> usize {
        let (p, m) = (self.vision_encoder.patch_size(), self.mlp.merge_size());
        (height / p) * (width / p) / (m * m)
    }

    /// Visual embeddings `[tokens, text_hidden]` of one preprocessed image `[channels, H, W]`.
    pub fn encode_image(&self, pixels: Tensor<3>) -> Result<Tensor<2>, ModelError> {
        encode_image(&self.vision_encoder, &self.mlp, pixels)
    }

    /// Input embeddings `[batch, seq, hidden]`: token embeddings of `tokens`, each image's
    /// span replaced by its visual embeddings. With no images this is the text model's.
    pub fn embed(
        &self,
        tokens: Tensor<2, Int>,
        images: &[ImagePlacement],
    ) -> Result<Tensor<3>, ModelError> {
        let [batch, seq] = tokens.dims();
        let mut embeddings = self.language_model.embed(tokens);
        let [_, _, hidden] = embeddings.dims();
        for (i, image) in images.iter().enumerate() {
            let visual = self.encode_image(image.pixels.clone())?;
            let [count, _] = visual.dims();
            let span = image.span.clone();
            if image.sequence >= batch || span.end > seq || span.len() != count {
                return Err(ModelError::InvalidInput(format!(
                    "image {i} has {count} visual tokens but is placed at sequence {} \
                     positions {span:?} of a [{batch}, {seq}] batch",
                    image.sequence
                )));
            }
            let row = image.sequence;
            let visual = visual.cast(embeddings.dtype()).unsqueeze();
            embeddings = embeddings.slice_assign([row..row + 1, span, 0..hidden], visual);
        }
        Ok(embeddings)
    }

    /// Logits `[batch, seq, vocab]` for a batch of text-only or image+text sequences.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        images: &[ImagePlacement],
        cache: &mut KvCache,
    ) -> Result<Tensor<3>, ModelError> {
        let embeddings = self.embed(tokens, images)?;
        let hidden = self.language_model.forward_embeddings(embeddings, cache)?;
        Ok(self.language_model.logits(hidden))
    }
}

/// The tower's features of `pixels` (`[channels, H, W]`) through the projector.
fn encode_image(
    tower: &VisionTransformer,
    projector: &Projector,
    pixels: Tensor<3>,
) -> Result<Tensor<2>, ModelError> {
    let [_, height, width] = pixels.dims();
    let p = tower.patch_size();
    let features = tower.forward(pixels.unsqueeze())?;
    let embeddings = projector.forward(features, height / p, width / p)?;
    Ok(embeddings.squeeze_dim(0))
}

/// The checkpoint-name prefixes of an AndesVL model's vision side: the vision tower and the
/// projector (the rest is `language_model.`).
pub const VISION_SIDE_PREFIXES: [&str; 2] = ["vision_encoder.", "mlp."];

/// The checkpoint name of a parameter path of [`AndesVL`].
fn checkpoint_name(config: &AndesVLConfig, path_name: &str) -> String {
    if let Some(rest) = path_name.strip_prefix("vision_encoder.") {
        format!(
            "vision_encoder.{}",
            vision::checkpoint_name(&config.vision_config, rest)
        )
    } else if let Some(rest) = path_name.strip_prefix("mlp.") {
        format!("mlp.{}", config.projector.checkpoint_name(rest))
    } else {
        path_name.to_string()
    }
}

/// Name of the head a tied checkpoint may still carry.
const TIED_HEAD: &str = "language_model.lm_head.weight";

/// Loads an AndesVL model directory (`config.json`, `model.safetensors` or shards).
pub fn load_andesvl(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(AndesVLConfig, AndesVL), ModelError> {
    let config = AndesVLConfig::from_file(&dir.join("config.json"))?;
    let mut shards = SafetensorsShards::open(dir)?;
    let model = AndesVL::new(&config, device)?;
    let model = load_parameters_named(model, &mut shards, dtype, &|name| {
        checkpoint_name(&config, name)
    })?;
    if config.text_config.tie_word_embeddings {
        shards.ignore(TIED_HEAD);
    }
    shards.ensure_all_used()?;
    Ok((config, model))
}

/// Writes `config.json` and `model.safetensors` (atomically) for `model`.
pub fn save_andesvl(
    model: &AndesVL,
    config: &AndesVLConfig,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_atomically(&dir.join("config.json"), &config.to_json())?;
    save_parameters_named(model, &dir.join(SINGLE_FILE), dtype, &[], &|name| {
        checkpoint_name(config, name)
    })
}

/// The vision side's tensors (checkpoint names, `vision_encoder.*` and `mlp.*`) as the bytes
/// of one safetensors file, meant for `path` (named in errors).
pub fn vision_side_safetensors(
    vision: &VisionSide,
    config: &AndesVLConfig,
    path: &Path,
    dtype: SaveDtype,
) -> Result<Vec<u8>, ModelError> {
    parameters_safetensors(vision, path, dtype, &[], &|name| {
        checkpoint_name(config, name)
    })
}

/// Loads a vision side from `shards` (every tensor named as [`vision_side_safetensors`]
/// names them).
pub fn load_vision_side(
    config: &AndesVLConfig,
    shards: &mut SafetensorsShards,
    device: &Device,
    dtype: DType,
) -> Result<VisionSide, ModelError> {
    load_parameters_named(VisionSide::new(config, device), shards, dtype, &|name| {
        checkpoint_name(config, name)
    })
}

/// Builds an AndesVL model from its parts, as AndesVL's training starts: the language model
/// from a Qwen3 checkpoint directory and the vision tower from a SigLIP2 / AIMv2 checkpoint
/// (a full image-text model is fine), each optional (random when absent), and a freshly
/// initialised projector. The checkpoints must have the shapes `config` describes; each
/// mismatch is an error naming the file and tensor.
pub fn assemble(
    config: &AndesVLConfig,
    text: Option<&Path>,
    vision: Option<&Path>,
    device: &Device,
) -> Result<AndesVL, ModelError> {
    let mut model = AndesVL::new(config, device)?;
    if let Some(dir) = text {
        let path = dir.join("config.json");
        let mut found = Qwen3Config::from_file(&path)?;
        let mut expected = config.text_config.clone();
        (found.extra, expected.extra) = Default::default();
        if found != expected {
            return Err(ModelError::Config {
                path,
                key: "text_config".into(),
                message: format!(
                    "this Qwen3 checkpoint is not the language model the AndesVL config \
                     describes: {found:?} vs {expected:?}"
                ),
            });
        }
        let mut shards = SafetensorsShards::open(dir)?;
        model.language_model = load_parameters(model.language_model, &mut shards, DType::F32)?;
        if config.text_config.tie_word_embeddings {
            shards.ignore("lm_head.weight");
        }
        shards.ensure_all_used()?;
    }
    if let Some(dir) = vision {
        let (found, tower) = vision::load_vision_tower(dir, device, DType::F32)?;
        if found.spec() != config.vision_config.spec() {
            return Err(ModelError::Config {
                path: dir.join("config.json"),
                key: "model_type".into(),
                message: format!(
                    "this tower ({} {:?}) is not the one the AndesVL config describes ({} {:?})",
                    found.model_type(),
                    found.spec(),
                    config.vision_config.model_type(),
                    config.vision_config.spec()
                ),
            });
        }
        model.vision_encoder = tower;
    }
    Ok(model)
}
