//! `andes bench vision`: vision-tower images/s at one native resolution.

use std::path::PathBuf;

use andes_model::throughput::vision_throughput;
use andes_model::vision::VisionConfig;
use clap::Args;

use super::{Ran, Timing};
use crate::model_args::RuntimeArgs;

#[derive(Args, Debug)]
pub(super) struct VisionBenchArgs {
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
    #[command(flatten)]
    timing: Timing,
}

pub(super) fn run(args: VisionBenchArgs) -> anyhow::Result<Ran> {
    let (device, dtype) = args.runtime.resolve()?;
    let config = VisionConfig::from_file(&args.config)?;
    let shape = [args.batch, args.height, args.width];
    let report = vision_throughput(&config, &device, dtype, shape, args.timing.into())?;
    Ran::on(report, args.runtime)
}
