//! Training checkpoints: the model in the Hugging Face layout (so `andes generate/eval` and
//! transformers load it), the optimizer state, the trainer state and the resolved recipe,
//! with a sha256 of every file. A checkpoint is assembled in a temporary directory and
//! renamed into place, then `latest` is rewritten atomically: a kill at any moment leaves the
//! previous checkpoint intact and named by `latest`.

use std::path::{Path, PathBuf};

use andes_model::checkpoint::{SaveDtype, sha256, write_atomically};
use andes_model::quantize::save_grid;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::in_place_adamw::HostState;
use crate::objective::RunningMean;
use andes_data::dataset::MixturePosition;
use andes_model::{Model, ModelConfig};

/// File naming the newest complete checkpoint directory.
const LATEST: &str = "latest";
/// Optimizer moments (Burn's record format).
const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// Step, data position and counters.
const STATE_FILE: &str = "trainer_state.json";
/// `sha256  file` lines.
const CHECKSUMS_FILE: &str = "checksums.sha256";
/// The recipe as resolved (overrides applied).
pub const RECIPE_FILE: &str = "recipe.toml";

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Where the data stream stands: each source's position and the examples drawn.
    pub data: MixturePosition,
    /// Target tokens trained on so far.
    pub tokens_seen: u64,
    /// MPO's running reward shift δ (untouched by the other stages).
    #[serde(default)]
    pub reward_shift: RunningMean,
}

/// What a checkpoint holds of the model.
pub enum ModelFiles<'a> {
    /// The whole model in the Hugging Face layout (stages that train the model's weights).
    Full(&'a Model, &'a ModelConfig),
    /// The whole model's latent weights and the quantization grid they train through (stage
    /// `qat`): what `andes quantize --plan CKPT/bit_plan.json` packs.
    Quantized(&'a Model, &'a ModelConfig),
    /// Only what an adapter stage trains, written by this function into the directory.
    Adapter(&'a dyn Fn(&Path) -> Result<(), TrainError>),
}

/// Writes checkpoint `state.step` under `run_dir/checkpoints/`, with copies of
/// `side_files` (the tokenizer, an AndesVL model's image preprocessing) so the checkpoint
/// loads on its own.
pub fn save(
    run_dir: &Path,
    model: ModelFiles<'_>,
    optimizer: HostState,
    state: &TrainerState,
    recipe_toml: &str,
    side_files: &[PathBuf],
) -> Result<PathBuf, TrainError> {
    let root = run_dir.join("checkpoints");
    let name = format!("step-{:06}", state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let final_dir = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    match model {
        ModelFiles::Full(model, config) => model.save(config, &tmp, SaveDtype::F32)?,
        ModelFiles::Quantized(model, config) => {
            model.save(config, &tmp, SaveDtype::F32)?;
            save_grid(model.language_model(), &tmp)?;
        }
        ModelFiles::Adapter(write) => write(&tmp)?,
    }
    for file in side_files {
        let bytes = std::fs::read(file).map_err(|e| TrainError::io(file, e))?;
        let name = file.file_name().expect("side files are files");
        write_atomically(&tmp.join(name), &bytes)?;
    }
    let optimizer_path = tmp.join(OPTIMIZER_FILE);
    optimizer.save(&optimizer_path)?;
    let state_json = serde_json::to_vec_pretty(state).expect("the state serializes");
    write_atomically(&tmp.join(STATE_FILE), &state_json)?;
    write_atomically(&tmp.join(RECIPE_FILE), recipe_toml.as_bytes())?;
    let checksums = checksum_lines(&tmp)?;
    write_atomically(&tmp.join(CHECKSUMS_FILE), checksums.as_bytes())?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    write_atomically(&root.join(LATEST), name.as_bytes())?;
    Ok(final_dir)
}

/// The newest complete checkpoint of a run, verified against its checksums.
pub fn latest(run_dir: &Path) -> Result<PathBuf, TrainError> {
    let pointer = run_dir.join("checkpoints").join(LATEST);
    let name = std::fs::read_to_string(&pointer)
        .map_err(|e| TrainError::io(&pointer, format!("{e}: no checkpoint to resume from")))?;
    let dir = run_dir.join("checkpoints").join(name.trim());
    verify(&dir)?;
    Ok(dir)
}

/// Reads the trainer state of checkpoint `dir`.
pub fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::io(&path, e))
}

/// The optimizer state file of checkpoint `dir`.
pub fn optimizer_path(dir: &Path) -> PathBuf {
    dir.join(OPTIMIZER_FILE)
}

fn checksum_lines(dir: &Path) -> Result<String, TrainError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| TrainError::io(dir, e))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != CHECKSUMS_FILE && !name.starts_with('.'))
        .collect();
    names.sort();
    let mut lines = String::new();
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        lines.push_str(&format!("{}  {name}\n", sha256(&bytes)));
    }
    Ok(lines)
}

/// Fails if any file of checkpoint `dir` is missing or differs from its recorded sha256.
pub fn verify(dir: &Path) -> Result<(), TrainError> {
    let path = dir.join(CHECKSUMS_FILE);
    let recorded = std::fs::read_to_string(&path).map_err(|e| TrainError::Checkpoint {
        path: dir.to_owned(),
        message: format!("{CHECKSUMS_FILE} unreadable: {e}"),
    })?;
    let actual = checksum_lines(dir)?;
    if recorded != actual {
        return Err(TrainError::Checkpoint {
            path: dir.to_owned(),
            message: "files differ from checksums.sha256 (corrupt or edited checkpoint)".into(),
        });
    }
    Ok(())
}
