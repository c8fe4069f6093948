//! `andes eval`: perplexity of a text file.

use std::path::PathBuf;

use andes_data::TextTokenizer;
use andes_model::perplexity::sliding_window_perplexity;
use anyhow::Context;
use clap::Args;

use crate::model_args::ModelArgs;

/// Arguments of `andes eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Plain-text file, scored as one token sequence.
    #[arg(long)]
    text: PathBuf,
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

/// Runs `andes eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.text)
        .with_context(|| format!("reading text file {}", args.text.display()))?;
    let loaded = args.model.load()?;
    let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
    let ids = tokenizer.encode(&text)?;
    let window = args
        .window
        .unwrap_or(loaded.config.max_position_embeddings.min(1024));
    if window > loaded.config.max_position_embeddings {
        anyhow::bail!(
            "--window {window} exceeds the model's max_position_embeddings {}",
            loaded.config.max_position_embeddings
        );
    }
    let stride = args.stride.unwrap_or((window / 2).max(1));
    let result = sliding_window_perplexity(&loaded.model, &ids, window, stride, &loaded.device)
        .with_context(|| format!("scoring {}", args.text.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: {} tokens, mean NLL {:.6} nats, perplexity {:.4} (window {}, stride {})",
            args.text.display(),
            result.tokens,
            result.mean_nll,
            result.perplexity,
            result.window,
            result.stride
        );
    }
    Ok(())
}
