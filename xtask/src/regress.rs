//! `cargo xtask regress`: the tiny recipes trained on the CPU against their recorded final
//! figures, so that a change that breaks learning fails CI.

use std::path::Path;

use anyhow::{Context, bail};

use crate::andes_runner::{Andes, Profile, build};
use crate::workspace::{root, target_dir};

/// The tiny recipes that regression training runs, in `configs/recipes/tiny/`.
const REGRESS_RECIPES: [&str; 11] = [
    "pretrain",
    "align",
    "sft",
    "sft-vision",
    "mpo",
    "grpo",
    "lora",
    "qalft",
    "qat",
    "qalft-vision",
    "mixture",
];
/// Allowed relative rise of a final loss above its baseline.
const LOSS_TOLERANCE: f64 = 0.02;
/// Allowed absolute rise of a final loss (nats), whatever its size: a loss near 0 (a task
/// learned) moves by more than 2% with the last bits of another CPU's arithmetic.
const LOSS_FLOOR: f64 = 0.01;
/// Allowed absolute fall of a final mean reward (a fraction of prompts) below its baseline:
/// sampled completions are discrete, so a last-bit difference between CPUs can change a
/// run's path; a fall this large means learning broke (the tiny GRPO run starts near 0).
const REWARD_TOLERANCE: f64 = 0.05;

/// Trains every tiny recipe on the CPU and compares its final figures with
/// `configs/recipes/tiny/baselines.json`: a training or held-out loss above its baseline by
/// more than [`LOSS_TOLERANCE`] (relative) and [`LOSS_FLOOR`] (absolute), or a mean reward
/// below its baseline by more than [`REWARD_TOLERANCE`] (absolute), fails. `record` rewrites the
/// baselines instead.
pub(crate) fn regress(record: bool) -> anyhow::Result<()> {
    let andes = Andes::cpu(build(Profile::Debug)?);
    let baselines_path = root().join("configs/recipes/tiny/baselines.json");
    let mut baselines: serde_json::Map<String, serde_json::Value> = if record {
        serde_json::Map::new()
    } else {
        serde_json::from_str(&std::fs::read_to_string(&baselines_path)?)
            .with_context(|| format!("{}: not JSON", baselines_path.display()))?
    };
    let mut failures = Vec::new();
    for name in REGRESS_RECIPES {
        let out_dir = target_dir().join("regress").join(name);
        let recipe = format!("configs/recipes/tiny/{name}.toml");
        let mut outcome = andes
            .train(Path::new(&recipe), &out_dir, &[])
            .with_context(|| format!("{name}: andes train"))?;
        if record {
            if let Some(fields) = outcome.as_object_mut() {
                fields.remove("checkpoint");
                // A policy-gradient surrogate is no measure of quality; rewards are.
                if fields["final_reward"].is_number() {
                    fields.remove("final_loss");
                }
            }
            baselines.insert(name.into(), outcome);
            continue;
        }
        let keys = [
            "final_loss",
            "final_eval_loss",
            "final_reward",
            "final_eval_reward",
        ];
        for key in keys {
            let Some(then) = baselines[name][key].as_f64() else {
                continue;
            };
            let Some(now) = outcome[key].as_f64() else {
                bail!("{name}: `{key}` is in the baseline but missing from the run");
            };
            let worse = if key.ends_with("reward") {
                println!(
                    "{name:10} {key:17} {now:.5} (baseline {then:.5}, {:+.4})",
                    now - then
                );
                then - now > REWARD_TOLERANCE
            } else {
                let drift = (now - then) / then;
                println!(
                    "{name:10} {key:17} {now:.5} (baseline {then:.5}, {:+.2}%)",
                    drift * 100.0
                );
                now - then > (LOSS_TOLERANCE * then).max(LOSS_FLOOR)
            };
            if worse {
                failures.push(format!("{name} {key}: {now:.5} vs baseline {then:.5}"));
            }
        }
    }
    if record {
        std::fs::write(
            &baselines_path,
            serde_json::to_string_pretty(&baselines)? + "\n",
        )?;
        println!("recorded {}", baselines_path.display());
    }
    if !failures.is_empty() {
        bail!("regression beyond tolerance: {}", failures.join("; "));
    }
    Ok(())
}
