//! `andes inspect`: what a package holds: bpw over the linears and over the whole payload,
//! sizes, the plan by format, and the target's cost estimate.

use std::path::PathBuf;

use andes_package::inspect_package;
use andes_quant::TargetProfile;
use clap::Args;

/// Arguments of `andes inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Package directory written by `andes quantize`.
    package: PathBuf,
    /// Context length of the KV-cache figures.
    #[arg(long, default_value_t = 4096)]
    context: u64,
    /// Estimate the cost on this profile (a built-in name or a file, such as the one `andes
    /// bench cpu --profile-out` measures) instead of the package's target.
    #[arg(long)]
    target: Option<String>,
    /// One JSON object (its `bpw` is the average over the quantized linears).
    #[arg(long)]
    json: bool,
}

/// Runs `andes inspect` (which verifies the package first).
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let device = args
        .target
        .as_deref()
        .map(TargetProfile::resolve)
        .transpose()?;
    let report = inspect_package(&args.package, args.context, device.as_ref())?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}
