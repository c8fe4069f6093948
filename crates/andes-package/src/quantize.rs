//! The quantization pipeline behind `andes quantize`: calibrate a float model on text (and,
//! for AndesVL, on image-text records), measure each linear's sensitivity to the target's
//! formats (cached), choose a format per linear under the bits-per-weight budget, quantize
//! (RTN or GPTQ), and write the package with its plan, heatmap and cost estimate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_data::dataset::{WindowSet, Windowing};
use andes_model::andesvl::rows::image_text_embeddings;
use andes_model::batch::calibration_batches;
use andes_model::quantize::{
    CalibrationInput, GRID_PLAN_FILE, PtqMethod, calibrate, calibrate_diagonal, has_grid,
    linear_shapes, load_grid, quantize_base, table_shapes, token_inputs,
};
use andes_model::qwen3::Qwen3ForCausalLM;
use andes_model::sensitivity::{
    LayerSensitivity, SensitivityMeasure, forward_sensitivities, sensitivities,
};
use andes_model::{Model, ModelConfig};
use andes_quant::{
    BitPlan, Hessian, LayerChoices, PackedWeights, TargetProfile, WeightShape, bits_per_weight,
    estimate,
};
use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor};
use sha2::{Digest, Sha256};

use crate::error::PackageError;
use crate::heatmap::{format_bpw, plan_heatmap_svg};
use crate::package::{PackageInput, write_package};
use crate::report::PackageReport;

/// Calibration windows a GPTQ or sensitivity batch holds.
const CALIBRATION_BATCH: usize = 8;

/// How the plan is found: fitted to a budget, or given.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanSource {
    /// Average bits per weight over the quantized linears, scales and zeros counted.
    Budget(f64),
    /// A `bit_plan.json` to apply (edited by hand, or from another package).
    File(PathBuf),
}

/// The calibration data.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Plain-text file (sensitivities and GPTQ).
    pub text: PathBuf,
    /// Windows of it used.
    pub windows: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// AndesVL only: image-text records (captions or conversations with images) added to the
    /// Hessians, and how many of them.
    pub images: Option<(PathBuf, usize)>,
}

/// Everything `andes quantize` needs.
#[derive(Debug, Clone)]
pub struct QuantizeParams {
    /// Float Hugging Face model directory (Qwen3 or AndesVL).
    pub model: PathBuf,
    /// A built-in target name or a profile file.
    pub target: String,
    /// Budget or plan.
    pub plan: PlanSource,
    /// Calibration data; needed unless a plan is applied with RTN.
    pub calibration: Option<Calibration>,
    /// How sensitivities are measured.
    pub sensitivity: SensitivityMeasure,
    /// The quantizer applying the plan.
    pub method: PtqMethod,
    /// Context length of the cost model's KV-cache figures.
    pub context: u64,
    /// Directory of the sensitivity cache.
    pub cache: PathBuf,
    /// Where calibration and sensitivity passes run.
    pub device: Device,
    /// The dtype the model is loaded and run in (calibration statistics are kept in f32).
    pub dtype: DType,
    /// Package directory to write (must not exist).
    pub out: PathBuf,
}

