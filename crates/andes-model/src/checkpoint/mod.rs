//! Hugging Face model directories: `config.json` plus `model.safetensors` (or shards with
//! `model.safetensors.index.json`), in f32, bf16 or f16; loaded into and saved from Burn.

mod atomic;
mod load;
mod names;
mod save;
mod shards;

pub use atomic::{file_sha256, sha256, write_atomically};
pub use load::{load_parameters, load_parameters_named, stable_param_id};
pub use names::ParamPath;
pub use save::{
    SIDE_FILES, SaveDtype, parameters_safetensors, save_parameters, save_parameters_named,
    side_files,
};
pub use shards::{INDEX_FILE, SINGLE_FILE, SafetensorsShards};

use std::path::Path;

use burn::tensor::{DType, Device};

use crate::error::ModelError;
use crate::qwen3::{Qwen3Config, Qwen3ForCausalLM};

/// Name of the tensor a tied checkpoint may still carry; ignored when embeddings are tied.
const TIED_HEAD: &str = "lm_head.weight";

/// Loads a Qwen3 model directory onto `device`, computing in `dtype`.
///
/// Every tensor the configuration implies must be present with its exact shape, and every
/// tensor present must be used (except `lm_head.weight` of a tied model, which transformers
/// also ignores); each failure names the file and the tensor.
pub fn load_qwen3(
    dir: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(Qwen3Config, Qwen3ForCausalLM), ModelError> {
    let config = Qwen3Config::from_file(&dir.join("config.json"))?;
    let mut shards = SafetensorsShards::open(dir)?;
    let model = Qwen3ForCausalLM::new(&config, device)?;
    let model = load_parameters(model, &mut shards, dtype)?;
    if config.tie_word_embeddings {
        shards.ignore(TIED_HEAD);
    }
    shards.ensure_all_used()?;
    Ok((config, model))
}

/// Writes `model` and `config` as a Hugging Face directory (`config.json`,
/// `model.safetensors`) that transformers and andes load; each file is written atomically.
pub fn save_qwen3(
    model: &Qwen3ForCausalLM,
    config: &Qwen3Config,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(config).expect("the config serializes");
    write_atomically(&dir.join("config.json"), &json)?;
    save_parameters(model, &dir.join(SINGLE_FILE), dtype, &[])
}
