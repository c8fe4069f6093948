//! `andes generate`: complete a prompt. A package or a bundle runs on the CPU runtime, from
//! its packed codes (`--reference`: dequantized on Burn, as every other command runs it); a
//! checkpoint runs on Burn (`--runtime`: on the runtime, its linears in f32).

use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_data::chat::{ChatMessage, END_OF_TURN, Role, render_andesvl, render_for_generation};
use andes_model::ModelConfig;
use andes_model::andesvl::AndesVLLayout;
use andes_model::completion::{Prompt, complete};
use andes_model::device::replays_graphs;
use andes_model::generate::{Decoding, GenerationRequest, eos_token_ids};
use andes_package::{is_package, is_package_bundle};
use andes_runtime::{KvBudget, RunRequest, Runtime, Speculation, prompt_inputs};
use clap::Args;

use crate::model_args::{AdapterArgs, ModelArgs};

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
    engine: EngineArgs,
}

/// Which engine runs the model, and the runtime's levers.
#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Run a package or bundle dequantized on Burn instead of on the runtime.
    #[arg(long, conflicts_with = "runtime")]
    reference: bool,
    /// Run a checkpoint on the runtime (its linears in f32) instead of on Burn.
    #[arg(long)]
    runtime: bool,
    /// Runtime: keep at most this many KV entries per layer, evicting the least attended
    /// (OKV-style; the first 4 positions and the newest quarter are always kept).
    #[arg(long)]
    kv_budget: Option<usize>,
    /// Runtime: speculative decoding by prompt lookup, proposing up to this many tokens a step.
    #[arg(long)]
    speculate: Option<usize>,
    /// Runtime: threads of the products (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs `andes generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    if args.temperature.is_nan() || args.temperature <= 0.0 {
        anyhow::bail!("--temperature must be > 0, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let on_runtime = if args.engine.reference {
        false
    } else {
        args.engine.runtime || is_package(&args.model.model) || is_package_bundle(&args.model.model)
    };
    if on_runtime {
        return run_on_runtime(&args);
    }
    if args.engine.kv_budget.is_some() || args.engine.speculate.is_some() {
        anyhow::bail!(
            "--kv-budget and --speculate are levers of the runtime (not with --reference)"
        );
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

/// Generates on the CPU runtime and reports its speed.
fn run_on_runtime(args: &GenerateArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.engine.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    let mut runtime = Runtime::load(&args.model.model)?;
    runtime.use_adapter(args.adapter.adapter.as_deref())?;
    let dir = runtime.files_dir.clone();
    let text = render_prompt(args, &runtime.config)?;
    let tokenizer = TextTokenizer::from_model_dir(&dir)?;
    let request = RunRequest {
        max_new_tokens: args.max_new_tokens,
        decoding: decoding(args),
        stop_tokens: stop_tokens(args, &dir, runtime.config.text_config(), &tokenizer)?,
        kv_budget: args.engine.kv_budget.map(KvBudget::new),
        speculation: args.engine.speculate.map(|draft| Speculation {
            draft,
            ..Speculation::default()
        }),
    };
    let prompt = Prompt {
        text,
        images: args.images.clone(),
    };
    let (ids, inputs) = prompt_inputs(&runtime, &tokenizer, &prompt)?;
    let report = andes_runtime::generate(&runtime.decoder, &ids, inputs, &request)?;
    let text = tokenizer.decode(&report.token_ids)?;
    let peak_mib = report
        .peak_memory_bytes
        .map(|b| b as f64 / (1 << 20) as f64);
    if args.json {
        let out = serde_json::json!({
            "token_ids": report.token_ids,
            "text": text,
            "prompt_tokens": report.prompt_tokens,
            "images": args.images,
            "engine": "runtime",
            "load_seconds": runtime.load_seconds,
            "prefill_seconds": report.prefill_seconds,
            "decode_seconds": report.decode_seconds,
            "prefill_tokens_per_s": report.prefill_tokens_per_s(),
            "decode_tokens_per_s": report.decode_tokens_per_s(),
            "peak_memory_mib": peak_mib,
            "kv_entries": report.kv_entries,
            "kv_bytes": report.kv_bytes,
            "drafted": report.drafted,
            "accepted": report.accepted,
            "weight_bytes": runtime.decoder.weight_bytes(),
        });
        println!("{out}");
    } else {
        println!("{}{text}", prompt.text);
        let mut line = format!(
            "prefill {:.1} tok/s, decode {:.1} tok/s",
            report.prefill_tokens_per_s(),
            report.decode_tokens_per_s()
        );
        if let Some(peak) = peak_mib {
            line.push_str(&format!(", peak memory {peak:.0} MiB"));
        }
        if report.drafted > 0 {
            line.push_str(&format!(
                ", {} of {} drafted tokens accepted",
                report.accepted, report.drafted
            ));
        }
        eprintln!("{line}");
    }
    Ok(())
}

/// The prompt as the model takes it: as given, or one user turn of its chat template.
fn render_prompt(args: &GenerateArgs, config: &ModelConfig) -> anyhow::Result<String> {
    let released = config
        .andesvl()
        .is_some_and(|config| matches!(config.layout, AndesVLLayout::Released(_)));
    if args.think && !released {
        anyhow::bail!(
            "--think opens a released AndesVL Thinking model's reply; {} is not a released \
             AndesVL checkpoint (Qwen3 thinks unless --no-thinking)",
            args.model.model.display()
        );
    }
    Ok(match (args.chat, released) {
        (false, _) => args.prompt.clone(),
        (true, false) => render_for_generation(&[(Role::User, &args.prompt)], !args.no_thinking),
        (true, true) => render_andesvl(&[ChatMessage::new(Role::User, &args.prompt)], args.think),
    })
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
