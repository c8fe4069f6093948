//! `andes generate` on the CPU runtime: a package or bundle from its packed codes, or a
//! checkpoint with `--runtime`; the speed line goes to stderr.

use std::path::Path;

use andes_data::TextTokenizer;
use andes_model::completion::Prompt;
use andes_package::{is_package, is_package_bundle};
use andes_runtime::decoder::Decoder;
use andes_runtime::{KvBudget, KvFormat, RunRequest, Runtime, Speculation, complete};
use anyhow::Context;
use clap::Args;

use super::{GenerateArgs, decoding, render_prompt, stop_tokens};

/// Tokens a draft model proposes a step when `--speculate` does not say: a common choice for
/// a draft a few times smaller than its model (Leviathan et al. find 3–7 best).
const DRAFT_BLOCK: usize = 4;

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
    /// Runtime: speculative decoding, proposing up to this many tokens a step (by prompt
    /// lookup, or by --draft's model).
    #[arg(long)]
    speculate: Option<usize>,
    /// Runtime: a draft model for speculative decoding (a smaller package or checkpoint with
    /// the model's vocabulary) proposing --speculate tokens a step (4 when not given).
    #[arg(long)]
    draft: Option<std::path::PathBuf>,
    /// Runtime: threads of the products (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Runtime: multiply packed weights (int8 to int1, ternary) in integers against inputs
    /// rounded to int8 in blocks of 128 or 64 (llama.cpp's scheme; on CPUs with AVX-512
    /// VNNI): faster, but not the f32 products, so a greedy decode may differ where two
    /// tokens nearly tie.
    #[arg(long)]
    int8_activations: bool,
    /// Runtime: keep the KV cache in `f16` (half its memory and of what attention reads a
    /// step, llama.cpp's default; a greedy decode may differ from f32's where two tokens
    /// nearly tie) or `f32` (the reference's tokens).
    #[arg(long, default_value_t = KvFormat::F32)]
    kv_format: KvFormat,
}

impl EngineArgs {
    /// Whether the runtime runs `model`: a package or bundle unless `--reference`, a
    /// checkpoint with `--runtime`. The runtime's levers are refused elsewhere.
    pub fn chosen(&self, model: &Path) -> anyhow::Result<bool> {
        let packaged = is_package(model) || is_package_bundle(model);
        let chosen = !self.reference && (self.runtime || packaged);
        let levers = self.kv_budget.is_some()
            || self.speculate.is_some()
            || self.draft.is_some()
            || self.int8_activations
            || self.kv_format != KvFormat::F32;
        if !chosen && levers {
            anyhow::bail!(
                "--kv-budget, --speculate, --draft, --int8-activations and --kv-format are \
                 levers of the runtime (not with --reference)"
            );
        }
        Ok(chosen)
    }
}

/// Generates on the runtime and prints the completion, then its speed line (or one JSON
/// object with `--json`).
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.engine.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    // the model's and the draft's products and caches alike
    let levers = |decoder: &mut Decoder| {
        decoder.set_int8_activations(args.engine.int8_activations);
        decoder.set_kv_format(args.engine.kv_format);
    };
    let mut runtime = Runtime::load(&args.model.model)?;
    runtime.use_adapter(args.adapter.adapter.as_deref())?;
    levers(&mut runtime.decoder);
    let dir = runtime.files_dir.clone();
    let tokenizer = TextTokenizer::from_model_dir(&dir)?;
    let request = RunRequest {
        max_new_tokens: args.max_new_tokens,
        decoding: decoding(args),
        stop_tokens: stop_tokens(args, &dir, runtime.config.text_config(), &tokenizer)?,
        kv_budget: args.engine.kv_budget.map(KvBudget::new),
        speculation: match (args.engine.speculate, &args.engine.draft) {
            (Some(draft), _) => Some(Speculation {
                draft,
                ..Speculation::default()
            }),
            (None, Some(_)) => Some(Speculation {
                draft: DRAFT_BLOCK,
                ..Speculation::default()
            }),
            (None, None) => None,
        },
    };
    let draft = match &args.engine.draft {
        Some(path) => {
            let mut draft = Runtime::load(path)
                .with_context(|| format!("loading the draft model {}", path.display()))?;
            levers(&mut draft.decoder);
            Some(draft)
        }
        None => None,
    };
    let prompt = Prompt {
        text: render_prompt(args, &runtime.config)?,
        images: args.images.clone(),
    };
    let draft_decoder = draft.as_ref().map(|draft| &draft.decoder);
    let report = complete(&runtime, draft_decoder, &tokenizer, &prompt, &request)?;
    let text = tokenizer.decode(&report.token_ids)?;
    if args.json {
        let mut out = report.to_json();
        out["text"] = text.into();
        out["images"] = serde_json::json!(args.images);
        out["engine"] = "runtime".into();
        out["load_seconds"] = runtime.load_seconds.into();
        out["weight_bytes"] = runtime.decoder.weight_bytes().into();
        println!("{out}");
    } else {
        println!("{}{text}", prompt.text);
        eprintln!("{}", report.speed_line());
    }
    Ok(())
}
