//! The model a Hugging Face directory holds: a Qwen3 language model, or an AndesVL
//! vision-language model (vision tower, projector, Qwen3), told apart by `config.json`'s
//! `model_type`. Every command and the trainer load through here, so that check lives in one
//! place.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device};
use serde_json::Value;

use crate::andesvl::{ANDESVL, AndesVL, AndesVLConfig, VisionSide, load_andesvl, save_andesvl};
use crate::checkpoint::{SaveDtype, load_qwen3, save_qwen3};
use crate::error::ModelError;
use crate::qwen3::{Qwen3Config, Qwen3ForCausalLM};

/// The configuration of either model, as its `config.json` gives it.
// One configuration per run: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// A Qwen3 language model (`model_type = "qwen3"`).
    Text(Qwen3Config),
    /// An AndesVL model (`model_type = "andesvl"`, or a released checkpoint's).
    VisionLanguage(AndesVLConfig),
}

impl ModelConfig {
    /// Reads `path` (a `config.json`): AndesVL when its `model_type` says so (any
    /// `andesvl*`, so that a released variant not supported is named by the AndesVL reader),
    /// Qwen3 otherwise (whose reader then names whatever is wrong with the file).
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let is_andesvl = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .is_some_and(|value| {
                value["model_type"]
                    .as_str()
                    .is_some_and(|kind| kind.starts_with(ANDESVL))
            });
        if is_andesvl {
            Ok(Self::VisionLanguage(AndesVLConfig::from_file(path)?))
        } else {
            Ok(Self::Text(Qwen3Config::from_file(path)?))
        }
    }

    /// The language model's configuration (all of a text model's).
    pub fn text_config(&self) -> &Qwen3Config {
        match self {
            Self::Text(config) => config,
            Self::VisionLanguage(config) => &config.text_config,
        }
    }

    /// The AndesVL configuration, when this is one.
    pub fn andesvl(&self) -> Option<&AndesVLConfig> {
        match self {
            Self::Text(_) => None,
            Self::VisionLanguage(config) => Some(config),
        }
    }
}

/// A loaded model; parameter names are those of its Hugging Face checkpoint, so freeze
/// patterns read `model.layers.0.` for a text model and `language_model.` for AndesVL.
// One model per run: the variants' size difference costs nothing, and Burn's `Module`
// derive wants the modules inline.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// `Qwen3ForCausalLM`.
    Text(Qwen3ForCausalLM),
    /// `AndesVLForConditionalGeneration`.
    VisionLanguage(AndesVL),
}

impl Model {
    /// Loads the Hugging Face directory `dir` with its parameters in `dtype`.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<(ModelConfig, Self), ModelError> {
        match ModelConfig::from_file(&dir.join("config.json"))? {
            ModelConfig::VisionLanguage(_) => {
                let (config, model) = load_andesvl(dir, device, dtype)?;
                Ok((
                    ModelConfig::VisionLanguage(config),
                    Self::VisionLanguage(model),
                ))
            }
            ModelConfig::Text(_) => {
                let (config, model) = load_qwen3(dir, device, dtype)?;
                Ok((ModelConfig::Text(config), Self::Text(model)))
            }
        }
    }

    /// A lazily-initialised model of `config` (random weights; counting parameters
    /// allocates nothing).
    pub fn new(config: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        Ok(match config {
            ModelConfig::Text(config) => Self::Text(Qwen3ForCausalLM::new(config, device)?),
            ModelConfig::VisionLanguage(config) => {
                Self::VisionLanguage(AndesVL::new(config, device)?)
            }
        })
    }

    /// The language model with, for an AndesVL configuration, its vision side.
    pub fn from_parts(language_model: Qwen3ForCausalLM, vision: Option<VisionSide>) -> Self {
        match vision {
            Some(vision) => Self::VisionLanguage(AndesVL::from_parts(vision, language_model)),
            None => Self::Text(language_model),
        }
    }

    /// Writes the model in its Hugging Face layout into `dir`, its parameters as `dtype`.
    pub fn save(
        &self,
        config: &ModelConfig,
        dir: &Path,
        dtype: SaveDtype,
    ) -> Result<(), ModelError> {
        match (self, config) {
            (Self::Text(model), ModelConfig::Text(config)) => save_qwen3(model, config, dir, dtype),
            (Self::VisionLanguage(model), ModelConfig::VisionLanguage(config)) => {
                save_andesvl(model, config, dir, dtype)
            }
            _ => Err(ModelError::Config {
                path: dir.join("config.json"),
                key: "model_type".into(),
                message: "a model is saved with the configuration of its own kind".into(),
            }),
        }
    }

    /// The language model (all of a text model; AndesVL's decoder and head).
    pub fn language_model(&self) -> &Qwen3ForCausalLM {
        match self {
            Self::Text(model) => model,
            Self::VisionLanguage(model) => &model.language_model,
        }
    }

    /// The language model, mutably (quantizing the base, attaching adapters).
    pub fn language_model_mut(&mut self) -> &mut Qwen3ForCausalLM {
        match self {
            Self::Text(model) => model,
            Self::VisionLanguage(model) => &mut model.language_model,
        }
    }

    /// The language model, owned (a reference model or a text command needs only this part).
    pub fn into_language_model(self) -> Qwen3ForCausalLM {
        match self {
            Self::Text(model) => model,
            Self::VisionLanguage(model) => model.language_model,
        }
    }

    /// The vision-language model, when this is one.
    pub fn vision_language(&self) -> Option<&AndesVL> {
        match self {
            Self::Text(_) => None,
            Self::VisionLanguage(model) => Some(model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name)
    }

    #[test]
    fn config_kind_follows_model_type() {
        let text = ModelConfig::from_file(&fixture("qwen3-tiny-untied-mha-f32/config.json"))
            .expect("a Qwen3 fixture");
        assert!(matches!(text, ModelConfig::Text(_)));
        assert!(text.andesvl().is_none());
    }

    #[test]
    fn missing_config_is_named() {
        let path = fixture("no-such-model/config.json");
        let error = ModelConfig::from_file(&path).expect_err("no file");
        assert!(error.to_string().contains("no-such-model"), "{error}");
    }
}
