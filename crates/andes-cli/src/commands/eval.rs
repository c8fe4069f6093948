//! `andes eval`: perplexity of a text file (as it stands, or as the one-document-per-line
//! stream `andes train` reads), or of the assistant turns of conversations; of
//! the model as given, or post-training quantized (RTN or GPTQ) the way llama.cpp users
//! measure a quantization with `llama-perplexity`; or accuracy on a task file, as
//! lm-evaluation-harness measures it.

use std::path::PathBuf;

use andes_data::TextTokenizer;
use andes_data::dataset::load_task;
use andes_model::evaluate::{EvalInput, EvalParams, EvalQuantization, evaluate};
use andes_model::quantize::{BaseFormats, BaseQuantization, PtqMethod};
use andes_model::task::{Score, TaskOptions, evaluate_task};
use andes_quant::QuantFormat;
use andes_runtime::{KvBudget, Runtime, streaming_nll};
use anyhow::Context;
use clap::Args;

use crate::model_args::{AdapterArgs, LoadedModel, ModelArgs};

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

/// How `--task` puts its questions.
#[derive(Args, Debug)]
pub struct TaskArgs {
    /// Put each question as a user turn of the model's chat template (its default generation
    /// prompt, as lm-evaluation-harness's --apply_chat_template), options and completions as
    /// the reply (a thinking block dropped); otherwise the prompt as it stands, options after
    /// a space, completions cut at their first newline.
    #[arg(long, requires = "task")]
    apply_chat_template: bool,
    /// Longest completion of a generation question, in tokens.
    #[arg(long, default_value_t = 32, requires = "task")]
    max_new_tokens: usize,
}

/// Streaming evaluation on the CPU runtime: what KV-cache eviction costs.
#[derive(Args, Debug)]
pub struct StreamingArgs {
    /// Score --text on the runtime one token at a time with one growing cache (no windows),
    /// as decoding reads it; reports the most KV bytes held.
    #[arg(long, requires = "text", conflicts_with_all = ["quantization", "window", "stride"])]
    runtime: bool,
    /// With --runtime: keep at most this many KV entries per layer.
    #[arg(long, requires = "runtime")]
    kv_budget: Option<usize>,
    /// With --kv-budget: `attention` (OKV-style: the least attended go, first tokens and the
    /// newest quarter kept) or `recent` (a recent window only).
    #[arg(long, value_enum, default_value_t = KvPolicy::Attention, requires = "kv_budget")]
    kv_policy: KvPolicy,
    /// With --runtime: score only the first this many tokens.
    #[arg(long, requires = "runtime")]
    max_tokens: Option<usize>,
}

/// Which KV entries `--kv-budget` evicts.
#[derive(clap::ValueEnum, serde::Serialize, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum KvPolicy {
    /// The least attended, first tokens and the newest quarter kept.
    Attention,
    /// The oldest: a recent window only.
    Recent,
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

/// `--task`: the model's accuracy on the task file's questions.
fn run_task(
    args: &EvalArgs,
    path: &std::path::Path,
    loaded: &LoadedModel,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<()> {
    let records = load_task(path)?;
    let options = TaskOptions {
        chat: args.task_options.apply_chat_template,
        max_new_tokens: args.task_options.max_new_tokens,
    };
    let report = evaluate_task(
        (&loaded.model, &loaded.config, &loaded.files_dir),
        tokenizer,
        &records,
        options,
        &loaded.device,
    )
    .with_context(|| format!("scoring {}", path.display()))?;
    if args.json {
        let out = serde_json::json!({
            "questions": records.len(),
            "accuracy": report.accuracy,
            "accuracy_norm": report.accuracy_norm,
            "bpw_linears": loaded.package_bpw,
            "answers": report.answers,
        });
        println!("{out}");
    } else {
        let show = |score: &Score| match score.stderr {
            Some(stderr) => format!("{:.4} ± {stderr:.4}", score.mean),
            None => format!("{:.4}", score.mean),
        };
        let norm = report
            .accuracy_norm
            .map(|score| format!(", per-character {}", show(&score)))
            .unwrap_or_default();
        println!(
            "{}: {} questions, accuracy {}{norm}",
            path.display(),
            records.len(),
            show(&report.accuracy)
        );
    }
    Ok(())
}

/// `--runtime`: the text's mean NLL read one token at a time on the runtime, under the budget.
fn run_streaming(args: &EvalArgs) -> anyhow::Result<()> {
    let streaming = &args.streaming;
    let mut runtime = Runtime::load(&args.model.model)?;
    runtime.use_adapter(args.adapter.adapter.as_deref())?;
    let tokenizer = TextTokenizer::from_model_dir(&runtime.files_dir)?;
    let path = args
        .text
        .as_ref()
        .expect("clap requires --text with --runtime");
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut ids = tokenizer.encode(&text)?;
    ids.truncate(streaming.max_tokens.unwrap_or(ids.len()));
    let budget = streaming.kv_budget.map(|n| match streaming.kv_policy {
        KvPolicy::Attention => KvBudget::new(n),
        KvPolicy::Recent => KvBudget::recent_only(n),
    });
    let report = streaming_nll(&runtime.decoder, &ids, budget)?;
    if args.json {
        let out = serde_json::json!({
            "mean_nll": report.mean_nll,
            "perplexity": report.mean_nll.exp(),
            "tokens": report.tokens,
            "kv_budget": streaming.kv_budget,
            "kv_policy": streaming.kv_budget.map(|_| streaming.kv_policy),
            "kv_bytes_peak": report.kv_bytes_peak,
            "kv_bytes_without_eviction": report.kv_bytes_without_eviction,
        });
        println!("{out}");
    } else {
        println!(
            "perplexity {:.4} over {} tokens, KV cache at most {:.1} KiB ({:.1} KiB without eviction)",
            report.mean_nll.exp(),
            report.tokens,
            report.kv_bytes_peak as f64 / 1024.0,
            report.kv_bytes_without_eviction as f64 / 1024.0
        );
    }
    Ok(())
}
