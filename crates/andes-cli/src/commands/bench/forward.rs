//! `andes bench forward`: prefill and decode tokens/s of a Qwen3 shape.

use std::path::PathBuf;

use andes_model::qwen3::Qwen3Config;
use andes_model::throughput::forward_throughput;
use clap::Args;

use super::{Ran, Timing};
use crate::model_args::RuntimeArgs;

#[derive(Args, Debug)]
pub(super) struct ForwardArgs {
    /// A Qwen3 config.json giving the shape (weights are random).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Prompt tokens processed in one forward pass.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    #[command(flatten)]
    timing: Timing,
    /// Decode by replaying one captured device graph a token (fixed KV cache), as `andes
    /// generate --greedy` does on cuda; the time to capture the graph counts as decode time.
    #[arg(long)]
    replay: bool,
}

pub(super) fn run(args: ForwardArgs) -> anyhow::Result<Ran> {
    let (device, dtype) = args.runtime.resolve()?;
    let config = Qwen3Config::from_file(&args.config)?;
    let report = forward_throughput(
        &config,
        &device,
        dtype,
        args.prompt_len,
        args.decode_tokens,
        args.replay,
        args.timing.into(),
    )?;
    Ran::on(report, args.runtime)
}
