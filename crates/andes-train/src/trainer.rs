//! The training loop, written once for every stage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_model::device::parse_devices;
use andes_model::precision::Autocast;
use indicatif::{ProgressBar, ProgressStyle};

use crate::adapters::{self, QUANTIZATION_FILE};
use crate::checkpoint::{self, ModelFiles, RECIPE_FILE, TrainerState};
use crate::error::TrainError;
use crate::metrics::{self, MetricsLog, StepMetrics};
use crate::objective;
use crate::optim::{adamw, freeze};
use crate::parallel::Replicas;
use crate::plot::draw_curves;
use crate::recipe::Recipe;
use andes_data::dataset::DataPosition;
use andes_model::Model;

/// A checkpoint's tokenizer.
const TOKENIZER_FILE: &str = "tokenizer.json";
/// Steps whose sample rewards [`TrainOutcome::final_reward`] averages.
pub const REWARD_WINDOW: usize = 10;

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Steps completed.
    pub steps: usize,
    /// Training loss of the last step.
    pub final_loss: f64,
    /// Held-out loss at the end, when the recipe names an eval file and the stage has a loss
    /// to evaluate.
    pub final_eval_loss: Option<f64>,
    /// Mean reward of the samples of the last [`REWARD_WINDOW`] steps (GRPO): one step's
    /// samples are too few to judge a run by.
    pub final_reward: Option<f64>,
    /// Mean reward of greedy completions of the held-out prompts at the end (GRPO).
    pub final_eval_reward: Option<f64>,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
}

