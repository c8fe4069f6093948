//! The `config.json` of an AndesVL model directory: the language model (`text_config`, a
//! Qwen3 configuration), the vision tower (`vision_config`, a SigLIP2 or AIMv2 tower
//! configuration with its Hugging Face `model_type`), the `projector`, and how images are
//! spelled in the token stream. Two layouts are read: andes's own (`model_type = "andesvl"`)
//! and that of OPPO's released checkpoints (`andesvl-aimv2-qwen3`, `andesvl-siglip2-qwen3`),
//! whose projector and image markers are fixed by their modeling code. Documented in
//! docs/andesvl-format.md.

use std::path::Path;

use serde_json::{Value, json};

use crate::error::ModelError;
use crate::projector::ProjectorConfig;
use crate::qwen3::Qwen3Config;
use crate::vision::{ReleasedTower, VisionConfig};

/// `model_type` of an andes AndesVL directory.
pub const ANDESVL: &str = "andesvl";
/// `model_type` of the released AndesVL-1B/2B/4B checkpoints (AIMv2 tower).
pub const RELEASED_AIMV2: &str = "andesvl-aimv2-qwen3";
/// `model_type` of the released AndesVL-0.6B checkpoints (SigLIP2 tower).
pub const RELEASED_SIGLIP2: &str = "andesvl-siglip2-qwen3";

/// Whether a `config.json` with this `model_type` holds an AndesVL model (either layout).
pub fn is_andesvl(model_type: &str) -> bool {
    [ANDESVL, RELEASED_AIMV2, RELEASED_SIGLIP2].contains(&model_type)
}

/// The token the released checkpoints repeat once per visual token (their code looks it up
/// in the tokenizer by this text).
pub const RELEASED_IMAGE_TOKEN: &str = "<|vision_pad|>";
/// Its id in Qwen3's vocabulary, used when the directory has no `tokenizer.json`.
const QWEN3_VISION_PAD_ID: u32 = 151654;

/// Which `config.json` layout a model came in, so that it is written back the same way.
#[derive(Debug, Clone, PartialEq)]
pub enum AndesVLLayout {
    /// andes's own (`model_type = "andesvl"`).
    Andes,
    /// A released checkpoint's, kept verbatim (its `auto_map` and other keys included).
    Released(Value),
}

/// Everything needed to build an AndesVL model.
#[derive(Debug, Clone, PartialEq)]
pub struct AndesVLConfig {
    /// The Qwen3 language model.
    pub text_config: Qwen3Config,
    /// The vision tower.
    pub vision_config: VisionConfig,
    /// Pixel shuffle and MLP.
    pub projector: ProjectorConfig,
    /// Token id repeated once per visual token in the prompt.
    pub image_token_id: u32,
    /// Text put before an image's tokens (AndesVL: `<img>`).
    pub image_start: Option<String>,
    /// Text put after an image's tokens (AndesVL: `</img>`).
    pub image_end: Option<String>,
    /// The layout the configuration was read in.
    pub layout: AndesVLLayout,
}

impl AndesVLConfig {
    /// Reads and validates `config.json`; errors name the file and the dotted key.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let fail = |key: &str, message: String| ModelError::Config {
            path: path.to_owned(),
            key: key.into(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut value: Value =
            serde_json::from_str(&text).map_err(|e| fail("", format!("not JSON: {e}")))?;
        let tower = match value["model_type"].as_str() {
            Some(ANDESVL) => None,
            Some(RELEASED_AIMV2) => Some(ReleasedTower::Aimv2),
            Some(RELEASED_SIGLIP2) => Some(ReleasedTower::Siglip2),
            _ => {
                return Err(fail(
                    "model_type",
                    format!(
                        "found {}, expected \"{ANDESVL}\", or a released AndesVL checkpoint's \
                         \"{RELEASED_AIMV2}\" or \"{RELEASED_SIGLIP2}\"",
                        value["model_type"]
                    ),
                ));
            }
        };
        if let Some(tower) = tower {
            return Self::released(value, tower, path);
        }
        let mut section = |key: &str| match value.get_mut(key).map(Value::take) {
            Some(section) if section.is_object() => Ok(section),
            _ => Err(fail(key, "missing or not an object".into())),
        };
        let text_config = Qwen3Config::from_section(section("text_config")?, path, "text_config.")?;
        let vision_config =
            VisionConfig::from_value(section("vision_config")?, None, path, "vision_config.")?;
        let projector: ProjectorConfig = serde_path_to_error::deserialize(section("projector")?)
            .map_err(|e| fail(&format!("projector.{}", e.path()), e.inner().to_string()))?;
        if projector.merge_size == 0 {
            return Err(fail("projector.merge_size", "must be at least 1".into()));
        }
        let image_token_id = value["image_token_id"]
            .as_u64()
            .filter(|&id| (id as usize) < text_config.vocab_size)
            .ok_or_else(|| {
                fail(
                    "image_token_id",
                    format!(
                        "expected a token id below text_config.vocab_size = {}, found {}",
                        text_config.vocab_size, value["image_token_id"]
                    ),
                )
            })? as u32;
        let marker = |key: &str| match &value[key] {
            Value::Null => Ok(None),
            Value::String(text) => Ok(Some(text.clone())),
            other => Err(fail(key, format!("expected a string, found {other}"))),
        };
        Ok(Self {
            image_start: marker("image_start")?,
            image_end: marker("image_end")?,
            text_config,
            vision_config,
            projector,
            image_token_id,
            layout: AndesVLLayout::Andes,
        })
    }

