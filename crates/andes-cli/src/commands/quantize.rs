//! `andes quantize`: measure each linear's sensitivity on calibration data, allocate formats
//! under a bits-per-weight budget within what a target executes, quantize (RTN or GPTQ) and
//! write the mobile package, with the plan as JSON, a table and a heatmap, and the cost model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_data::dataset::DataFormat;
use andes_model::andesvl::{AndesVL, AndesVLConfig, load_andesvl};
use andes_model::checkpoint::load_qwen3;
use andes_model::device::parse_device;
use andes_model::quantize::{
    CalibrationInput, Initializer, calibrate, calibrate_diagonal, linear_shapes, quantize_base,
    token_inputs,
};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use andes_model::sensitivity::{LayerSensitivity, loss_sensitivities, sensitivities};
use andes_package::{PackageInput, PackageManifest, format_bpw, plan_heatmap_svg, write_package};
use andes_quant::{
    BitPlan, COST_FORMULAS, Choice, CostEstimate, LayerChoices, ModelShape, PLAN_VERSION,
    PlanEntry, QuantFormat, TargetProfile, allocate, estimate,
};
use andes_train::data::{WindowSet, to_batch};
use andes_train::objective::image_text_embeddings;
use andes_train::recipe::DataSection;
use anyhow::{Context, bail};
use burn::tensor::DType;
use clap::Args;
use sha2::{Digest, Sha256};

use super::eval::parse_initializer;

/// Profiles shipped in the binary, by name (`configs/targets/NAME.toml`).
const BUILTIN_TARGETS: [(&str, &str); 3] = [
    (
        "dimensity9500",
        include_str!("../../../../configs/targets/dimensity9500.toml"),
    ),
    (
        "generic-cpu",
        include_str!("../../../../configs/targets/generic-cpu.toml"),
    ),
    (
        "snapdragon8elite",
        include_str!("../../../../configs/targets/snapdragon8elite.toml"),
    ),
];

