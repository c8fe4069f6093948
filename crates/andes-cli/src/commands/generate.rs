//! `andes generate`: complete a prompt.

use std::path::Path;
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_data::chat::{END_OF_TURN, Role, render_for_generation};
use andes_model::generate::{Decoding, GenerationRequest, generate};
use anyhow::Context;
use clap::Args;

use crate::model_args::ModelArgs;

/// Arguments of `andes generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt, tokenized as-is unless --chat wraps it in the ChatML template.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Pick the most likely token at every step (otherwise sample).
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature (> 0).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample among the k most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample within the smallest set of tokens reaching this probability (1: no limit).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Render the prompt as one user turn of the Qwen3 chat template and stop at <|im_end|>.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object: token_ids (new tokens only), text, timings.
    #[arg(long)]
    json: bool,
}

/// Runs `andes generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.temperature.is_nan() || args.temperature <= 0.0 {
        anyhow::bail!("--temperature must be > 0, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let loaded = args.model.load()?;
    let tokenizer = TextTokenizer::from_model_dir(&args.model.model)?;
    let prompt = if args.chat {
        render_for_generation(&[(Role::User, &args.prompt)])
    } else {
        args.prompt.clone()
    };
    let prompt_ids = tokenizer.encode(&prompt)?;
    let mut stop_tokens = eos_token_ids(&args.model.model, &loaded.config)?;
    if args.chat {
        stop_tokens.extend(tokenizer.token_id(END_OF_TURN));
    }
    let decoding = if args.greedy {
        Decoding::Greedy
    } else {
        Decoding::Sample {
            temperature: args.temperature,
            top_k: (args.top_k > 0).then_some(args.top_k),
            top_p: (args.top_p < 1.0).then_some(args.top_p),
            seed: args.seed,
        }
    };
    let request = GenerationRequest {
        max_new_tokens: args.max_new_tokens,
        decoding,
        stop_tokens,
    };
    let start = Instant::now();
    let ids = generate(&loaded.model, &prompt_ids, &request, &loaded.device)?;
    let seconds = start.elapsed().as_secs_f64();
    let text = tokenizer.decode(&ids)?;
    if args.json {
        let report = serde_json::json!({
            "token_ids": ids,
            "text": text,
            "prompt_tokens": prompt_ids.len(),
            "seconds": seconds,
        });
        println!("{report}");
    } else {
        println!("{prompt}{text}");
    }
    Ok(())
}

/// End-of-sequence ids: `generation_config.json`'s if present, else `config.json`'s.
fn eos_token_ids(dir: &Path, config: &andes_model::qwen3::Qwen3Config) -> anyhow::Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let ids = match &json["eos_token_id"] {
            serde_json::Value::Null => None,
            value => Some(
                serde_json::from_value::<andes_model::qwen3::EosTokenIds>(value.clone())
                    .with_context(|| {
                        format!(
                            "{}: key `eos_token_id`: expected a token id or a list of ids",
                            path.display()
                        )
                    })?,
            ),
        };
        if let Some(ids) = ids {
            return Ok(ids.to_vec());
        }
    }
    Ok(config
        .eos_token_id
        .as_ref()
        .map(|ids| ids.to_vec())
        .unwrap_or_default())
}
