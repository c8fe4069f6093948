//! `andes eval`: perplexity of a text file, or of the assistant turns of conversations; of
//! the model as given, or post-training quantized (RTN or GPTQ) the way llama.cpp users
//! measure a quantization with `llama-perplexity`.

use std::path::PathBuf;

use andes_data::TextTokenizer;
use andes_data::dataset::DataFormat;
use andes_model::perplexity::sliding_window_perplexity;
use andes_model::quantize::{Initializer, calibrate, linear_names, quantize_base};
use andes_quant::{BitPlan, QuantFormat};
use andes_train::data::WindowSet;
use andes_train::recipe::DataSection;
use andes_train::trainer::evaluate;
use anyhow::Context;
use burn::tensor::{Int, Tensor};
use clap::Args;

use crate::model_args::{LoadedModel, ModelArgs};

/// Arguments of `andes eval`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["text", "chat"]))]
#[command(group = clap::ArgGroup::new("quantization").args(["quant", "plan"]))]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Plain-text file, scored as one token sequence.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Conversations JSONL (`messages`), scored on the assistant turns only, packed into
    /// windows of --window tokens: the task metric of an SFT or LoRA model.
    #[arg(long)]
    chat: Option<PathBuf>,
    /// Quantize every linear to this format first (e.g. int2-g64-asym).
    #[arg(long)]
    quant: Option<QuantFormat>,
    /// Quantize per this bit plan (bit_plan.json) first.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Post-training quantizer for --quant/--plan: rtn or gptq.
    #[arg(long, default_value = "rtn", value_parser = parse_initializer)]
    init: Initializer,
    /// Plain-text calibration file for GPTQ (its first --calib-windows windows of --window
    /// tokens).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration windows for GPTQ.
    #[arg(long, default_value_t = 32)]
    calib_windows: usize,
    /// Tokens of context per forward pass (default: min(max_position_embeddings, 1024)).
    #[arg(long)]
    window: Option<usize>,
    /// Tokens the window advances (default: half the window).
    #[arg(long)]
    stride: Option<usize>,
    /// Print one JSON object (tokens, scored_tokens, mean_nll, perplexity, window, stride).
    #[arg(long)]
    json: bool,
}

fn parse_initializer(value: &str) -> Result<Initializer, String> {
    match value {
        "rtn" => Ok(Initializer::Rtn),
        "gptq" => Ok(Initializer::Gptq),
        other => Err(format!("found {other:?}, expected rtn or gptq")),
    }
}

/// Runs `andes eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut loaded = args.model.load()?;
    let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
    let window = args
        .window
        .unwrap_or(loaded.config.max_position_embeddings.min(1024));
    if window > loaded.config.max_position_embeddings {
        anyhow::bail!(
            "--window {window} exceeds the model's max_position_embeddings {}",
            loaded.config.max_position_embeddings
        );
    }
    let bpw = quantize(&args, &mut loaded, &tokenizer, window)?;
    if let Some(chat) = &args.chat {
        let section = DataSection {
            format: DataFormat::Chat,
            train: chat.clone(),
            eval: None,
            seq_len: window,
            skip_bad_records: false,
        };
        let (set, _) = WindowSet::load(chat, &section, &tokenizer)?;
        let mean_nll = evaluate(&loaded.model, &set, 8)?;
        let result = serde_json::json!({
            "file": chat.display().to_string(),
            "windows": set.packed.windows.len(),
            "mean_nll": mean_nll,
            "perplexity": mean_nll.exp(),
            "bpw_linears": bpw,
        });
        println!("{result}");
        return Ok(());
    }
    let text_path = args.text.as_ref().expect("clap requires --text or --chat");
    let text = std::fs::read_to_string(text_path)
        .with_context(|| format!("reading text file {}", text_path.display()))?;
    let ids = tokenizer.encode(&text)?;
    let stride = args.stride.unwrap_or((window / 2).max(1));
    let result = sliding_window_perplexity(&loaded.model, &ids, window, stride, &loaded.device)
        .with_context(|| format!("scoring {}", text_path.display()))?;
    if let Some(bpw) = bpw {
        eprintln!("quantized linears: {bpw:.4} bpw (scales and zero points counted)");
    }
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: {} tokens, mean NLL {:.6} nats, perplexity {:.4} (window {}, stride {})",
            text_path.display(),
            result.tokens,
            result.mean_nll,
            result.perplexity,
            result.window,
            result.stride
        );
    }
    Ok(())
}

/// Quantizes the loaded model per --quant or --plan (calibrating GPTQ on --calib); returns the
/// bpw over the quantized linears.
fn quantize(
    args: &EvalArgs,
    loaded: &mut LoadedModel,
    tokenizer: &TextTokenizer,
    window: usize,
) -> anyhow::Result<Option<f64>> {
    let (plan, source) = match (&args.quant, &args.plan) {
        (Some(format), _) => (
            BitPlan::uniform(&linear_names(&loaded.model), *format),
            "--quant".to_string(),
        ),
        (None, Some(path)) => (BitPlan::read(path)?, path.display().to_string()),
        (None, None) => return Ok(None),
    };
    let hessians = match args.init {
        Initializer::Rtn => None,
        Initializer::Gptq => {
            let calib = args
                .calib
                .as_ref()
                .context("--init gptq needs --calib TEXT_FILE")?;
            let text = std::fs::read_to_string(calib)
                .with_context(|| format!("reading calibration file {}", calib.display()))?;
            let ids = tokenizer.encode(&text)?;
            let batches: Vec<Tensor<2, Int>> = ids
                .chunks_exact(window)
                .take(args.calib_windows)
                .map(|w| andes_model::generate::token_tensor(w, &loaded.device))
                .collect();
            anyhow::ensure!(
                !batches.is_empty(),
                "{}: fewer than {window} tokens, no calibration window",
                calib.display()
            );
            Some(calibrate(&loaded.model, &batches)?)
        }
    };
    let reports = quantize_base(
        &mut loaded.model,
        &plan,
        &source,
        args.init,
        hessians.as_ref(),
        false,
    )?;
    let total = reports
        .iter()
        .map(|r| r.bpw)
        .reduce(|a, b| a.combine(&b))
        .expect("a Qwen3 has linears");
    Ok(Some(total.bpw))
}
