//! The adapter stages, `lora` and `qalft`: what they add to the shared loop. Before training,
//! the base is quantized (`qalft`: calibration for GPTQ, the PTQ initialiser, the fake-quant
//! grid) and the adapter attached and made active; a checkpoint holds the adapter in the PEFT
//! layout (plus the grid's scales when they train) instead of the whole model, since the base
//! is the recipe's float checkpoint and its quantization is rebuilt deterministically.

use std::path::{Path, PathBuf};

use andes_model::andesvl::VISION_SIDE_PREFIXES;
use andes_model::checkpoint::{file_sha256, write_atomically};
use andes_model::lora::peft::{export_peft_adapter, import_peft_adapter};
use andes_model::quantize::{
    PtqMethod, QuantizationSummary, calibrate_windows, load_scales, quantize_base_by, save_scales,
};
use andes_model::qwen3::Qwen3ForCausalLM;
use andes_model::{Model, ModelConfig};
use andes_package::{TRAINED_AGAINST_FILE, TrainedAgainst, package_sha256};
use burn::module::Module;
use burn::tensor::{DType, Device};

use crate::error::TrainError;
use crate::optim::freeze;
use crate::recipe::{
    AdapterSections, CALIBRATION_WINDOWS, LoraInit, LoraSection, QuantSection, Recipe,
};
use crate::trainer::StageSetup;
use andes_data::dataset::WindowSet;

/// Trained grid scales in an adapter checkpoint.
pub const SCALES_FILE: &str = "quant_scales.safetensors";
/// The per-linear quantization report of a `qalft` run, in its run directory.
pub const QUANTIZATION_FILE: &str = "quantization.json";

/// The adapter stage's part of a run's setup: `model`, the recipe's base, readied per
/// [`prepare`] (on resume, from the checkpoint the run continues from), and the quantized
/// base's report written to the run's [`QUANTIZATION_FILE`]. An AndesVL model's adapter sits
/// on its language model's linears and its vision side (tower and projector) is frozen, since
/// an adapter checkpoint holds the adapter only.
pub(crate) fn setup(
    model: &mut Model,
    sections: AdapterSections<'_>,
    run: &StageSetup<'_>,
) -> Result<(), TrainError> {
    if let Model::VisionLanguage(_) = model {
        *model = freeze(model.clone(), &VISION_SIDE_PREFIXES.map(String::from)).0;
    }
    let residual_start = sections.lora.init == LoraInit::QuantizationResidual;
    if residual_start && run.resume_from.is_none() && run.calibration.is_none() {
        return Err(TrainError::Recipe {
            path: run.recipe.data.primary().path.clone(),
            key: "lora.init".into(),
            message: "quantization-residual weighs the base's error by the float model's inputs \
                      on the training windows, and this data loads none (conversations with \
                      images, or a source streamed through shuffle_buffer): use \
                      init = \"zero-update\""
                .into(),
        });
    }
    let batch_size = run.recipe.train.batch_size;
    let package_source = run
        .recipe
        .model
        .package
        .is_some()
        .then_some(run.recipe.model.checkpoint.as_path());
    let summary = prepare(
        model.language_model_mut(),
        sections,
        (batch_size, run.calibration),
        run.resume_from,
        package_source,
    )?;
    match summary {
        Some(summary) => report_quantization(&summary, run),
        None => Ok(()),
    }
}

/// Writes what quantizing the base gave to the run's [`QUANTIZATION_FILE`] and, when the run
/// shows progress, sums it up on stderr.
pub(crate) fn report_quantization(
    summary: &QuantizationSummary,
    run: &StageSetup<'_>,
) -> Result<(), TrainError> {
    let json = serde_json::to_vec_pretty(summary).expect("the summary serializes");
    write_atomically(&run.run_dir.join(QUANTIZATION_FILE), &json)?;
    if run.show_progress {
        eprintln!(
            "quantized base: {:.4} bpw over {} weights of {} linears (scales and zero points \
             counted; embeddings, norms and head stay float)",
            summary.bpw_linears,
            summary.quantized_weights,
            summary.layers.len()
        );
    }
    Ok(())
}