/// Quantizes `params.model` per `params` and writes the package; returns what it holds.
pub fn quantize_model(params: &QuantizeParams) -> Result<PackageReport, PackageError> {
    let started = Instant::now();
    let target = TargetProfile::resolve(&params.target)?;
    if params.out.exists() {
        return Err(PackageError::io(
            &params.out,
            "already exists; choose a new output directory",
        ));
    }
    if let PlanSource::Budget(bpw) = params.plan
        && !(bpw.is_finite() && bpw > 0.0)
    {
        return Err(PackageError::Params {
            field: "bpw".into(),
            message: format!("must be a positive number, got {bpw}"),
        });
    }
    let trained_grid = has_grid(&params.model);
    if trained_grid && let PlanSource::Budget(_) = params.plan {
        return Err(PackageError::Params {
            field: "plan".into(),
            message: format!(
                "{} was trained through its own quantization grid (stage qat): pack it with the \
                 plan it trained on, --plan {}",
                params.model.display(),
                params.model.join(GRID_PLAN_FILE).display()
            ),
        });
    }
    let (config, model) = Model::load(&params.model, &params.device, params.dtype)?;
    let (mut model, vision) = match model {
        Model::Text(model) => (model, None),
        Model::VisionLanguage(andesvl) => {
            let (vision, language_model) = andesvl.into_parts();
            (language_model, Some(vision))
        }
    };
    let calibrated = calibrate_model(params, trained_grid, &config, &model, vision.as_ref())?;
    let plan = match &params.plan {
        PlanSource::File(path) => {
            let plan = BitPlan::read(path)?;
            check_allowed(&plan, &target, path)?;
            plan
        }
        PlanSource::Budget(bpw) => {
            let Some((batches, hessians)) = &calibrated else {
                unreachable!("planning calibrates")
            };
            let layers = cached_sensitivities(params, &model, &target, hessians, batches)?;
            let choices: Vec<LayerChoices> = layers.iter().map(LayerSensitivity::choices).collect();
            BitPlan::for_budget(&choices, &target.name, *bpw)?
        }
    };
    let shapes = linear_shapes(&model);
    check_fits(
        params,
        &config,
        &model,
        &shapes,
        vision.as_ref(),
        &target,
        &plan,
    )?;

    let plan_label = match &params.plan {
        PlanSource::File(path) => path.display().to_string(),
        PlanSource::Budget(_) => "planner".into(),
    };
    if trained_grid {
        // The codes are the grid's rounding of the trained weights: what training computed.
        let trained = load_grid(&mut model, &params.model, false)?;
        check_trained_formats(&plan, &trained, &plan_label)?;
    } else {
        let hessians = calibrated.as_ref().map(|(_, hessians)| hessians);
        quantize_base(
            &mut model,
            &plan,
            &plan_label,
            params.method,
            hessians,
            false,
        )?;
    }
    let shapes = linear_shapes(&model);
    let bpw_of = |name: &str, format| {
        let shape = shapes.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
        shape.map_or(0.0, |s| format_bpw(format, s.out_features, s.in_features))
    };
    let heatmap = plan_heatmap_svg(&plan, &bpw_of);
    let andesvl = config.andesvl();
    let manifest = write_package(
        &params.out,
        &PackageInput {
            source_dir: &params.model,
            model: &model,
            vision: vision.as_ref().zip(andesvl),
            plan: &plan,
            target: &target,
            quantization: quantization_record(params, trained_grid)?,
            extra_files: vec![("bit_plan.svg".into(), heatmap.into_bytes())],
        },
    )?;
    Ok(PackageReport::new(
        &params.out,
        manifest,
        plan,
        config.text_config(),
        &shapes,
        params.context,
        None,
        started,
    ))
}

/// Calibration token batches and every linear's input Hessian, when planning or GPTQ needs
/// them (full Hessians for GPTQ, diagonals suffice for the `hessian` sensitivity).
#[allow(clippy::type_complexity)]
fn calibrate_model(
    params: &QuantizeParams,
    trained_grid: bool,
    config: &ModelConfig,
    model: &Qwen3ForCausalLM,
    vision: Option<&andes_model::andesvl::VisionSide>,
) -> Result<Option<(Vec<Tensor<2, Int>>, BTreeMap<String, Hessian>)>, PackageError> {
    let planning = matches!(params.plan, PlanSource::Budget(_));
    if !planning && (params.method == PtqMethod::Rtn || trained_grid) {
        return Ok(None);
    }
    let calibration = params
        .calibration
        .as_ref()
        .ok_or_else(|| PackageError::Params {
            field: "calib".into(),
            message: "a calibration text file is needed: sensitivities (planning) and GPTQ \
                  calibrate on it"
                .into(),
        })?;
    let tokenizer = TextTokenizer::from_model_dir(&params.model)?;
    let (set, _) = WindowSet::load(
        &calibration.text,
        &Windowing::text(calibration.seq_len),
        &tokenizer,
    )?;
    let batches = calibration_batches(&set, calibration.windows, CALIBRATION_BATCH, &params.device);
    let mut inputs = token_inputs(&batches);
    if let Some((file, records)) = &calibration.images {
        let (Some(vision), Some(andesvl_config)) = (vision, config.andesvl()) else {
            return Err(PackageError::Params {
                field: "calib_images".into(),
                message: format!(
                    "image-text calibration calibrates AndesVL models; {} is a text model",
                    params.model.display()
                ),
            });
        };
        let andesvl = andes_model::andesvl::AndesVL::from_parts(vision.clone(), model.clone());
        let embeddings = image_text_embeddings(
            &andesvl,
            andesvl_config,
            &params.model,
            &tokenizer,
            file,
            calibration.seq_len,
            *records,
        )?;
        inputs.extend(embeddings.into_iter().map(CalibrationInput::Embeddings));
    }
    let hessians =
        if params.method == PtqMethod::Rtn && params.sensitivity == SensitivityMeasure::Hessian {
            calibrate_diagonal(model, &inputs)?
        } else {
            calibrate(model, &inputs)?
        };
    Ok(Some((batches, hessians)))
}