    /// A released checkpoint's configuration: `text_config`, `vision_config` (its family
    /// told by `tower`), and what the released modeling code fixes: a projector of
    /// `Linear(4d, 4d) → GELU → Linear(4d, text hidden)` over 2×2 merged patches, images
    /// spelled `<img>` + `<|vision_pad|>`×N + `</img>` (the pad's id looked up in the
    /// directory's `tokenizer.json`, as the released code does).
    fn released(original: Value, tower: ReleasedTower, path: &Path) -> Result<Self, ModelError> {
        let fail = |key: &str, message: String| ModelError::Config {
            path: path.to_owned(),
            key: key.into(),
            message,
        };
        let section = |key: &str| match original.get(key) {
            Some(section) if section.is_object() => Ok(section.clone()),
            _ => Err(fail(key, "missing or not an object".into())),
        };
        let text_config = Qwen3Config::from_section(section("text_config")?, path, "text_config.")?;
        let vision_config =
            VisionConfig::from_released(section("vision_config")?, tower, path, "vision_config.")?;
        let image_token_id = released_image_token(path)?;
        if image_token_id as usize >= text_config.vocab_size {
            return Err(fail(
                "text_config.vocab_size",
                format!(
                    "{} does not hold the image token {RELEASED_IMAGE_TOKEN} (id {image_token_id})",
                    text_config.vocab_size
                ),
            ));
        }
        Ok(Self {
            text_config,
            vision_config,
            projector: ProjectorConfig {
                merge_size: 2,
                layer_norm: false,
                intermediate_size: None,
            },
            image_token_id,
            image_start: Some("<img>".into()),
            image_end: Some("</img>".into()),
            layout: AndesVLLayout::Released(original),
        })
    }

    /// Number of visual tokens an image of `height × width` pixels becomes: its patches over
    /// the projector's merge.
    pub fn visual_tokens(&self, height: usize, width: usize) -> usize {
        let (p, m) = (
            self.vision_config.spec().patch_size,
            self.projector.merge_size,
        );
        (height / p) * (width / p) / (m * m)
    }

    /// The configuration as written to `config.json` (a released checkpoint's as it came).
    pub fn to_json(&self) -> Vec<u8> {
        if let AndesVLLayout::Released(original) = &self.layout {
            return serde_json::to_vec_pretty(original).expect("the config serializes");
        }
        let value = json!({
            "model_type": ANDESVL,
            "architectures": ["AndesVLForConditionalGeneration"],
            "text_config": self.text_config,
            "vision_config": self.vision_config.to_value(),
            "projector": self.projector,
            "image_token_id": self.image_token_id,
            "image_start": self.image_start,
            "image_end": self.image_end,
        });
        serde_json::to_vec_pretty(&value).expect("the config serializes")
    }
}

/// The id of `<|vision_pad|>` in the `tokenizer.json` beside `config` (Qwen3's when the
/// directory has none); a tokenizer without it is an error naming the file.
fn released_image_token(config: &Path) -> Result<u32, ModelError> {
    let path = config.with_file_name("tokenizer.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(QWEN3_VISION_PAD_ID),
        Err(source) => return Err(ModelError::Io { path, source }),
    };
    let fail = |message: String| ModelError::Config {
        path: path.clone(),
        key: "added_tokens".into(),
        message,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    value["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|token| token["content"] == RELEASED_IMAGE_TOKEN)
        .and_then(|token| token["id"].as_u64())
        .map(|id| id as u32)
        .ok_or_else(|| {
            fail(format!(
                "no {RELEASED_IMAGE_TOKEN}: a released AndesVL checkpoint marks visual tokens \
                 with it"
            ))
        })
}
