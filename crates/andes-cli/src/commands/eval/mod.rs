//! `andes eval`: perplexity of a text file (as it stands, or as the one-document-per-line
//! stream `andes train` reads), or of the assistant turns of conversations; of
//! the model as given, or post-training quantized (RTN or GPTQ) the way llama.cpp users
//! measure a quantization with `llama-perplexity`; or accuracy on a task file, as
//! lm-evaluation-harness measures it.

use std::path::PathBuf;

use andes_data::TextTokenizer;
use andes_model::evaluate::{EvalInput, EvalParams, EvalQuantization, evaluate};
use andes_model::quantize::{BaseFormats, BaseQuantization, PtqMethod};
use andes_quant::QuantFormat;
use clap::Args;

use crate::model_args::{AdapterArgs, ModelArgs};

mod streaming;
mod task;

use streaming::{StreamingArgs, run_streaming};
use task::{TaskArgs, run_task};

/// Arguments of `andes eval`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["text", "documents", "chat", "task"]))]
#[command(group = clap::ArgGroup::new("quantization").args(["quant", "plan"]))]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
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
    /// Task JSONL of questions with known answers: multiple choice (`choices`, `answer`
    /// index) scored by each option's log-likelihood, or generation (`answer` text or number)
    /// scored on the greedy completion; `images` for an AndesVL model. Prints accuracy with
    /// its standard error.
    #[arg(long, conflicts_with = "quantization")]
    task: Option<PathBuf>,
    #[command(flatten)]
    task_options: TaskArgs,
    /// Quantize every linear to this format first (e.g. int2-g64-asym).
    #[arg(long)]
    quant: Option<QuantFormat>,
    /// Quantize per this bit plan (bit_plan.json) first.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Post-training quantizer for --quant/--plan: rtn or gptq.
    #[arg(long, default_value = "rtn")]
    init: PtqMethod,
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
    /// for --text and --documents or windows for --chat; for --task: questions, accuracy and
    /// accuracy_norm with their stderr, and every answer).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    streaming: StreamingArgs,
}

/// Runs `andes eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.streaming.runtime {
        return run_streaming(&args);
    }
    let mut loaded = args.model.load(&args.adapter)?;
    let tokenizer = TextTokenizer::from_model_dir(&loaded.files_dir)?;
    if let Some(path) = &args.task {
        return run_task(&args, path, &loaded, &tokenizer);
    }
    let input = match (args.text, args.documents, args.chat) {
        (Some(path), _, _) => EvalInput::Text(path),
        (_, Some(path), _) => EvalInput::Documents(path),
        (_, _, Some(path)) => EvalInput::Chat(path),
        _ => unreachable!("clap requires --text, --documents, --chat or --task"),
    };
    let formats = match (args.quant, args.plan) {
        (Some(format), _) => Some(BaseFormats::Uniform(format)),
        (None, Some(plan)) => Some(BaseFormats::Plan(plan)),
        (None, None) => None,
    };
    let params = EvalParams {
        input,
        window: args.window,
        stride: args.stride,
        quantization: formats.map(|formats| EvalQuantization {
            base: BaseQuantization {
                formats,
                method: args.init,
                learn_scales: false,
                calibration_windows: args.calib_windows,
            },
            calibration: args.calib,
        }),
    };
    let report = evaluate(
        loaded.model.language_model_mut(),
        loaded.config.text_config(),
        &tokenizer,
        &params,
    )?;
    let bpw = report.bpw_linears.or(loaded.package_bpw);
    if args.json {
        let mut json = report.json;
        json["bpw_linears"] = serde_json::json!(bpw);
        println!("{json}");
    } else {
        println!("{}", report.summary);
        if let Some(bpw) = bpw {
            println!("quantized linears: {bpw:.4} bpw (scales and zero points counted)");
        }
    }
    Ok(())
}
