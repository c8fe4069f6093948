//! The adapter stages, `lora` and `qalft`: what they add to the shared loop. Before training,
//! the base is quantized (`qalft`: calibration for GPTQ, the PTQ initialiser, the fake-quant
//! grid) and the adapter attached and made active; a checkpoint holds the adapter in the PEFT
//! layout (plus the grid's scales when they train) instead of the whole model, since the base
//! is the recipe's float checkpoint and its quantization is rebuilt deterministically.

use std::path::Path;

use andes_model::lora::peft::{export_peft_adapter, import_peft_adapter};
use andes_model::quantize::{
    PtqMethod, QuantizationSummary, load_scales, quantize_base_with, save_scales,
};
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::tensor::Device;

use crate::error::TrainError;
use crate::recipe::Recipe;
use andes_data::dataset::WindowSet;

/// Trained grid scales in an adapter checkpoint.
pub const SCALES_FILE: &str = "quant_scales.safetensors";
/// The per-linear quantization report of a `qalft` run, in its run directory.
pub const QUANTIZATION_FILE: &str = "quantization.json";

/// Readies `model` for an adapter stage: quantized (`qalft`, GPTQ calibrated on
/// `calibration`, the run's training windows) and with the recipe's adapter attached and
/// active; on resume, the adapter and scales of `checkpoint` loaded into it.
pub fn prepare(
    model: &mut Qwen3ForCausalLM,
    recipe: &Recipe,
    calibration: Option<&WindowSet>,
    checkpoint: Option<&Path>,
) -> Result<Option<QuantizationSummary>, TrainError> {
    let lora = recipe.lora.as_ref().expect("the recipe is validated");
    let summary = match &recipe.quant {
        Some(quant) => Some(quantize_base_with(
            model,
            &quant.base_quantization(),
            calibration,
            recipe.train.batch_size,
        )?),
        None => None,
    };
    match checkpoint {
        Some(dir) => {
            import_peft_adapter(model, dir, &lora.name)?;
            if recipe.quant.as_ref().is_some_and(|q| q.learn_scales) {
                load_scales(model, &dir.join(SCALES_FILE))?;
            }
        }
        None => model.add_adapter(&lora.name, &lora.config())?,
    }
    model.set_active_adapter(Some(&lora.name))?;
    Ok(summary)
}

/// Writes the trainable state of an adapter stage into checkpoint directory `dir`: the adapter
/// in the PEFT layout and, when they train, the grid's scales.
pub fn save(model: &Qwen3ForCausalLM, recipe: &Recipe, dir: &Path) -> Result<(), TrainError> {
    let lora = recipe.lora.as_ref().expect("the recipe is validated");
    let base = recipe.model.checkpoint.display().to_string();
    export_peft_adapter(model, &lora.name, dir, &base)?;
    if recipe.quant.as_ref().is_some_and(|q| q.learn_scales) {
        save_scales(model, &dir.join(SCALES_FILE))?;
    }
    Ok(())
}

/// A finished (or interrupted) adapter run, rebuilt: its recipe, its latest checkpoint, and
/// the model as training left it (base quantized per the recipe, adapter loaded and active).
pub struct AdapterRun {
    /// The run's resolved recipe.
    pub recipe: Recipe,
    /// The checkpoint the adapter came from.
    pub checkpoint: std::path::PathBuf,
    /// Base + adapter.
    pub model: Qwen3ForCausalLM,
    /// The base's quantization, for `qalft` runs.
    pub quantization: Option<QuantizationSummary>,
}

/// Rebuilds the model of adapter run `run_dir` (a `lora` or `qalft` run of `andes train`) on
/// `device`, from its latest verified checkpoint.
pub fn load_adapter_run(run_dir: &Path, device: &Device) -> Result<AdapterRun, TrainError> {
    let checkpoint = crate::checkpoint::latest(run_dir)?;
    let recipe_path = checkpoint.join(crate::checkpoint::RECIPE_FILE);
    let recipe = Recipe::load(&recipe_path, &[])?;
    if !recipe.stage.trains_adapter() {
        return Err(TrainError::Recipe {
            path: recipe_path,
            key: "stage".into(),
            message: format!(
                "{:?} trains the whole model; its checkpoints are model directories, not adapters",
                recipe.stage
            ),
        });
    }
    let (_, mut model) = andes_model::checkpoint::load_qwen3(
        &recipe.model.checkpoint,
        device,
        burn::tensor::DType::F32,
    )?;
    // Only GPTQ needs the training data again, for the same calibration windows.
    let calibration = match &recipe.quant {
        Some(quant) if quant.init == PtqMethod::Gptq => {
            let tokenizer =
                andes_data::TextTokenizer::from_file(&checkpoint.join("tokenizer.json"))?;
            Some(WindowSet::load(&recipe.data.train, &recipe.data.windowing(), &tokenizer)?.0)
        }
        _ => None,
    };
    let quantization = prepare(&mut model, &recipe, calibration.as_ref(), Some(&checkpoint))?;
    Ok(AdapterRun {
        recipe,
        checkpoint,
        model,
        quantization,
    })
}
