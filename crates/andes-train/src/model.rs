//! The model a run trains: a Qwen3 language model, or an AndesVL vision-language model
//! (vision tower, projector, Qwen3), chosen by the starting checkpoint's `config.json`.

use std::path::Path;

use andes_model::andesvl::{AndesVL, AndesVLConfig, load_andesvl, save_andesvl};
use andes_model::checkpoint::{SaveDtype, load_qwen3, save_qwen3};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use burn::module::Module;
use burn::tensor::{DType, Device};

use crate::error::TrainError;

/// A trainable model; parameter names are those of its Hugging Face checkpoint, so freeze
/// patterns read `model.layers.0.` for a text model and `language_model.` for AndesVL.
// One model per run: the variants' size difference costs nothing, and Burn's `Module`
// derive wants the modules inline.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum TrainModel {
    /// `Qwen3ForCausalLM`.
    Text(Qwen3ForCausalLM),
    /// `AndesVLForConditionalGeneration`.
    VisionLanguage(AndesVL),
}

/// The configuration a checkpoint is saved with.
#[allow(clippy::large_enum_variant)] // one per run
#[derive(Debug, Clone)]
pub enum ModelConfig {
    /// Of a text model.
    Text(Qwen3Config),
    /// Of an AndesVL model.
    VisionLanguage(AndesVLConfig),
}

impl ModelConfig {
    /// The language model's configuration.
    pub fn text_config(&self) -> &Qwen3Config {
        match self {
            ModelConfig::Text(config) => config,
            ModelConfig::VisionLanguage(config) => &config.text_config,
        }
    }
}

impl TrainModel {
    /// Loads the Hugging Face directory `dir` in f32: AndesVL when its `config.json` says
    /// `model_type = "andesvl"`, Qwen3 otherwise.
    pub fn load(dir: &Path, device: &Device) -> Result<(ModelConfig, Self), TrainError> {
        if AndesVLConfig::is_andesvl(&dir.join("config.json")) {
            let (config, model) = load_andesvl(dir, device, DType::F32)?;
            Ok((
                ModelConfig::VisionLanguage(config),
                TrainModel::VisionLanguage(model),
            ))
        } else {
            let (config, model) = load_qwen3(dir, device, DType::F32)?;
            Ok((ModelConfig::Text(config), TrainModel::Text(model)))
        }
    }

    /// Writes the model in its Hugging Face layout (f32) into `dir`.
    pub fn save(&self, config: &ModelConfig, dir: &Path) -> Result<(), TrainError> {
        match (self, config) {
            (TrainModel::Text(model), ModelConfig::Text(config)) => {
                save_qwen3(model, config, dir, SaveDtype::F32)?
            }
            (TrainModel::VisionLanguage(model), ModelConfig::VisionLanguage(config)) => {
                save_andesvl(model, config, dir, SaveDtype::F32)?
            }
            _ => unreachable!("a model is saved with the configuration it was loaded with"),
        }
        Ok(())
    }

    /// The language model (all of a text model; AndesVL's decoder and head).
    pub fn language_model(&self) -> &Qwen3ForCausalLM {
        match self {
            TrainModel::Text(model) => model,
            TrainModel::VisionLanguage(model) => &model.language_model,
        }
    }

    /// The language model, owned (a reference model needs only this part).
    pub fn into_language_model(self) -> Qwen3ForCausalLM {
        match self {
            TrainModel::Text(model) => model,
            TrainModel::VisionLanguage(model) => model.language_model,
        }
    }

    /// The vision-language model, when this is one.
    pub fn vision_language(&self) -> Option<&AndesVL> {
        match self {
            TrainModel::Text(_) => None,
            TrainModel::VisionLanguage(model) => Some(model),
        }
    }
}