/// Trains per `recipe` into `run_dir` (`checkpoints/`, `metrics.jsonl`, `recipe.toml`,
/// `loss.svg`, and `reward.svg` for GRPO). With `resume`, continues from the run's latest
/// checkpoint and ends with the same losses an uninterrupted run would have (on the CPU,
/// where kernels are deterministic).
pub fn train(
    recipe: &Recipe,
    recipe_toml: &str,
    run_dir: &Path,
    resume: bool,
    show_progress: bool,
) -> Result<TrainOutcome, TrainError> {
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let devices = parse_devices(&recipe.train.device)?;
    let plain_device = devices.devices[0].clone();
    let device = plain_device.clone().autodiff();
    // Adapter initialisation draws from the device's generator.
    device.seed(recipe.seed);
    let (start_dir, mut state) = if resume {
        let dir = checkpoint::latest(run_dir)?;
        let state = checkpoint::read_state(&dir)?;
        (dir, state)
    } else {
        let state = TrainerState {
            step: 0,
            data: DataPosition::default(),
            tokens_seen: 0,
            reward_shift: Default::default(),
        };
        (recipe.model.checkpoint.clone(), state)
    };
    let tokenizer = TextTokenizer::from_file(&start_dir.join(TOKENIZER_FILE))?;
    let adapter_stage = recipe.stage.trains_adapter();
    // An adapter checkpoint holds the adapter only: the base always comes from the recipe.
    let model_dir = if adapter_stage {
        &recipe.model.checkpoint
    } else {
        &start_dir
    };
    let precision = recipe.train.precision();
    let (config, model) = Model::load(model_dir, &device, precision.parameter_dtype())?;
    let (mut model, _frozen) = freeze(model, &recipe.train.freeze);
    let objective = objective::for_recipe(recipe, &tokenizer, &config, &plain_device)?;
    let side_files = andes_model::checkpoint::side_files(&start_dir);
    if adapter_stage {
        let Model::Text(text_model) = &mut model else {
            return Err(TrainError::io(
                &model_dir.join("config.json"),
                "stages lora and qalft train adapters on text models; this is an AndesVL \
                 checkpoint",
            ));
        };
        let resume_from = resume.then_some(start_dir.as_path());
        let calibration = objective.calibration_windows();
        if let Some(summary) = adapters::prepare(text_model, recipe, calibration, resume_from)? {
            let json = serde_json::to_vec_pretty(&summary).expect("the summary serializes");
            andes_model::checkpoint::write_atomically(&run_dir.join(QUANTIZATION_FILE), &json)?;
            if show_progress {
                eprintln!(
                    "quantized base: {:.4} bpw over {} weights of {} linears (scales and zero \
                     points counted; embeddings, norms and head stay float)",
                    summary.bpw_linears,
                    summary.quantized_weights,
                    summary.layers.len()
                );
            }
        }
    }
    let mut replicas = Replicas::new(model, &devices, precision.autocast(), |replica| {
        let optimizer = adamw(replica, &recipe.optimizer);
        if resume {
            checkpoint::load_optimizer(&start_dir, optimizer)
        } else {
            Ok(optimizer)
        }
    })?;
    andes_model::checkpoint::write_atomically(&run_dir.join(RECIPE_FILE), recipe_toml.as_bytes())?;
    let metrics_log = MetricsLog::open(run_dir, state.step)?;
    let total = recipe.train.steps;
    let progress = progress_bar(total, state.step, show_progress);
    let mut last = None;
    let mut checkpoint_dir = start_dir.clone();
    while state.step < total {
        let started = Instant::now();
        // Dropout and sampling draw from generators seeded per step, so a resumed run draws
        // the same masks and completions.
        let seed = step_seed(recipe.seed, state.step);
        replicas.seed(seed);
        let lr = recipe.schedule.lr(state.step, total, recipe.optimizer.lr);
        let step = state.step;
        let report = replicas.step(
            objective.as_ref(),
            &mut state,
            seed,
            lr,
            recipe.optimizer.grad_clip,
        )?;
        let output = report.figures;
        if !output.loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss: output.loss,
            });
        }
        let grad_norm = report.grad_norm;
        state.step += 1;
        state.tokens_seen += output.tokens as u64;
        let seconds = started.elapsed().as_secs_f64();
        let mut line = StepMetrics {
            step: state.step,
            loss: output.loss,
            lr,
            grad_norm,
            tokens: output.tokens,
            tokens_per_s: output.tokens as f64 / seconds,
            reward: output.reward,
            preference_accuracy: output.preference_accuracy,
            ..StepMetrics::default()
        };
        let eval_due = recipe
            .train
            .eval_every
            .is_some_and(|every| state.step.is_multiple_of(every))
            || state.step == total;
        let evaluation = if eval_due {
            let _autocast = Autocast::new(precision.autocast());
            objective.evaluate(replicas.model())?
        } else {
            None
        };
        if let Some(evaluation) = evaluation {
            line.eval_loss = evaluation.loss;
            line.eval_perplexity = evaluation
                .loss
                .filter(|_| !recipe.stage.scores_replies())
                .map(f64::exp);
            line.eval_reward = evaluation.reward;
            line.eval_preference_accuracy = evaluation.preference_accuracy;
        }
        metrics_log.append(&line)?;
        let reward = line
            .reward
            .map_or(String::new(), |r| format!("  reward {r:.3}"));
        progress.set_message(format!(
            "loss {:.4}{reward}  lr {lr:.2e}  {:.0} tok/s",
            line.loss, line.tokens_per_s
        ));
        progress.inc(1);
        if state.step.is_multiple_of(recipe.train.checkpoint_every) || state.step == total {
            let model = replicas.model();
            let write_adapter = |dir: &Path| adapters::save(model.language_model(), recipe, dir);
            let files = if adapter_stage {
                ModelFiles::Adapter(&write_adapter)
            } else {
                ModelFiles::Full(model, &config)
            };
            checkpoint_dir = checkpoint::save(
                run_dir,
                files,
                replicas.optimizer(),
                &state,
                recipe_toml,
                &side_files,
            )?;
        }
        last = Some(line);
    }
    progress.finish();
    let history = metrics::read(&run_dir.join("metrics.jsonl"))?;
    draw_curves(&history, run_dir)?;
    let final_line = last.or_else(|| history.last().cloned());
    let field = |pick: fn(&StepMetrics) -> Option<f64>| final_line.as_ref().and_then(pick);
    Ok(TrainOutcome {
        steps: state.step,
        final_loss: final_line.as_ref().map_or(f64::NAN, |l| l.loss),
        final_eval_loss: field(|l| l.eval_loss),
        final_reward: mean_recent_reward(&history),
        final_eval_reward: field(|l| l.eval_reward),
        checkpoint: checkpoint_dir,
    })
}

/// Mean of the per-step rewards of the last [`REWARD_WINDOW`] steps that have one.
fn mean_recent_reward(history: &[StepMetrics]) -> Option<f64> {
    let recent: Vec<f64> = history
        .iter()
        .rev()
        .filter_map(|m| m.reward)
        .take(REWARD_WINDOW)
        .collect();
    (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64)
}

/// The generator seed of step `step` of a run seeded with `seed`.
fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64
}

fn progress_bar(total: usize, done: usize, visible: bool) -> ProgressBar {
    let bar = if visible {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    bar.set_position(done as u64);
    bar
}
