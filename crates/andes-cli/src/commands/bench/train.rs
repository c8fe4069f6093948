//! `andes bench train`: training tokens/s of a Qwen3 shape in a precision.

use std::path::PathBuf;

use andes_model::device::parse_device;
use andes_model::precision::Precision;
use andes_model::qwen3::Qwen3Config;
use andes_train::throughput::{TrainBench, train_throughput};
use clap::Args;

use super::Ran;

#[derive(Args, Debug)]
pub(super) struct TrainBenchArgs {
    /// A Qwen3 config.json giving the shape.
    #[arg(long)]
    config: PathBuf,
    /// cpu, cuda[:N], wgpu[:N] or vulkan[:N] (GPU backends need their build feature); the
    /// dtypes are --precision's.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16-mixed (f32 master weights, bf16 products, as torch autocast) or bf16
    /// (default: bf16-mixed on cuda, f32 elsewhere).
    #[arg(long)]
    precision: Option<Precision>,
    /// Recompute memory-bound activations in the backward pass instead of keeping them.
    #[arg(long)]
    activation_checkpointing: bool,
    /// Capture one step as a device graph (a CUDA graph on cuda) and replay it, with an
    /// AdamW that updates every buffer in place; the host then launches one graph a step.
    #[arg(long)]
    replay: bool,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps; the median is reported.
    #[arg(long, default_value_t = 5)]
    steps: usize,
}

pub(super) fn run(args: TrainBenchArgs) -> anyhow::Result<Ran> {
    let device = parse_device(&args.device)?;
    let config = Qwen3Config::from_file(&args.config)?;
    let bench = TrainBench {
        seq_len: args.seq_len,
        batch: args.batch,
        warmup: args.warmup,
        steps: args.steps,
        precision: args
            .precision
            .unwrap_or_else(|| Precision::default_for(&args.device)),
        activation_checkpointing: args.activation_checkpointing,
        replay: args.replay,
    };
    Ok(Ran {
        report: serde_json::to_value(train_throughput(&config, &device, bench)?)?,
        device: args.device,
        dtype: None,
    })
}
