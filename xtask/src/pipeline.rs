//! `cargo xtask pipeline`: the README's first command, the whole path on the bundled tiny model
//! in one go, so that a newcomer sees every stage work and what quantization costs.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::andes_runner::{Andes, Profile, build, latest_checkpoint, stdout_of};
use crate::data::{GCIDE_EVAL, GCIDE_TRAIN};
use crate::workspace::root;

/// Flags of `cargo xtask pipeline`.
#[derive(Debug, clap::Args)]
pub(crate) struct PipelineArgs {
    /// Device target the package is planned for (`configs/targets/TARGET.toml`).
    #[arg(long, value_name = "TARGET", default_value = "dimensity9500")]
    pub(crate) target: String,
    /// Budget of the package, bits per weight over the linears.
    #[arg(long, value_name = "BPW", default_value_t = 1.8)]
    pub(crate) bpw: f64,
    /// Folder of the run (cleared first), relative to the repository root.
    #[arg(long, value_name = "DIR", default_value = "runs/tiny-pipeline")]
    pub(crate) out: PathBuf,
}

/// Pretrains the tiny Qwen3 (the tiny recipe), then `andes quantize --target dimensity9500
/// --bpw 1.8`, `andes verify`, and `andes eval` of the float checkpoint and of the package on
/// held-out text; prints the comparison.
pub(crate) fn pipeline(args: &PipelineArgs) -> anyhow::Result<()> {
    let (target, bpw) = (args.target.as_str(), args.bpw.to_string());
    let out = root().join(&args.out);
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let andes = Andes::cpu(build(Profile::Release)?).showing_progress();
    let train_dir = out.join("train");
    println!("== 1/4 train the tiny Qwen3 (configs/recipes/tiny/pretrain.toml)");
    let outcome = andes.train(
        Path::new("configs/recipes/tiny/pretrain.toml"),
        &train_dir,
        &[],
    )?;
    println!("{outcome}");
    let model = latest_checkpoint(&train_dir)?;
    let package = out.join("package");
    println!("== 2/4 andes quantize --target {target} --bpw {bpw}");
    let summary = andes.quantize(
        &model,
        target,
        &bpw,
        &out.join("cache"),
        &package,
        &["--calib", GCIDE_TRAIN],
    )?;
    print!("{}", String::from_utf8_lossy(&summary));
    println!("== 3/4 andes verify");
    let verified = stdout_of(andes.command().arg("verify").arg(&package))?;
    print!("{}", String::from_utf8_lossy(&verified));
    println!("== 4/4 andes eval: float checkpoint vs package on {GCIDE_EVAL}");
    let held_out = ["--documents", GCIDE_EVAL];
    let (float_ppl, _) = andes.eval(&model, &held_out)?;
    let (package_ppl, package_bpw) = andes.eval(&package, &held_out)?;
    println!("| model | bpw (linears) | held-out perplexity |");
    println!("|---|---|---|");
    println!("| float ({}) | 32 | {float_ppl:.3} |", model.display());
    println!(
        "| package ({}, {target}) | {:.4} | {package_ppl:.3} |",
        package.display(),
        package_bpw.unwrap_or(f64::NAN),
    );
    println!(
        "package / float perplexity: {:.3}× (post-training quantization alone; QALFT recovers \
         quality at low bpw: cargo xtask bench qalft)",
        package_ppl / float_ppl
    );
    Ok(())
}