/// Every format of an applied plan must be one the target runs.
fn check_allowed(plan: &BitPlan, target: &TargetProfile, path: &Path) -> Result<(), PackageError> {
    let allowed = target.formats();
    match plan.layers.iter().find(|e| !allowed.contains(&e.format)) {
        None => Ok(()),
        Some(entry) => {
            let names: Vec<String> = allowed.iter().map(|f| f.to_string()).collect();
            Err(PackageError::Corrupt {
                path: path.to_owned(),
                message: format!(
                    "layer `{}` uses {}, which target {} does not allow (allowed: {})",
                    entry.name,
                    entry.format,
                    target.name,
                    names.join(", ")
                ),
            })
        }
    }
}

/// The planned weights and the KV cache at `params.context` must fit the target's memory.
fn check_fits(
    params: &QuantizeParams,
    config: &ModelConfig,
    model: &Qwen3ForCausalLM,
    shapes: &[(String, WeightShape)],
    vision: Option<&andes_model::andesvl::VisionSide>,
    target: &TargetProfile,
    plan: &BitPlan,
) -> Result<(), PackageError> {
    let layers = || {
        plan.layers
            .iter()
            .zip(shapes)
            .map(|(e, (_, s))| (e.format, *s))
    };
    let planned_bits: u64 = layers()
        .map(|(format, shape)| bits_per_weight(format, shape).total_bits())
        .sum();
    let linear_weights: u64 = shapes.iter().map(|(_, s)| s.numel() as u64).sum();
    let vision_params = vision.map_or(0, |v| v.num_params() as u64);
    let tables = match &target.tables {
        Some(tables) => table_shapes(config.text_config())
            .into_iter()
            .map(|(_, shape)| bits_per_weight(tables.format, shape))
            .collect(),
        None => Vec::new(),
    };
    let table_params: u64 = tables.iter().map(|bits| bits.weights).sum();
    let table_bits: u64 = tables.iter().map(|bits| bits.total_bits()).sum();
    let float_params = model.num_params() as u64 - linear_weights - table_params + vision_params;
    let float_bytes = float_params * target.unquantized.precision.bytes();
    let cost = estimate(
        target,
        PackedWeights::new(
            target,
            (planned_bits + table_bits) / 8 + float_bytes,
            layers(),
            target.head_kind(),
        ),
        config.text_config().cost_shape(),
        params.context,
    );
    if cost.fits {
        return Ok(());
    }
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    Err(PackageError::DoesNotFit(format!(
        "the model does not fit {}: weights {:.1} MiB in memory + KV cache at {} tokens {:.1} MiB = \
         {:.1} MiB > {:.1} MiB the profile allows (memory_gib); lower the bpw or the context",
        target.name,
        mib(cost.resident_weight_bytes),
        params.context,
        mib(cost.kv_cache_bytes),
        mib(cost.resident_weight_bytes + cost.kv_cache_bytes),
        mib(cost.memory_bytes)
    )))
}

