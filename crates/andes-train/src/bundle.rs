//! `andes export`: the 1+N bundle of adapter runs. With a package, the package and the adapters
//! trained against it (each run's checkpoint records the package's hash); without, the float
//! base of `lora`/`qalft` runs and their shared quantized linears.

use std::path::{Path, PathBuf};

use andes_model::qwen3::Qwen3Config;
use andes_package::{
    BundleAdapter, BundleBase, BundledAdapter, Manifest, PackageBundleManifest, PackageError,
    TRAINED_AGAINST_FILE, TrainedAgainst, write_bundle, write_package_bundle,
};
use burn::tensor::Device;

use crate::adapters::{adapter_checkpoint, load_adapter_run};
use crate::error::TrainError;
use crate::recipe::Recipe;

/// What a bundle's manifest records of the run an adapter came from.
fn provenance(run_dir: &Path, checkpoint: &Path, recipe: &Recipe) -> serde_json::Value {
    serde_json::json!({
        "run": run_dir.display().to_string(),
        "checkpoint": checkpoint.display().to_string(),
        "stage": recipe.stage.name(),
        "data": recipe
            .data
            .sources
            .iter()
            .map(|source| source.path.display().to_string())
            .collect::<Vec<_>>(),
        "steps": recipe.train.steps,
    })
}

/// The package a checkpoint's adapter was trained against, when it was (`[model] package`).
fn trained_against(checkpoint: &Path) -> Result<Option<TrainedAgainst>, TrainError> {
    let path = checkpoint.join(TRAINED_AGAINST_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).map_err(|e| TrainError::io(&path, e))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(&path, e)),
    }
}

/// The bundle of `package` and the adapters of runs `run_dirs` (each trained against that
/// package, its latest checkpoint taken), written to `out`.
pub fn bundle_package_runs(
    package: &Path,
    run_dirs: &[PathBuf],
    out: &Path,
) -> Result<PackageBundleManifest, TrainError> {
    let mut runs = Vec::new();
    for run_dir in run_dirs {
        let (checkpoint, recipe) = adapter_checkpoint(run_dir)?;
        let name = recipe
            .stage
            .adapter()
            .expect("an adapter run")
            .lora
            .name
            .clone();
        let trained = trained_against(&checkpoint)?;
        let provenance = provenance(run_dir, &checkpoint, &recipe);
        runs.push((name, checkpoint, trained, provenance));
    }
    let adapters: Vec<BundledAdapter> = runs
        .iter()
        .map(|(name, dir, trained_against, provenance)| BundledAdapter {
            name,
            dir,
            trained_against: trained_against.clone(),
            provenance: provenance.clone(),
        })
        .collect();
    Ok(write_package_bundle(out, package, &adapters)?)
}

/// The bundle of the adapters of runs `run_dirs` on their float checkpoint (one for all, and
/// one quantization), rebuilt on `device`, written to `out`; with `dequantized_base`, the
/// quantized base also as a float Hugging Face checkpoint.
pub fn bundle_float_runs(
    run_dirs: &[PathBuf],
    out: &Path,
    dequantized_base: bool,
    device: &Device,
) -> Result<Manifest, TrainError> {
    let runs = run_dirs
        .iter()
        .map(|dir| load_adapter_run(dir, device))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &runs[0];
    let base_checkpoint = &first.recipe.model.checkpoint;
    for (run, dir) in runs.iter().zip(run_dirs).skip(1) {
        if run.recipe.model.checkpoint != *base_checkpoint {
            return Err(PackageError::Incompatible(format!(
                "run {} trained on base {}, run {} on {}: a bundle has one base",
                dir.display(),
                run.recipe.model.checkpoint.display(),
                run_dirs[0].display(),
                base_checkpoint.display()
            ))
            .into());
        }
    }
    let config = Qwen3Config::from_file(&base_checkpoint.join("config.json"))?;
    let adapters: Vec<BundleAdapter> = runs
        .iter()
        .zip(run_dirs)
        .map(|(run, dir)| BundleAdapter {
            name: &run.lora.name,
            model: &run.model,
            provenance: provenance(dir, &run.checkpoint, &run.recipe),
        })
        .collect();
    let base = BundleBase {
        checkpoint: base_checkpoint,
        config: &config,
        model: &first.model,
        quantization: first
            .quant
            .as_ref()
            .map(|q| serde_json::to_value(q).expect("the section serializes")),
    };
    Ok(write_bundle(out, &base, &adapters, dequantized_base)?)
}
