//! `andes quantize`: the mobile package of a float model for a target under a bits-per-weight
//! budget (or an edited plan): parse the flags, call [`andes_package::quantize_model`], print.

use std::path::PathBuf;

use andes_model::quantize::PtqMethod;
use andes_model::sensitivity::SensitivityMeasure;
use andes_package::{Calibration, PlanSource, QuantizeParams, quantize_model};
use clap::Args;

use crate::model_args::ModelArgs;

/// Arguments of `andes quantize`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("budget").required(true).args(["bpw", "plan"]))]
pub struct QuantizeArgs {
    /// The float model: a Hugging Face directory of a Qwen3, or of an AndesVL model (its
    /// language model is quantized, the vision tower and projector stay float); where
    /// calibration and the sensitivity passes run, and the dtype the model is loaded in
    /// (f32; bf16 halves the memory of a bf16 checkpoint, whose values it keeps exactly).
    #[command(flatten)]
    model: ModelArgs,
    /// Target: dimensity9500, generic-cpu, snapdragon8elite, or a profile TOML file.
    #[arg(long)]
    target: String,
    /// Budget: average bits per weight over the quantized linears, scales and zeros counted.
    #[arg(long)]
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
    /// `hessian` sensitivity) see visual tokens too; the forward sensitivities stay on text.
    #[arg(long, requires = "calib")]
    calib_images: Option<PathBuf>,
    /// Image-text records of --calib-images used.
    #[arg(long, default_value_t = 32)]
    calib_image_records: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Sensitivity measure: `divergence` (mean KL divergence from the float model's next-token
    /// distributions, one forward pass per linear and format, the float model's
    /// log-probabilities of the calibration set kept meanwhile, up to 4 GiB), `loss`
    /// (increase of the calibration loss, the same passes; noise can make it negative) or
    /// `hessian` (importance-weighted weight error, no forward passes: for large models).
    #[arg(long, default_value = "divergence")]
    sensitivity: SensitivityMeasure,
    /// Quantizer applying the plan: rtn or gptq.
    #[arg(long, default_value = "gptq")]
    init: PtqMethod,
    /// Context length of the cost model's KV-cache figures.
    #[arg(long, default_value_t = 4096)]
    context: u64,
    /// Directory of the sensitivity cache (default: $ANDES_CACHE, else ~/.cache/andes).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Only the summary, as JSON (no table).
    #[arg(long)]
    json: bool,
    /// Package directory to write (must not exist).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `andes quantize`.
pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let plan = match (args.bpw, args.plan) {
        (Some(bpw), _) => PlanSource::Budget(bpw),
        (None, Some(path)) => PlanSource::File(path),
        (None, None) => unreachable!("clap requires --bpw or --plan"),
    };
    let (device, dtype) = args.model.runtime.resolve()?;
    let params = QuantizeParams {
        target: args.target,
        plan,
        calibration: args.calib.map(|text| Calibration {
            text,
            windows: args.calib_windows,
            seq_len: args.seq_len,
            images: args
                .calib_images
                .map(|file| (file, args.calib_image_records)),
        }),
        sensitivity: args.sensitivity,
        method: args.init,
        context: args.context,
        cache: args.cache.unwrap_or_else(default_cache),
        device,
        dtype,
        model: args.model.model,
        out: args.out,
    };
    let report = quantize_model(&params)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}{report}", report.linear_table());
        println!("done in {:.1} s", report.seconds);
    }
    Ok(())
}

/// `$ANDES_CACHE`, else `~/.cache/andes`, else the temporary directory's `andes-cache`.
fn default_cache() -> PathBuf {
    std::env::var_os("ANDES_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/andes")))
        .unwrap_or_else(|| std::env::temp_dir().join("andes-cache"))
}
