//! `andes export`: the 1+N bundle of one or more adapter runs: with `--package`, the package
//! and the adapters trained against it; without, the float base of `lora`/`qalft` runs and
//! their quantized linears.

use std::path::PathBuf;

use andes_model::device::parse_device;
use andes_model::qwen3::Qwen3Config;
use andes_package::{BundleAdapter, BundleBase, write_bundle};
use andes_train::adapters::{bundle_runs, load_adapter_run};
use anyhow::Context;
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
    if let Some(package) = &args.package {
        let manifest = bundle_runs(package, &args.adapters, &args.out)?;
        println!(
            "{}",
            serde_json::json!({
                "bundle": args.out.display().to_string(),
                "package_sha256": manifest.package_sha256,
                "adapters": manifest.adapters.iter().map(|a| &a.name).collect::<Vec<_>>(),
                "files": manifest.files.len(),
            })
        );
        return Ok(());
    }
    let device = parse_device(&args.device)?;
    let runs = args
        .adapters
        .iter()
        .map(|dir| load_adapter_run(dir, &device).with_context(|| format!("run {}", dir.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = &runs[0];
    for (run, dir) in runs.iter().zip(&args.adapters).skip(1) {
        anyhow::ensure!(
            run.recipe.model.checkpoint == first.recipe.model.checkpoint,
            "run {} trained on base {}, run {} on {}: a bundle has one base",
            dir.display(),
            run.recipe.model.checkpoint.display(),
            args.adapters[0].display(),
            first.recipe.model.checkpoint.display()
        );
    }
    let config = Qwen3Config::from_file(&first.recipe.model.checkpoint.join("config.json"))?;
    let adapters: Vec<BundleAdapter> = runs
        .iter()
        .zip(&args.adapters)
        .map(|(run, dir)| BundleAdapter {
            name: &run.lora.name,
            model: &run.model,
            provenance: serde_json::json!({
                "run": dir.display().to_string(),
                "checkpoint": run.checkpoint.display().to_string(),
                "stage": run.recipe.stage.name(),
                "data": run.recipe.data.train.display().to_string(),
                "steps": run.recipe.train.steps,
            }),
        })
        .collect();
    let base = BundleBase {
        checkpoint: &first.recipe.model.checkpoint,
        config: &config,
        model: &first.model,
        quantization: first
            .quant
            .as_ref()
            .map(|q| serde_json::to_value(q).expect("the section serializes")),
    };
    let manifest = write_bundle(&args.out, &base, &adapters, args.dequantized_base)?;
    println!(
        "{}",
        serde_json::json!({
            "bundle": args.out.display().to_string(),
            "adapters": manifest.adapters.iter().map(|a| &a.name).collect::<Vec<_>>(),
            "bpw_linears": manifest.base.bpw_linears,
            "quantized_file_bytes": manifest.base.quantized_file_bytes,
            "files": manifest.files.len(),
        })
    );
    Ok(())
}
