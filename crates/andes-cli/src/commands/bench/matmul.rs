//! `andes bench matmul`: TFLOP/s of one square matrix product.

use andes_model::throughput::{Repeats, matmul_throughput};
use clap::Args;

use super::Ran;
use crate::model_args::RuntimeArgs;

#[derive(Args, Debug)]
pub(super) struct MatmulArgs {
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

pub(super) fn run(args: MatmulArgs) -> anyhow::Result<Ran> {
    let (device, dtype) = args.runtime.resolve()?;
    let repeats = Repeats {
        warmup: args.warmup,
        timed: args.repeats,
    };
    Ran::on(
        matmul_throughput(args.size, &device, dtype, repeats)?,
        args.runtime,
    )
}
