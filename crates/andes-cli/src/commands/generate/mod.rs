//! `andes generate`: complete a prompt. A package or a bundle runs on the CPU runtime, from
//! its packed codes (`--reference`: dequantized on Burn, as every other command runs it); a
//! checkpoint runs on Burn (`--runtime`: on the runtime, its linears in f32).

use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_data::chat::END_OF_TURN;
use andes_model::ModelConfig;
use andes_model::completion::{Prompt, Thinking, chat_prompt, complete};
use andes_model::device::replays_graphs;
use andes_model::generate::{Decoding, GenerationRequest, eos_token_ids};
use anyhow::Context;
use clap::Args;

use crate::model_args::{AdapterArgs, ModelArgs};

mod runtime;

/// Arguments of `andes generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// The prompt, tokenized as-is unless --chat wraps it in the ChatML template; `<image>`
    /// marks where each --image goes (all images go first when there is none).
    #[arg(long)]
    prompt: String,
    /// An image (PNG, JPEG, WebP) for an AndesVL model; repeat for several.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
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
    /// Render the prompt as one user turn of the model's chat template (Qwen3's; a released
    /// AndesVL checkpoint's own prompt for one) and stop at <|im_end|>.
    #[arg(long)]
    chat: bool,
    /// With --chat: open the reply with an empty <think> block, Qwen3's switch for answering
    /// without thinking (`enable_thinking=False`).
    #[arg(long, requires = "chat", conflicts_with = "think")]
    no_thinking: bool,
    /// With --chat on a released AndesVL checkpoint: open the reply with <think>, as its
    /// Thinking models are prompted (its Instruct models answer directly, the default).
    #[arg(long, requires = "chat")]
    think: bool,
    /// Print one JSON object: token_ids (new tokens only), text, timings.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: runtime::EngineArgs,
}

/// Runs `andes generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.temperature.is_nan() || args.temperature <= 0.0 {
        anyhow::bail!("--temperature must be > 0, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.engine.chosen(&args.model.model)? {
        return runtime::run(&args);
    }
    let mut request = GenerationRequest {
        max_new_tokens: args.max_new_tokens,
        decoding: decoding(&args),
        stop_tokens: Vec::new(),
        replay: replays_graphs(&args.model.runtime.device),
    };
    // The model first: a wrong directory is reported by its config.json.
    let loaded = args.model.load(&args.adapter)?;
    let dir = &loaded.files_dir;
    if !args.images.is_empty() && loaded.config.andesvl().is_none() {
        anyhow::bail!(
            "--image needs an AndesVL model directory (config.json with model_type \
             \"andesvl\"); {} holds a text-only model",
            args.model.model.display()
        );
    }
    let prompt = render_prompt(&args, &loaded.config)?;
    let tokenizer = TextTokenizer::from_model_dir(dir)?;
    request.stop_tokens = stop_tokens(&args, dir, loaded.config.text_config(), &tokenizer)?;
    let start = Instant::now();
    let prompt = Prompt {
        text: prompt,
        images: args.images.clone(),
    };
    let completion = complete(
        (&loaded.model, &loaded.config, dir),
        &tokenizer,
        &prompt,
        &request,
        &loaded.device,
    )?;
    let (prompt_tokens, ids) = (completion.prompt_tokens, completion.token_ids);
    let prompt = prompt.text;
    let seconds = start.elapsed().as_secs_f64();
    let text = tokenizer.decode(&ids)?;
    if args.json {
        let report = serde_json::json!({
            "token_ids": ids,
            "text": text,
            "prompt_tokens": prompt_tokens,
            "images": args.images,
            "seconds": seconds,
        });
        println!("{report}");
    } else {
        println!("{prompt}{text}");
    }
    Ok(())
}

/// The prompt as the model takes it: as given, or one user turn of its chat template.
fn render_prompt(args: &GenerateArgs, config: &ModelConfig) -> anyhow::Result<String> {
    if !args.chat {
        return Ok(args.prompt.clone());
    }
    let (thinking, flags) = match (args.no_thinking, args.think) {
        (true, _) => (Thinking::Off, "--chat --no-thinking"),
        (_, true) => (Thinking::Open, "--chat --think"),
        _ => (Thinking::Default, "--chat"),
    };
    chat_prompt(config, &args.prompt, thinking)
        .with_context(|| format!("{flags} on {}", args.model.model.display()))
}

/// The config's end-of-sequence ids, and `<|im_end|>` with --chat.
fn stop_tokens(
    args: &GenerateArgs,
    dir: &Path,
    config: &andes_model::qwen3::Qwen3Config,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<Vec<u32>> {
    let mut stops = eos_token_ids(dir, config)?;
    if args.chat {
        stops.extend(tokenizer.token_id(END_OF_TURN));
    }
    Ok(stops)
}

fn decoding(args: &GenerateArgs) -> Decoding {
    if args.greedy {
        Decoding::Greedy
    } else {
        Decoding::Sample {
            temperature: args.temperature,
            top_k: (args.top_k > 0).then_some(args.top_k),
            top_p: (args.top_p < 1.0).then_some(args.top_p),
            seed: args.seed,
        }
    }
}