/// Arguments of `andes quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Float Hugging Face model directory: Qwen3, or AndesVL (its language model is quantized,
    /// the vision tower and projector stay float).
    #[arg(long)]
    model: PathBuf,
    /// Target: dimensity9500, generic-cpu, snapdragon8elite, or a profile TOML file.
    #[arg(long)]
    target: String,
    /// Budget: average bits per weight over the quantized linears, scales and zeros counted.
    #[arg(long, conflicts_with = "plan")]
    bpw: Option<f64>,
    /// Apply this (edited) bit_plan.json instead of planning.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Plain-text calibration data (sensitivity and GPTQ).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration windows used.
    #[arg(long, default_value_t = 32)]
    calib_windows: usize,
    /// AndesVL only: image-text records (JSONL of `{"image", "caption"}` or of conversations
    /// with `"images"`) added to the calibration, so the language model's Hessians (GPTQ, the
    /// `hessian` sensitivity) see visual tokens too; the `loss` sensitivity stays on text.
    #[arg(long)]
    calib_images: Option<PathBuf>,
    /// Image-text records of --calib-images used.
    #[arg(long, default_value_t = 32)]
    calib_image_records: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Sensitivity measure: `loss` (increase of the calibration loss, one forward pass per
    /// linear and format) or `hessian` (importance-weighted weight error, no forward passes:
    /// for large models).
    #[arg(long, default_value = "loss", value_parser = ["loss", "hessian"])]
    sensitivity: String,
    /// Quantizer applying the plan: rtn or gptq.
    #[arg(long, default_value = "gptq", value_parser = parse_initializer)]
    init: Initializer,
    /// Context length of the cost model's KV-cache figures.
    #[arg(long, default_value_t = 4096)]
    context: u64,
    /// Directory of the sensitivity cache (default: $ANDES_CACHE, else ~/.cache/andes).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Device for calibration and the sensitivity passes: cpu, cuda[:N], wgpu[:N] (GPU
    /// backends need their build feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Only the summary, as JSON (no table).
    #[arg(long)]
    json: bool,
    /// Package directory to write (must not exist).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `andes quantize`.
pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let target = resolve_target(&args.target)?;
    if args.bpw.is_none() && args.plan.is_none() {
        bail!("give a budget (--bpw B) or a plan to apply (--plan bit_plan.json)");
    }
    if let Some(bpw) = args.bpw
        && !(bpw.is_finite() && bpw > 0.0)
    {
        bail!("--bpw must be a positive number, got {bpw}");
    }
    if args.out.exists() {
        bail!("{}: already exists; choose a new --out", args.out.display());
    }
    let device = parse_device(&args.device)?;
    // An AndesVL model: its language model is planned and quantized (calibrated on text),
    // its vision tower and projector ship in the target's float precision.
    let (config, mut model, vision) = if AndesVLConfig::is_andesvl(&args.model.join("config.json"))
    {
        let (andesvl_config, andesvl) = load_andesvl(&args.model, &device, DType::F32)
            .with_context(|| format!("loading model {}", args.model.display()))?;
        let (vision, language_model) = andesvl.into_parts();
        let text_config = andesvl_config.text_config.clone();
        (text_config, language_model, Some((vision, andesvl_config)))
    } else {
        let (config, model) = load_qwen3(&args.model, &device, DType::F32)
            .with_context(|| format!("loading model {}", args.model.display()))?;
        (config, model, None)
    };
    let needs_calibration = args.plan.is_none() || args.init == Initializer::Gptq;
    let (batches, hessians) = if needs_calibration {
        let calib = args.calib.as_ref().context(
            "--calib TEXT_FILE is needed: sensitivities (planning) and GPTQ calibrate on it",
        )?;
        let tokenizer = TextTokenizer::from_model_dir(&args.model)?;
        let section = DataSection {
            format: DataFormat::Text,
            train: calib.clone(),
            eval: None,
            seq_len: args.seq_len,
            skip_bad_records: false,
        };
        let (set, _) = WindowSet::load(calib, &section, &tokenizer)
            .with_context(|| format!("calibration file {}", calib.display()))?;
        let windows: Vec<_> = set.packed.windows.iter().take(args.calib_windows).collect();
        let batches: Vec<_> = windows
            .chunks(8)
            .map(|chunk| to_batch(chunk, &device).inputs)
            .collect();
        let mut inputs = token_inputs(&batches);
        if let Some(file) = &args.calib_images {
            let Some((vision, andesvl_config)) = &vision else {
                bail!(
                    "--calib-images calibrates AndesVL models; {} is a text model",
                    args.model.display()
                );
            };
            let andesvl = AndesVL::from_parts(vision.clone(), model.clone());
            let embeddings = image_text_embeddings(
                &andesvl,
                andesvl_config,
                &args.model,
                &tokenizer,
                file,
                args.seq_len,
                args.calib_image_records,
            )
            .with_context(|| format!("calibration images {}", file.display()))?;
            inputs.extend(embeddings.into_iter().map(CalibrationInput::Embeddings));
        }
        // GPTQ needs full input Hessians; the importance-weighted sensitivity only diagonals.
        let hessians = if args.init == Initializer::Rtn && args.sensitivity == "hessian" {
            calibrate_diagonal(&model, &inputs)?
        } else {
            calibrate(&model, &inputs)?
        };
        (batches, Some(hessians))
    } else {
        (Vec::new(), None)
    };

    let plan = match &args.plan {
        Some(path) => {
            let plan = BitPlan::read(path)?;
            check_allowed(&plan, &target, path)?;
            plan
        }
        None => {
            let hessians = hessians.as_ref().expect("planning calibrates");
            let layers = cached_sensitivities(&args, &model, &target, hessians, &batches)?;
            plan_for_budget(&layers, &target, args.bpw.expect("checked"))?
        }
    };
    let shapes = linear_shapes(&model);
    let planned_bits: u64 = plan
        .layers
        .iter()
        .zip(&shapes)
        .map(|(entry, (_, shape))| andes_quant::bits_per_weight(entry.format, *shape).total_bits())
        .sum();
    let linear_weights: u64 = shapes.iter().map(|(_, s)| s.numel() as u64).sum();
    let vision_params = vision
        .as_ref()
        .map_or(0, |(v, _)| burn::module::Module::num_params(v) as u64);
    let float_params =
        burn::module::Module::num_params(&model) as u64 - linear_weights + vision_params;
    let float_bytes = float_params * target.unquantized.precision.bytes();
    let planned = estimate(
        &target,
        planned_bits / 8 + float_bytes,
        model_shape(&config),
        args.context,
    );
    if !planned.fits {
        bail!(
            "the model does not fit {}: weights {:.1} MiB + KV cache at {} tokens {:.1} MiB = \
             {:.1} MiB > {:.1} MiB the profile allows (memory_gib); lower --bpw or --context",
            target.name,
            mib(planned.weight_bytes),
            args.context,
            mib(planned.kv_cache_bytes),
            mib(planned.weight_bytes + planned.kv_cache_bytes),
            mib(planned.memory_bytes)
        );
    }

    quantize_base(
        &mut model,
        &plan,
        &args
            .plan
            .as_ref()
            .map_or("planner".into(), |p| p.display().to_string()),
        args.init,
        hessians.as_ref(),
        false,
    )?;
    let bpw_of = |name: &str, format: QuantFormat| {
        let shape = shapes.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
        shape.map_or(0.0, |s| format_bpw(format, s.out_features, s.in_features))
    };
    let heatmap = plan_heatmap_svg(&plan, &bpw_of);
    let calib_sha = match &args.calib {
        Some(path) => Some(file_sha256(path)?),
        None => None,
    };
    let manifest = write_package(
        &args.out,
        &PackageInput {
            source_dir: &args.model,
            model: &model,
            vision: vision.as_ref().map(|(v, c)| (v, c)),
            plan: &plan,
            target: &target,
            quantization: serde_json::json!({
                "init": match args.init { Initializer::Rtn => "rtn", Initializer::Gptq => "gptq" },
                "budget_bpw": args.bpw,
                "plan": args.plan,
                "calibration": args.calib,
                "calibration_sha256": calib_sha,
                "calibration_windows": args.calib_windows,
                "calibration_images": args.calib_images,
                "calibration_image_records": args.calib_images.as_ref().map(|_| args.calib_image_records),
                "sensitivity": args.sensitivity,
                "seq_len": args.seq_len,
            }),
            extra_files: vec![("bit_plan.svg".into(), heatmap.into_bytes())],
        },
    )?;
    let cost = package_cost(&manifest, &config, args.context);
    if args.json {
        println!("{}", summary_json(&args.out, &manifest, &cost, started));
    } else {
        print_plan_table(&plan, &bpw_of);
        print_summary(&args.out, &manifest, &cost);
        println!("done in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// A built-in profile by name, or a profile file.
pub(crate) fn resolve_target(target: &str) -> anyhow::Result<TargetProfile> {
    if let Some((name, text)) = BUILTIN_TARGETS.iter().find(|(name, _)| *name == target) {
        return Ok(TargetProfile::parse(
            text,
            &format!("configs/targets/{name}.toml (built in)"),
        )?);
    }
    let path = Path::new(target);
    if !path.exists() {
        let names: Vec<&str> = BUILTIN_TARGETS.iter().map(|(n, _)| *n).collect();
        bail!(
            "--target {target}: neither a built-in target ({}) nor a profile file",
            names.join(", ")
        );
    }
    Ok(TargetProfile::read(path)?)
}

/// Every format of an applied plan must be one the target allows.
fn check_allowed(plan: &BitPlan, target: &TargetProfile, path: &Path) -> anyhow::Result<()> {
    let allowed = target.formats();
    for entry in &plan.layers {
        if !allowed.contains(&entry.format) {
            let names: Vec<String> = allowed.iter().map(|f| f.to_string()).collect();
            bail!(
                "{}: layer `{}` uses {}, which target {} does not allow (allowed: {})",
                path.display(),
                entry.name,
                entry.format,
                target.name,
                names.join(", ")
            );
        }
    }
    Ok(())
}

/// Sensitivities of every linear in the target's formats, read from the cache when this
/// model, calibration and format list were measured before.
fn cached_sensitivities(
    args: &QuantizeArgs,
    model: &Qwen3ForCausalLM,
    target: &TargetProfile,
    hessians: &std::collections::BTreeMap<String, andes_quant::Hessian>,
    windows: &[burn::tensor::Tensor<2, burn::tensor::Int>],
) -> anyhow::Result<Vec<LayerSensitivity>> {
    let formats = target.formats();
    let mut key = Sha256::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.model)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                || p.file_name().is_some_and(|n| n == "config.json")
        })
        .collect();
    files.sort();
    files.extend(args.calib.clone());
    files.extend(args.calib_images.clone());
    for file in &files {
        key.update(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    }
    key.update(format!(
        "{formats:?} {} {} {}",
        args.calib_windows, args.seq_len, args.calib_image_records
    ));
    let key = format!("{:x}", key.finalize());
    let dir = args
        .cache
        .clone()
        .or_else(|| std::env::var_os("ANDES_CACHE").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/andes")))
        .unwrap_or_else(|| std::env::temp_dir().join("andes-cache"));
    let path = dir.join(format!("sensitivity-{}.json", &key[..16]));
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(layers) = serde_json::from_str::<Vec<LayerSensitivity>>(&text)
    {
        eprintln!("sensitivities: cached in {}", path.display());
        return Ok(layers);
    }
    let start = Instant::now();
    let layers = match args.sensitivity.as_str() {
        "hessian" => sensitivities(model, hessians, &formats)?,
        _ => loss_sensitivities(model, windows, &formats)?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    andes_model::checkpoint::write_atomically(&path, &serde_json::to_vec(&layers)?)?;
    eprintln!(
        "sensitivities ({}): {} linears × {} formats in {:.1} s, cached in {}",
        args.sensitivity,
        layers.len(),
        formats.len(),
        start.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(layers)
}

/// The allocation solver's plan for `bpw` over the quantized linears.
fn plan_for_budget(
    layers: &[LayerSensitivity],
    target: &TargetProfile,
    bpw: f64,
) -> anyhow::Result<BitPlan> {
    let choices: Vec<LayerChoices> = layers
        .iter()
        .map(|layer| LayerChoices {
            name: layer.name.clone(),
            weights: (layer.out_features * layer.in_features) as u64,
            options: layer
                .formats
                .iter()
                .map(|f| Choice {
                    format: f.format,
                    bits: f.bits,
                    sensitivity: f.sensitivity,
                })
                .collect(),
        })
        .collect();
    let weights: u64 = choices.iter().map(|c| c.weights).sum();
    let budget_bits = (bpw * weights as f64).floor() as u64;
    let allocation =
        allocate(&choices, budget_bits).with_context(|| format!("target {}", target.name))?;
    Ok(BitPlan {
        version: PLAN_VERSION,
        target: Some(target.name.clone()),
        budget_bpw: Some(bpw),
        layers: choices
            .iter()
            .zip(&allocation.choices)
            .map(|(layer, &c)| PlanEntry {
                name: layer.name.clone(),
                format: layer.options[c].format,
                sensitivity: Some(layer.options[c].sensitivity),
            })
            .collect(),
    })
}

/// The cost model's view of a Qwen3 configuration.
pub(crate) fn model_shape(config: &Qwen3Config) -> ModelShape {
    let (h, layers) = (config.hidden_size as u64, config.num_hidden_layers as u64);
    let attention = h
        * config.head_dim as u64
        * (2 * config.num_attention_heads as u64 + 2 * config.num_key_value_heads as u64);
    let mlp = 3 * h * config.intermediate_size as u64;
    let head = config.vocab_size as u64 * h;
    ModelShape {
        active_params: layers * (attention + mlp) + head,
        layers,
        kv_heads: config.num_key_value_heads as u64,
        head_dim: config.head_dim as u64,
    }
}

/// The cost estimate of a written package.
pub(crate) fn package_cost(
    manifest: &PackageManifest,
    config: &Qwen3Config,
    context: u64,
) -> CostEstimate {
    let w = &manifest.weights;
    let bytes = w.quantized_bytes + w.float_bytes + w.vision_bytes;
    estimate(&manifest.target, bytes, model_shape(config), context)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(bytes)))
}

fn print_plan_table(plan: &BitPlan, bpw_of: &dyn Fn(&str, QuantFormat) -> f64) {
    println!("| layer | format | bpw | sensitivity |");
    println!("|---|---|---|---|");
    for entry in &plan.layers {
        println!(
            "| {} | {} | {:.3} | {} |",
            entry.name,
            entry.format,
            bpw_of(&entry.name, entry.format),
            entry.sensitivity.map_or("—".into(), |s| format!("{s:.4e}"))
        );
    }
}

/// Sizes, bpw both ways, and the cost model, for `quantize` and `inspect`.
pub(crate) fn print_summary(dir: &Path, manifest: &PackageManifest, cost: &CostEstimate) {
    let w = &manifest.weights;
    println!("package {} for {}", dir.display(), manifest.target.name);
    println!(
        "  bpw over the quantized linears (scales, zeros counted): {:.4}   bpw of the whole \
         weight payload (embeddings, norms, headers included): {:.4}",
        w.bpw_linears, w.bpw_package
    );
    println!(
        "  quantized linears: {} weights in {:.2} MiB; other parameters: {} in {:.2} MiB",
        w.linear_weights,
        mib(w.quantized_bytes),
        w.float_parameters,
        mib(w.float_bytes)
    );
    if w.vision_parameters > 0 {
        println!(
            "  vision tower and projector (float): {} parameters in {:.2} MiB",
            w.vision_parameters,
            mib(w.vision_bytes)
        );
    }
    println!(
        "  estimate on {}: weights {:.1} MiB + KV cache at {} tokens {:.1} MiB of {:.0} MiB \
         ({}); decode ≤ {:.1} tok/s; prefill ≤ {:.0} tok/s",
        manifest.target.name,
        mib(cost.weight_bytes),
        cost.context,
        mib(cost.kv_cache_bytes),
        mib(cost.memory_bytes),
        if cost.fits { "fits" } else { "does NOT fit" },
        cost.decode_tokens_per_s,
        cost.prefill_tokens_per_s
    );
    println!("  ({COST_FORMULAS})");
}

/// The same as one JSON object; `bpw` is the average over the quantized linears.
pub(crate) fn summary_json(
    dir: &Path,
    manifest: &PackageManifest,
    cost: &CostEstimate,
    started: Instant,
) -> serde_json::Value {
    serde_json::json!({
        "package": dir.display().to_string(),
        "target": manifest.target.name,
        "bpw": manifest.weights.bpw_linears,
        "bpw_package": manifest.weights.bpw_package,
        "weights": manifest.weights,
        "cost_estimate": cost,
        "cost_formulas": COST_FORMULAS,
        "seconds": started.elapsed().as_secs_f64(),
    })
}
