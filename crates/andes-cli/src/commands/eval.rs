//! `andes eval`: perplexity of a text file (as it stands, or as the one-document-per-line
//! stream `andes train` reads), or of the assistant turns of conversations; of
//! the model as given, or post-training quantized (RTN or GPTQ) the way llama.cpp users
//! measure a quantization with `llama-perplexity`.

use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use andes_data::dataset::{DataFormat, load_sequences};
use andes_model::perplexity::sliding_window_perplexity;
use andes_model::quantize::Initializer;
use andes_quant::QuantFormat;
use andes_train::adapters;
use andes_train::data::{END_OF_TEXT, WindowSet};
use andes_train::objective::mean_nll;
use andes_train::recipe::{DataSection, QuantSection};
use anyhow::Context;
use clap::Args;

use crate::model_args::{LoadedModel, ModelArgs};

/// Arguments of `andes eval`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["text", "documents", "chat"]))]
#[command(group = clap::ArgGroup::new("quantization").args(["quant", "plan"]))]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Plain-text file, scored as one token sequence.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Plain-text file of one document a line, each ended by <|endoftext|>, as `andes train`
    /// reads a `text` data file: the held-out perplexity of a pretraining run (a model
    /// pretrained on such a file never sees its newlines). Scored like --text.
    #[arg(long)]
    documents: Option<PathBuf>,
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
    /// tokens, documents packed as in training).
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
    /// Print one JSON object (mean_nll, perplexity, bpw_linears, and tokens, window, stride
    /// for --text and --documents or windows for --chat).
    #[arg(long)]
    json: bool,
}

pub(crate) fn parse_initializer(value: &str) -> Result<Initializer, String> {
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
    let (mut result, summary) = match (&args.chat, &args.text) {
        (Some(chat), _) => {
            let section = DataSection {
                format: DataFormat::Chat,
                train: chat.clone(),
                eval: None,
                seq_len: window,
                skip_bad_records: false,
            };
            let (set, _) = WindowSet::load(chat, &section, &tokenizer)?;
            let mean_nll = mean_nll(&loaded.model, &set, 8)?;
            let summary = format!(
                "{}: assistant tokens of {} windows, mean NLL {mean_nll:.6} nats, perplexity {:.4}",
                chat.display(),
                set.packed.windows.len(),
                mean_nll.exp()
            );
            let result = serde_json::json!({
                "windows": set.packed.windows.len(),
                "mean_nll": mean_nll,
                "perplexity": mean_nll.exp(),
            });
            (result, summary)
        }
        (None, text) => {
            let (text_path, ids) = match (text, &args.documents) {
                (Some(path), _) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading text file {}", path.display()))?;
                    (path, tokenizer.encode(&text)?)
                }
                (None, Some(path)) => (path, document_stream(path, &tokenizer)?),
                (None, None) => unreachable!("clap requires --text, --documents or --chat"),
            };
            let stride = args.stride.unwrap_or((window / 2).max(1));
            let result =
                sliding_window_perplexity(&loaded.model, &ids, window, stride, &loaded.device)
                    .with_context(|| format!("scoring {}", text_path.display()))?;
            let summary = format!(
                "{}: {} tokens, mean NLL {:.6} nats, perplexity {:.4} (window {}, stride {})",
                text_path.display(),
                result.tokens,
                result.mean_nll,
                result.perplexity,
                result.window,
                result.stride
            );
            (serde_json::to_value(&result)?, summary)
        }
    };
    let bpw = bpw.or(loaded.package_bpw);
    if args.json {
        result["bpw_linears"] = serde_json::json!(bpw);
        println!("{result}");
    } else {
        println!("{summary}");
        if let Some(bpw) = bpw {
            println!("quantized linears: {bpw:.4} bpw (scales and zero points counted)");
        }
    }
    Ok(())
}

/// The tokens of `path`'s lines, each line a document ended by <|endoftext|>, in file order:
/// the stream `andes train` packs from a `text` data file.
fn document_stream(path: &Path, tokenizer: &TextTokenizer) -> anyhow::Result<Vec<u32>> {
    let end_of_text = tokenizer
        .token_id(END_OF_TEXT)
        .with_context(|| format!("the tokenizer has no {END_OF_TEXT} token"))?;
    let (documents, _) = load_sequences(path, DataFormat::Text, tokenizer, end_of_text, false)?;
    Ok(documents.into_iter().flat_map(|d| d.ids).collect())
}

/// Quantizes the loaded model per --quant or --plan (calibrating GPTQ on --calib), as a
/// `qalft` recipe's `[quant]` would; returns the bpw over the quantized linears.
fn quantize(
    args: &EvalArgs,
    loaded: &mut LoadedModel,
    tokenizer: &TextTokenizer,
    window: usize,
) -> anyhow::Result<Option<f64>> {
    if args.quant.is_none() && args.plan.is_none() {
        return Ok(None);
    }
    let section = QuantSection {
        format: args.quant,
        plan: args.plan.clone(),
        init: args.init,
        learn_scales: false,
        calibration_windows: args.calib_windows,
    };
    let calibration = match (args.init, &args.calib) {
        (Initializer::Rtn, _) => None,
        (Initializer::Gptq, None) => anyhow::bail!("--init gptq needs --calib TEXT_FILE"),
        (Initializer::Gptq, Some(calib)) => {
            let data = DataSection {
                format: DataFormat::Text,
                train: calib.clone(),
                eval: None,
                seq_len: window,
                skip_bad_records: false,
            };
            Some(WindowSet::load(calib, &data, tokenizer)?.0)
        }
    };
    let summary = adapters::quantize(&mut loaded.model, &section, calibration.as_ref(), 8)?;
    Ok(Some(summary.bpw_linears))
}
