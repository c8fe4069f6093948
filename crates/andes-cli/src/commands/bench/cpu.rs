//! `andes bench cpu`: this CPU's read bandwidth and each weight format's kernel throughput on
//! the runtime, optionally written as a target profile for `andes inspect --target`, so the
//! cost model estimates this machine's decoding from its own figures.

use std::path::PathBuf;

use andes_model::checkpoint::write_atomically;
use andes_quant::TargetProfile;
use andes_runtime::throughput::CpuMeasurement;
use clap::Args;

use super::Ran;

#[derive(Args, Debug)]
pub(super) struct CpuBenchArgs {
    /// The profile whose formats are measured and whose other figures the written profile
    /// keeps (a built-in name or a file).
    #[arg(long, default_value = "generic-cpu")]
    base: String,
    /// More kinds to measure (andes format strings, f16 or f32), comma-separated.
    #[arg(long, value_delimiter = ',')]
    formats: Vec<String>,
    /// Threads of the products (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Products against int8-rounded inputs, as `andes generate --int8-activations`.
    #[arg(long)]
    int8_activations: bool,
    /// Seconds each kernel is measured for.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Write the base profile with this CPU's figures here (TOML).
    #[arg(long)]
    profile_out: Option<PathBuf>,
}

pub(super) fn run(args: CpuBenchArgs) -> anyhow::Result<Ran> {
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    let base = TargetProfile::resolve(&args.base)?;
    let measured =
        CpuMeasurement::measure(&base, &args.formats, args.int8_activations, args.seconds)?;
    if let Some(path) = &args.profile_out {
        write_atomically(path, measured.profile(&base).to_toml().as_bytes())?;
    }
    Ok(Ran {
        report: serde_json::to_value(&measured)?,
        device: "cpu".into(),
        dtype: None,
    })
}