/// How the package was made, for its manifest.
/// A QAT checkpoint packs only with the formats it trained through: `plan` must give each
/// linear the format of `trained`, the checkpoint's own plan.
fn check_trained_formats(
    plan: &BitPlan,
    trained: &BitPlan,
    plan_label: &str,
) -> Result<(), PackageError> {
    let names: Vec<String> = trained.layers.iter().map(|l| l.name.clone()).collect();
    let given = plan.formats_for(&names, plan_label)?;
    for layer in &trained.layers {
        if given[&layer.name] != layer.format {
            return Err(PackageError::Params {
                field: "plan".into(),
                message: format!(
                    "{plan_label} gives `{}` {}, but the checkpoint trained it through {}; a QAT \
                     checkpoint packs with the plan it trained on",
                    layer.name, given[&layer.name], layer.format
                ),
            });
        }
    }
    Ok(())
}

fn quantization_record(
    params: &QuantizeParams,
    trained_grid: bool,
) -> Result<serde_json::Value, PackageError> {
    let calibration = params.calibration.as_ref();
    let calibration_sha = calibration
        .map(|c| andes_model::checkpoint::file_sha256(&c.text))
        .transpose()?;
    let images = calibration.and_then(|c| c.images.as_ref());
    Ok(serde_json::json!({
        "init": if trained_grid { "qat-grid".to_string() } else { params.method.to_string() },
        "budget_bpw": match params.plan { PlanSource::Budget(bpw) => Some(bpw), _ => None },
        "plan": match &params.plan { PlanSource::File(path) => Some(path), _ => None },
        "calibration": calibration.map(|c| &c.text),
        "calibration_sha256": calibration_sha,
        "calibration_windows": calibration.map(|c| c.windows),
        "calibration_images": images.map(|(file, _)| file),
        "calibration_image_records": images.map(|(_, records)| records),
        "sensitivity": params.sensitivity,
        "seq_len": calibration.map(|c| c.seq_len),
    }))
}

/// Sensitivities of every linear in the target's formats, read from the cache when this
/// model, calibration and format list were measured before.
fn cached_sensitivities(
    params: &QuantizeParams,
    model: &Qwen3ForCausalLM,
    target: &TargetProfile,
    hessians: &BTreeMap<String, Hessian>,
    windows: &[Tensor<2, Int>],
) -> Result<Vec<LayerSensitivity>, PackageError> {
    let formats = target.formats();
    // The measure names the file: the key is what every measure's values depend on.
    let path = params.cache.join(format!(
        "sensitivity-{}-{}.json",
        params.sensitivity,
        &cache_key(params, &formats)?[..16]
    ));
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(layers) = serde_json::from_str::<Vec<LayerSensitivity>>(&text)
    {
        eprintln!("sensitivities: cached in {}", path.display());
        return Ok(layers);
    }
    let start = Instant::now();
    let layers = match params.sensitivity {
        SensitivityMeasure::Hessian => sensitivities(model, hessians, &formats)?,
        measure => forward_sensitivities(model, windows, &formats, measure)?,
    };
    std::fs::create_dir_all(&params.cache).map_err(|e| PackageError::io(&params.cache, e))?;
    let json = serde_json::to_vec(&layers).expect("sensitivities serialize");
    andes_model::checkpoint::write_atomically(&path, &json)?;
    eprintln!(
        "sensitivities ({}): {} linears × {} formats in {:.1} s, cached in {}",
        params.sensitivity,
        layers.len(),
        formats.len(),
        start.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(layers)
}

/// What the sensitivities depend on: the model's weights and config, the calibration files
/// and how much of them is read, and the formats.
fn cache_key(
    params: &QuantizeParams,
    formats: &[andes_quant::QuantFormat],
) -> Result<String, PackageError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&params.model)
        .map_err(|e| PackageError::io(&params.model, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                || p.file_name().is_some_and(|n| n == "config.json")
        })
        .collect();
    files.sort();
    let calibration = params.calibration.as_ref();
    files.extend(calibration.map(|c| c.text.clone()));
    files.extend(calibration.and_then(|c| c.images.as_ref().map(|(file, _)| file.clone())));
    let mut key = Sha256::new();
    for file in &files {
        key.update(std::fs::read(file).map_err(|e| PackageError::io(file, e))?);
    }
    key.update(format!(
        "{formats:?} {} {} {}",
        calibration.map_or(0, |c| c.windows),
        calibration.map_or(0, |c| c.seq_len),
        calibration
            .and_then(|c| c.images.as_ref())
            .map_or(0, |(_, records)| *records)
    ));
    Ok(format!("{:x}", key.finalize()))
}