/// The base an adapter stage trains against, in `dtype`: the recipe's `[model] package`
/// dequantized exactly as `andes eval --model PKG` runs it (refused unless the package was
/// made from the recipe's checkpoint, by the sha256 of its config.json), else the float
/// checkpoint.
pub fn load_base(
    recipe: &Recipe,
    device: &Device,
    dtype: DType,
) -> Result<(ModelConfig, Model), TrainError> {
    let Some(package) = &recipe.model.package else {
        return Ok(Model::load(&recipe.model.checkpoint, device, dtype)?);
    };
    let loaded = andes_package::load_package(package, device, dtype)?;
    let config = recipe.model.checkpoint.join("config.json");
    let expected = file_sha256(&config)?;
    let made_from = loaded.manifest.source.get("config_sha256");
    if made_from != Some(&expected) {
        return Err(TrainError::WrongModel {
            path: package.join(andes_package::MANIFEST_FILE),
            message: format!(
                "the package was made from a model whose config.json has sha256 {}, but the \
                 recipe's checkpoint {} has {expected}; quantize the recipe's checkpoint, or \
                 name the checkpoint the package came from",
                made_from.map_or("(none recorded)", String::as_str),
                recipe.model.checkpoint.display()
            ),
        });
    }
    Ok(loaded.into_model())
}

/// Readies `model` for an adapter stage: quantized (`qalft`, GPTQ calibrated on
/// `calibration`, the run's training windows, in batches of `batch_size`) and with the
/// stage's adapter attached and active; on resume, the adapter and scales of `checkpoint`
/// loaded into it. An adapter that starts at the quantization residual ([`LoraInit`]) measures
/// it against the float model: `model` itself before `qalft` quantizes it, or the checkpoint
/// `package_source` the package base was made from.
pub fn prepare(
    model: &mut Qwen3ForCausalLM,
    sections: AdapterSections<'_>,
    (batch_size, calibration): (usize, Option<&WindowSet>),
    checkpoint: Option<&Path>,
    package_source: Option<&Path>,
) -> Result<Option<QuantizationSummary>, TrainError> {
    let lora = sections.lora;
    let residual_start = lora.init == LoraInit::QuantizationResidual && checkpoint.is_none();
    let float = match (residual_start, package_source) {
        (false, _) => None,
        (true, Some(path)) => {
            let device = model.devices()[0].clone();
            Some(
                Model::load(path, &device, DType::F32)?
                    .1
                    .into_language_model(),
            )
        }
        (true, None) => Some(model.clone()),
    };
    // GPTQ and the residual start weigh by the same Hessians, of the float model over the
    // same windows: one calibration serves both.
    let gptq = sections
        .quant
        .is_some_and(|quant| quant.init == PtqMethod::Gptq);
    let hessians = match calibration {
        Some(set) if gptq || float.is_some() => {
            let windows = sections
                .quant
                .map_or(CALIBRATION_WINDOWS, |quant| quant.calibration_windows);
            let reference = float.as_ref().unwrap_or(model);
            Some(calibrate_windows(reference, set, windows, batch_size)?)
        }
        _ => None,
    };
    let summary = match sections.quant {
        Some(quant) => Some(quantize_base_by(
            model,
            &quant.base_quantization(),
            hessians.as_ref(),
        )?),
        None => None,
    };
    match (checkpoint, float) {
        (Some(dir), _) => {
            import_peft_adapter(model, dir, &lora.name)?;
            if sections.learns_scales() {
                load_scales(model, &dir.join(SCALES_FILE))?;
            }
        }
        // Without windows no linear has a Hessian, and the first one's error names it.
        (None, Some(float)) => model.add_adapter_at_quantization_residual(
            &lora.name,
            &lora.config(),
            &float,
            &hessians.unwrap_or_default(),
        )?,
        (None, None) => model.add_adapter(&lora.name, &lora.config())?,
    }
    model.set_active_adapter(Some(&lora.name))?;
    Ok(summary)
}

/// The package an adapter run trains against (the recipe's `[model] package`), hashed when
/// the run starts, so its checkpoints name the base they were trained on.
pub fn trained_against(recipe: &Recipe) -> Result<Option<TrainedAgainst>, TrainError> {
    let Some(package) = &recipe.model.package else {
        return Ok(None);
    };
    Ok(Some(TrainedAgainst {
        package: package.display().to_string(),
        package_sha256: package_sha256(package)?,
    }))
}

