//! `andes bench`: throughput of a model shape with random weights, one file per benchmark
//! (forward, matmul, train, vision tower, the CPU runtime's kernels), each one library call; the report is printed as
//! one JSON object with the device and dtype it ran on.

mod cpu;
mod forward;
mod matmul;
mod train;
mod vision;

use andes_model::throughput::Repeats;
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
    Forward(forward::ForwardArgs),
    /// TFLOP/s of one square matrix product, the ceiling under every linear layer.
    Matmul(matmul::MatmulArgs),
    /// Training tokens/s of a model shape (random weights and tokens, AdamW, full backward).
    Train(train::TrainBenchArgs),
    /// Vision-tower images/s at one native resolution (random weights and pixels).
    Vision(vision::VisionBenchArgs),
    /// This CPU's read bandwidth and the runtime's kernel throughput by weight format, as a
    /// target profile for `andes inspect --target`.
    Cpu(cpu::CpuBenchArgs),
}

/// A benchmark's report and where it ran: the device, and the dtype (none for training, whose
/// dtypes are its precision's).
struct Ran {
    report: serde_json::Value,
    device: String,
    dtype: Option<String>,
}

/// `--warmup` and `--repeats` of the forward and vision benchmarks.
#[derive(Args, Debug)]
struct Timing {
    /// Untimed runs first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

impl Ran {
    /// `report` of a run with `runtime`'s device and dtype.
    fn on(report: impl serde::Serialize, runtime: RuntimeArgs) -> anyhow::Result<Self> {
        Ok(Self {
            report: serde_json::to_value(report)?,
            device: runtime.device,
            dtype: Some(runtime.dtype),
        })
    }
}

impl From<Timing> for Repeats {
    fn from(timing: Timing) -> Self {
        Repeats {
            warmup: timing.warmup,
            timed: timing.repeats,
        }
    }
}

/// Runs `andes bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let ran = match args.what {
        BenchKind::Forward(args) => forward::run(args)?,
        BenchKind::Matmul(args) => matmul::run(args)?,
        BenchKind::Train(args) => train::run(args)?,
        BenchKind::Vision(args) => vision::run(args)?,
        BenchKind::Cpu(args) => cpu::run(args)?,
    };
    let mut report = ran.report;
    report["peer"] = "andes".into();
    report["device"] = ran.device.into();
    if let Some(dtype) = ran.dtype {
        report["dtype"] = dtype.into();
    }
    println!("{report}");
    Ok(())
}
