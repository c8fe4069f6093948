//! `andes bench`: throughput of a model shape with random weights (forward, train, vision
//! tower, matmul).

use std::path::PathBuf;

use andes_model::device::parse_device;
use andes_model::precision::Precision;
use andes_model::qwen3::Qwen3Config;
use andes_model::throughput::{Repeats, forward_throughput, matmul_throughput, vision_throughput};
use andes_model::vision::VisionConfig;
use andes_train::throughput::{TrainBench, train_throughput};
use clap::{Args, Subcommand};

use crate::model_args::RuntimeArgs;

/// Arguments of `andes bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(Subcommand, Debug)]
enum BenchKind {
    /// Prefill tokens/s over a prompt, then decode tokens/s one token at a time with the KV cache.
    Forward(ForwardArgs),
    /// TFLOP/s of one square matrix product, the ceiling under every linear layer.
    Matmul(MatmulArgs),
    /// Training tokens/s of a model shape (random weights and tokens, AdamW, full backward).
    Train(TrainBenchArgs),
    /// Vision-tower images/s at one native resolution (random weights and pixels).
    Vision(VisionBenchArgs),
}

#[derive(Args, Debug)]
struct VisionBenchArgs {
    /// A SigLIP2 / AIMv2 config.json, or an AndesVL one (its vision_config is used).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Image height in pixels (a multiple of the patch size).
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Image width in pixels (a multiple of the patch size).
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Untimed passes first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed passes; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

#[derive(Args, Debug)]
struct TrainBenchArgs {
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

#[derive(Args, Debug)]
struct MatmulArgs {
    /// Side of the square matrices.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Untimed products first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed products; the median is reported.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
}

#[derive(Args, Debug)]
struct ForwardArgs {
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
    /// Untimed runs first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Decode by replaying one captured device graph a token (fixed KV cache), as `andes
    /// generate --greedy` does on cuda; the time to capture the graph counts as decode time.
    #[arg(long)]
    replay: bool,
}

/// Runs `andes bench`: one library call, its report printed as one JSON object with the
/// device and dtype it ran on.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (device, dtype, mut report) = match args.what {
        BenchKind::Forward(args) => {
            let (device, dtype) = args.runtime.resolve()?;
            let config = Qwen3Config::from_file(&args.config)?;
            let repeats = Repeats {
                warmup: args.warmup,
                timed: args.repeats,
            };
            let report = forward_throughput(
                &config,
                &device,
                dtype,
                args.prompt_len,
                args.decode_tokens,
                args.replay,
                repeats,
            )?;
            (
                args.runtime.device,
                Some(args.runtime.dtype),
                serde_json::to_value(report)?,
            )
        }
        BenchKind::Matmul(args) => {
            let (device, dtype) = args.runtime.resolve()?;
            let repeats = Repeats {
                warmup: args.warmup,
                timed: args.repeats,
            };
            let report = matmul_throughput(args.size, &device, dtype, repeats)?;
            (
                args.runtime.device,
                Some(args.runtime.dtype),
                serde_json::to_value(report)?,
            )
        }
        BenchKind::Train(args) => {
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
            };
            let report = train_throughput(&config, &device, bench)?;
            (args.device, None, serde_json::to_value(report)?)
        }
        BenchKind::Vision(args) => {
            let (device, dtype) = args.runtime.resolve()?;
            let config = VisionConfig::from_file(&args.config)?;
            let repeats = Repeats {
                warmup: args.warmup,
                timed: args.repeats,
            };
            let shape = [args.batch, args.height, args.width];
            let report = vision_throughput(&config, &device, dtype, shape, repeats)?;
            (
                args.runtime.device,
                Some(args.runtime.dtype),
                serde_json::to_value(report)?,
            )
        }
    };
    report["peer"] = "andes".into();
    report["device"] = device.into();
    if let Some(dtype) = dtype {
        report["dtype"] = dtype.into();
    }
    println!("{report}");
    Ok(())
}
