//! `andes train`: run a recipe, or resume a run.

use std::path::PathBuf;

use andes_model::device::expand_device_count;
use andes_train::checkpoint::RECIPE_FILE;
use andes_train::{Recipe, train};
use anyhow::Context;
use clap::Args;

/// Arguments of `andes train`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("start").required(true).args(["config", "resume"]))]
pub struct TrainArgs {
    /// Recipe TOML (configs/recipes/...).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory to create (checkpoints/, metrics.jsonl, recipe.toml, loss.svg).
    #[arg(long, requires = "config")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Override one recipe key, e.g. --set optimizer.lr=1e-4 (repeatable).
    #[arg(long = "set")]
    overrides: Vec<String>,
    /// Train data-parallel: a device count (`2`: that many devices of the recipe's kind) or
    /// a list (`cuda:0,cuda:1`); sets `train.device`. A run may resume on another count.
    #[arg(long)]
    devices: Option<String>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    quiet: bool,
}

/// Runs `andes train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (recipe_path, run_dir, resume) = match (&args.config, &args.resume) {
        (Some(config), None) => {
            let out = args
                .out
                .clone()
                .context("--out RUN_DIR is required with --config")?;
            (config.clone(), out, false)
        }
        (None, Some(run_dir)) => (run_dir.join(RECIPE_FILE), run_dir.clone(), true),
        _ => anyhow::bail!("give either --config RECIPE --out RUN_DIR or --resume RUN_DIR"),
    };
    let mut overrides = args.overrides.clone();
    if let Some(devices) = &args.devices {
        let list = match devices.parse::<usize>() {
            Ok(0) => anyhow::bail!("--devices 0: expected at least one device"),
            Ok(count) => {
                let recipe = Recipe::load(&recipe_path, &overrides)?;
                expand_device_count(count, &recipe.train.device)
            }
            Err(_) => devices.clone(),
        };
        overrides.push(format!("train.device=\"{list}\""));
    }
    let recipe = Recipe::load(&recipe_path, &overrides)?;
    let resolved = toml::to_string(&recipe).context("serializing the resolved recipe")?;
    let outcome = train(&recipe, &resolved, &run_dir, resume, !args.quiet)?;
    println!(
        "{}",
        serde_json::json!({
            "steps": outcome.steps,
            "final_loss": outcome.final_loss,
            "final_eval_loss": outcome.final_eval_loss,
            "final_reward": outcome.final_reward,
            "final_eval_reward": outcome.final_eval_reward,
            "checkpoint": outcome.checkpoint,
            "step_mode": outcome.step_mode,
        })
    );
    Ok(())
}
