//! The `config.json` of an AndesVL model directory: the language model (`text_config`, a
//! Qwen3 configuration), the vision tower (`vision_config`, a SigLIP2 or AIMv2 tower
//! configuration with its Hugging Face `model_type`), the `projector`, and how images are
//! spelled in the token stream. Documented in docs/andesvl-format.md.

use std::path::Path;

use serde_json::{Value, json};

use crate::error::ModelError;
use crate::projector::ProjectorConfig;
use crate::qwen3::Qwen3Config;
use crate::vision::VisionConfig;

/// `model_type` of an andes AndesVL directory.
pub const ANDESVL: &str = "andesvl";

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
        if value["model_type"] != ANDESVL {
            return Err(fail(
                "model_type",
                format!("found {}, expected \"{ANDESVL}\"", value["model_type"]),
            ));
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
        })
    }

    /// The configuration as written to `config.json`.
    pub fn to_json(&self) -> Vec<u8> {
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