/// Writes the trainable state of an adapter stage into checkpoint directory `dir`: the adapter
/// in the PEFT layout (naming `base`, the float checkpoint it adapts), the package it was
/// trained against when there is one ([`TRAINED_AGAINST_FILE`]) and, when they train, the
/// grid's scales.
pub fn save(
    model: &Qwen3ForCausalLM,
    sections: AdapterSections<'_>,
    base: &Path,
    trained_against: Option<&TrainedAgainst>,
    dir: &Path,
) -> Result<(), TrainError> {
    let base = base.display().to_string();
    export_peft_adapter(model, &sections.lora.name, dir, &base)?;
    if let Some(trained) = trained_against {
        let json = serde_json::to_vec_pretty(trained).expect("serializes");
        write_atomically(&dir.join(TRAINED_AGAINST_FILE), &json)?;
    }
    if sections.learns_scales() {
        save_scales(model, &dir.join(SCALES_FILE))?;
    }
    Ok(())
}

/// A finished (or interrupted) adapter run, rebuilt: its recipe, its latest checkpoint, and
/// the model as training left it (base quantized per the recipe, adapter loaded and active).
pub struct AdapterRun {
    /// The run's resolved recipe.
    pub recipe: Recipe,
    /// The adapter (the `[lora]` of `recipe.stage`).
    pub lora: LoraSection,
    /// The base's quantization (the `[quant]` of `recipe.stage`), for `qalft` runs.
    pub quant: Option<QuantSection>,
    /// The checkpoint the adapter came from.
    pub checkpoint: PathBuf,
    /// Base + adapter.
    pub model: Qwen3ForCausalLM,
    /// What quantizing the base gave, for `qalft` runs.
    pub quantization: Option<QuantizationSummary>,
}

/// The latest verified checkpoint of adapter run `run_dir` (a `lora` or `qalft` run of `andes
/// train`) and the run's recipe; refused, naming the key, for a run that trains the whole
/// model.
pub fn adapter_checkpoint(run_dir: &Path) -> Result<(PathBuf, Recipe), TrainError> {
    let checkpoint = crate::checkpoint::latest(run_dir)?;
    let recipe_path = checkpoint.join(crate::checkpoint::RECIPE_FILE);
    let recipe = Recipe::load(&recipe_path, &[])?;
    if recipe.stage.adapter().is_none() {
        return Err(TrainError::Recipe {
            path: recipe_path,
            key: "stage".into(),
            message: format!(
                "stage {} trains the whole model; its checkpoints are model directories, not \
                 adapters",
                recipe.stage.name()
            ),
        });
    }
    Ok((checkpoint, recipe))
}

/// Rebuilds the model of adapter run `run_dir` (a `lora` or `qalft` run of `andes train`) on
/// `device`, from its latest verified checkpoint.
pub fn load_adapter_run(run_dir: &Path, device: &Device) -> Result<AdapterRun, TrainError> {
    let (checkpoint, recipe) = adapter_checkpoint(run_dir)?;
    let sections = recipe.stage.adapter().expect("an adapter run");
    let (_, model) = load_base(&recipe, device, DType::F32)?;
    let Model::Text(mut model) = model else {
        return Err(TrainError::text_only(&recipe));
    };
    // Only GPTQ needs the training data again, for the same calibration windows.
    let calibration = match sections.quant {
        Some(quant) if quant.init == PtqMethod::Gptq => {
            let tokenizer =
                andes_data::TextTokenizer::from_file(&checkpoint.join("tokenizer.json"))?;
            let source = recipe.data.primary();
            Some(WindowSet::load(&source.path, &recipe.data.windowing(source), &tokenizer)?.0)
        }
        _ => None,
    };
    let batch_size = recipe.train.batch_size;
    let quantization = prepare(
        &mut model,
        sections,
        (batch_size, calibration.as_ref()),
        Some(&checkpoint),
        None,
    )?;
    let (lora, quant) = (sections.lora.clone(), sections.quant.cloned());
    Ok(AdapterRun {
        recipe,
        lora,
        quant,
        checkpoint,
        model,
        quantization,
    })
}
