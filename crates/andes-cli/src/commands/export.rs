//! `andes export`: the 1+N bundle of one or more adapter runs: with `--package`, the package
//! and the adapters trained against it; without, the float base of `lora`/`qalft` runs and
//! their quantized linears.

use std::path::PathBuf;

use andes_model::device::parse_device;
use andes_train::bundle::{bundle_float_runs, bundle_package_runs};
use clap::Args;

/// Arguments of `andes export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run directories of `andes train` with stage lora or qalft, one per adapter; all must
    /// share one base (same checkpoint and quantization, or the same `--package`).
    #[arg(long, num_args = 1.., required = true)]
    adapters: Vec<PathBuf>,
    /// The package (`andes quantize`) the adapters were trained against (`[model] package`):
    /// the bundle carries it verbatim, and refuses an adapter trained against another base.
    #[arg(long, conflicts_with = "dequantized_base")]
    package: Option<PathBuf>,
    /// Bundle directory to create.
    #[arg(long)]
    out: PathBuf,
    /// Also write the quantized base as a float Hugging Face checkpoint (`base-dequantized/`),
    /// which transformers + PEFT load to reproduce the QALFT model's logits.
    #[arg(long)]
    dequantized_base: bool,
    /// Where to rebuild the models: cpu, wgpu, cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `andes export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let report = match &args.package {
        Some(package) => {
            let manifest = bundle_package_runs(package, &args.adapters, &args.out)?;
            serde_json::json!({
                "bundle": args.out.display().to_string(),
                "package_sha256": manifest.package_sha256,
                "adapters": manifest.adapters.iter().map(|a| &a.name).collect::<Vec<_>>(),
                "files": manifest.files.len(),
            })
        }
        None => {
            let device = parse_device(&args.device)?;
            let manifest =
                bundle_float_runs(&args.adapters, &args.out, args.dequantized_base, &device)?;
            serde_json::json!({
                "bundle": args.out.display().to_string(),
                "adapters": manifest.adapters.iter().map(|a| &a.name).collect::<Vec<_>>(),
                "bpw_linears": manifest.base.bpw_linears,
                "quantized_file_bytes": manifest.base.quantized_file_bytes,
                "files": manifest.files.len(),
            })
        }
    };
    println!("{report}");
    Ok(())
}
