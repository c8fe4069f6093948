//! `cargo xtask bench forward`: prefill and decode throughput of andes against transformers
//! eager on this machine's CPU, same shape and threads.

use super::PeerComparison;
use crate::workspace::target_dir;

/// The shape and threads of `cargo xtask bench forward`.
#[derive(Debug, clap::Args)]
pub(crate) struct ForwardArgs {
    /// Model shape, a Hugging Face `config.json` (random weights).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "fixtures/qwen3-tiny-tied-gqa-f32/config.json"
    )]
    pub(crate) config: String,
    /// Prompt tokens of the prefill.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub(crate) prompt_len: usize,
    /// Tokens decoded after the prefill.
    #[arg(long, value_name = "M", default_value_t = 32)]
    pub(crate) decode_tokens: usize,
    /// CPU threads of both sides.
    #[arg(long, value_name = "T", default_value_t = 2)]
    pub(crate) threads: usize,
}

/// Runs `andes bench forward` and the transformers-eager peer on this machine's CPU, same
/// shape and threads, and prints the ratio.
pub(crate) fn forward(args: &ForwardArgs) -> anyhow::Result<()> {
    let comparison = PeerComparison::start("forward", args.threads, target_dir().join("bench"))?;
    let (prompt_len, decode_tokens) = (args.prompt_len.to_string(), args.decode_tokens.to_string());
    let shape = [
        "--config",
        &args.config,
        "--prompt-len",
        &prompt_len,
        "--decode-tokens",
        &decode_tokens,
    ];
    comparison.measure("cpu", &shape, &["--dtype", "float32"])?;
    comparison.report()
}
