//! `andes eval --runtime`: perplexity read one token at a time on the CPU runtime, with
//! KV-cache eviction under a budget.

use andes_data::TextTokenizer;
use andes_runtime::{KvBudget, KvFormat, Runtime, streaming_nll};
use anyhow::Context;
use clap::Args;

use super::EvalArgs;

/// Streaming evaluation on the CPU runtime: what KV-cache eviction costs.
#[derive(Args, Debug)]
pub struct StreamingArgs {
    /// Score --text on the runtime one token at a time with one growing cache (no windows),
    /// as decoding reads it; reports the most KV bytes held.
    #[arg(long, requires = "text", conflicts_with_all = ["quantization", "window", "stride"])]
    pub(super) runtime: bool,
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
    /// With --runtime: multiply in integers against inputs rounded to int8, as `andes
    /// generate --int8-activations` does (llama.cpp's scheme): what the rounding costs in
    /// perplexity.
    #[arg(long, requires = "runtime")]
    int8_activations: bool,
    /// With --runtime: keep the KV cache in `f16` or `f32`, as `andes generate --kv-format`
    /// does: what half precision costs in perplexity.
    #[arg(long, requires = "runtime", default_value_t = KvFormat::F32)]
    kv_format: KvFormat,
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

/// `--runtime`: the text's mean NLL read one token at a time on the runtime, under the budget.
pub(super) fn run_streaming(args: &EvalArgs) -> anyhow::Result<()> {
    let streaming = &args.streaming;
    let mut runtime = Runtime::load(&args.model.model)?;
    runtime.use_adapter(args.adapter.adapter.as_deref())?;
    runtime
        .decoder
        .set_int8_activations(streaming.int8_activations);
    runtime.decoder.set_kv_format(streaming.kv_format);
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
            "int8_activations": streaming.int8_activations,
            "kv_format": streaming.kv_format.to_string(),
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
