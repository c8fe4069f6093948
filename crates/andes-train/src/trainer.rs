//! The training loop, written once for every stage, in the phases of a run (torchtune's
//! recipe lifecycle): `setup` builds what the run needs, `step` takes one optimizer step,
//! `checkpoint` saves one, `finish` draws the curves and reports. What only the adapter
//! stages need is [`adapters::setup`]'s, called from setup.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_data::dataset::{MixturePosition, WindowSet};
use andes_model::checkpoint::write_atomically;
use andes_model::device::{parse_devices, replays_graphs};
use andes_model::precision::{Autocast, Precision};
use andes_model::{Model, ModelConfig};
use andes_package::TrainedAgainst;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoint::{self, ModelFiles, RECIPE_FILE, TrainerState};
use crate::error::TrainError;
use crate::in_place_adamw::{HostState, InPlaceAdamW};
use crate::metrics::{self, MetricsLog, StepMetrics};
use crate::objective::{self, Objective, Replayable};
use crate::optim::freeze;
use crate::parallel::Replicas;
use crate::plot::draw_curves;
use crate::recipe::{AdapterSections, Recipe, Stage};
use crate::replayed_step::ReplayedStep;
use crate::{adapters, qat};

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
    /// How the steps ran: `eager`, `graph` (replayed as one captured device graph) or `rerun`
    /// (replayed on a backend without graphs, which runs the captured step again).
    pub step_mode: &'static str,
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
    let mut run = Run::setup(recipe, recipe_toml, run_dir, resume, show_progress)?;
    let mut last = None;
    while run.state.step < recipe.train.steps {
        let line = run.step()?;
        if run.checkpoint_due() {
            run.checkpoint()?;
        }
        last = Some(line);
    }
    run.finish(last)
}

/// What a stage's own part of setup reads (`qat`'s grid, an adapter stage's base and adapter).
pub(crate) struct StageSetup<'r> {
    /// The run's recipe.
    pub recipe: &'r Recipe,
    /// The run's training windows, which GPTQ calibrates on (token objectives only).
    pub calibration: Option<&'r WindowSet>,
    /// The checkpoint a resumed run continues from.
    pub resume_from: Option<&'r Path>,
    /// The run directory.
    pub run_dir: &'r Path,
    /// Whether the run reports on stderr.
    pub show_progress: bool,
}

/// A run between setup and finish: what setup built, and the state the steps advance.
struct Run<'a> {
    recipe: &'a Recipe,
    /// The resolved recipe, saved with the run and with every checkpoint.
    recipe_toml: &'a str,
    run_dir: &'a Path,
    /// The adapter stage's sections; none when the model's own weights train.
    adapter: Option<AdapterSections<'a>>,
    /// The package the adapter trains against, when the recipe names one.
    trained_against: Option<TrainedAgainst>,
    config: ModelConfig,
    objective: Arc<dyn Objective>,
    steps: Steps,
    precision: Precision,
    state: TrainerState,
    /// Copied into every checkpoint, so that it loads on its own.
    side_files: Vec<PathBuf>,
    metrics_log: MetricsLog,
    progress: ProgressBar,
    /// The last checkpoint written; the starting one before the first.
    checkpoint_dir: PathBuf,
}

impl<'a> Run<'a> {
    /// Setup: the run directory; the starting point (the recipe's checkpoint, or the run's
    /// latest on resume); tokenizer; model in the recipe's precision, frozen where asked;
    /// objective with its data; the adapter stage's part; the step, replayed as one captured
    /// graph where the run can, else a replica and optimizer per device;
    /// the resolved recipe and the metrics log.
    fn setup(
        recipe: &'a Recipe,
        recipe_toml: &'a str,
        run_dir: &'a Path,
        resume: bool,
        show_progress: bool,
    ) -> Result<Self, TrainError> {
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        let devices = parse_devices(&recipe.train.device)?;
        let plain_device = devices.devices[0].clone();
        let device = recipe.train.autodiff_device(&plain_device);
        // Adapter initialisation draws from the device's generator.
        device.seed(recipe.seed);
        let (start_dir, state) = start_point(recipe, run_dir, resume)?;
        let tokenizer = TextTokenizer::from_file(&start_dir.join(TOKENIZER_FILE))?;
        let precision = recipe.train.precision();
        let (config, mut model) = load_model(recipe, &start_dir, &device, precision)?;
        let objective = objective::for_recipe(recipe, &tokenizer, &config, &plain_device)?;
        let side_files = andes_model::checkpoint::side_files(&start_dir);
        let resume_from = resume.then_some(start_dir.as_path());
        let adapter = recipe.stage.adapter();
        let trained_against = adapters::trained_against(recipe)?;
        let stage_setup = StageSetup {
            recipe,
            calibration: objective.calibration_windows(),
            resume_from,
            run_dir,
            show_progress,
        };
        if let Stage::Qat { quant, .. } = &recipe.stage {
            qat::setup(&mut model, quant, &stage_setup)?;
        }
        if let Some(sections) = adapter {
            adapters::setup(&mut model, sections, &stage_setup)?;
        }
        let steps = match replayed(recipe, &objective)? {
            Some(replayable) => Steps::Replayed(Box::new(ReplayedStep::new(
                model,
                replayable,
                &recipe.optimizer,
                (&device, &plain_device),
                precision.autocast(),
                resume_from.map(checkpoint::optimizer_path).as_deref(),
            )?)),
            None => {
                // Read once, however many replicas restore it.
                let saved = resume_from
                    .map(|dir| HostState::load(&checkpoint::optimizer_path(dir)))
                    .transpose()?;
                Steps::Eager(Replicas::new(
                    model,
                    &devices,
                    &recipe.train,
                    |replica, device| optimizer_for(replica, device, recipe, saved.as_ref()),
                )?)
            }
        };
        write_atomically(&run_dir.join(RECIPE_FILE), recipe_toml.as_bytes())?;
        let metrics_log = MetricsLog::open(run_dir, state.step)?;
        let progress = progress_bar(recipe.train.steps, state.step, show_progress);
        Ok(Self {
            recipe,
            recipe_toml,
            run_dir,
            adapter,
            trained_against,
            config,
            objective,
            steps,
            precision,
            state,
            side_files,
            metrics_log,
            progress,
            checkpoint_dir: start_dir,
        })
    }

    /// One optimizer step: its seed and learning rate, the update, the step's
    /// metrics line (with held-out figures when evaluation is due), logged and shown.
    fn step(&mut self) -> Result<StepMetrics, TrainError> {
        let started = Instant::now();
        let recipe = self.recipe;
        let step = self.state.step;
        // Dropout and sampling draw from generators seeded per step, so a resumed run draws
        // the same masks and completions.
        let seed = step_seed(recipe.seed, step);
        let lr = recipe
            .schedule
            .lr(step, recipe.train.steps, recipe.optimizer.lr);
        let report = match &mut self.steps {
            Steps::Eager(replicas) => {
                replicas.seed(seed);
                replicas.step(
                    self.objective.as_ref(),
                    &mut self.state,
                    seed,
                    lr,
                    recipe.optimizer.grad_clip,
                )?
            }
            Steps::Replayed(replayed) => replayed.step(&mut self.state, lr)?,
        };
        let output = report.figures;
        // A next-token loss (every stage but the reply-scoring ones, whose GRPO loss is 0
        // when a group's rewards tie) is never exactly 0 before any training.
        let next_token_start = step == 0 && !recipe.stage.scores_replies();
        if next_token_start && output.loss == 0.0 && report.grad_norm == 0.0 {
            return Err(TrainError::ComputedNothing);
        }
        if !output.loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss: output.loss,
            });
        }
        self.state.step += 1;
        self.state.tokens_seen += output.tokens as u64;
        let seconds = started.elapsed().as_secs_f64();
        let mut line = StepMetrics {
            step: self.state.step,
            loss: output.loss,
            lr,
            grad_norm: report.grad_norm,
            tokens: output.tokens,
            tokens_per_s: output.tokens as f64 / seconds,
            reward: output.reward,
            preference_accuracy: output.preference_accuracy,
            source_losses: recipe
                .data
                .sources
                .iter()
                .zip(&output.sources)
                .filter(|(_, share)| share.tokens > 0)
                .map(|(source, share)| (source.name.clone(), share.nll / share.tokens as f64))
                .collect(),
            ..StepMetrics::default()
        };
        self.evaluate_if_due(&mut line)?;
        self.metrics_log.append(&line)?;
        let reward = line
            .reward
            .map_or(String::new(), |r| format!("  reward {r:.3}"));
        self.progress.set_message(format!(
            "loss {:.4}{reward}  lr {lr:.2e}  {:.0} tok/s",
            line.loss, line.tokens_per_s
        ));
        self.progress.inc(1);
        Ok(line)
    }

    /// Adds the held-out figures to `line` when its step evaluates (every
    /// `train.eval_every` steps, and the last).
    fn evaluate_if_due(&self, line: &mut StepMetrics) -> Result<(), TrainError> {
        let train = &self.recipe.train;
        let due = train
            .eval_every
            .is_some_and(|every| line.step.is_multiple_of(every))
            || line.step == train.steps;
        if !due {
            return Ok(());
        }
        let evaluation = {
            let _autocast = Autocast::new(self.precision.autocast());
            self.steps
                .with_model(|model| self.objective.evaluate(model))?
        };
        if let Some(evaluation) = evaluation {
            line.eval_loss = evaluation.loss;
            line.eval_perplexity = evaluation
                .loss
                .filter(|_| !self.recipe.stage.scores_replies())
                .map(f64::exp);
            line.eval_reward = evaluation.reward;
            line.eval_preference_accuracy = evaluation.preference_accuracy;
            line.eval_source_losses = evaluation.source_losses.into_iter().collect();
        }
        Ok(())
    }

    /// Whether the step just taken is checkpointed (every `train.checkpoint_every` steps,
    /// and the last).
    fn checkpoint_due(&self) -> bool {
        let train = &self.recipe.train;
        self.state.step.is_multiple_of(train.checkpoint_every) || self.state.step == train.steps
    }

    /// Checkpoint: the model (an adapter stage's adapter alone), the optimizer, the trainer
    /// state, the resolved recipe and the side files, under `checkpoints/`.
    fn checkpoint(&mut self) -> Result<(), TrainError> {
        let optimizer = match &self.steps {
            Steps::Eager(replicas) => replicas.optimizer_state(),
            Steps::Replayed(replayed) => replayed.optimizer_state(),
        };
        let base = &self.recipe.model.checkpoint;
        let trained_against = self.trained_against.as_ref();
        let dir = self.steps.with_model(|model| {
            let write_adapter;
            let files = match self.adapter {
                Some(sections) => {
                    write_adapter = move |dir: &Path| {
                        adapters::save(model.language_model(), sections, base, trained_against, dir)
                    };
                    ModelFiles::Adapter(&write_adapter)
                }
                None if matches!(self.recipe.stage, Stage::Qat { .. }) => {
                    ModelFiles::Quantized(model, &self.config)
                }
                None => ModelFiles::Full(model, &self.config),
            };
            checkpoint::save(
                self.run_dir,
                files,
                optimizer,
                &self.state,
                self.recipe_toml,
                &self.side_files,
            )
        })?;
        self.checkpoint_dir = dir;
        Ok(())
    }

    /// Finish: the curves drawn from the run's whole metrics log, and the outcome. `last` is
    /// this process's last step (none when a finished run was resumed: the log's last line
    /// stands in).
    fn finish(self, last: Option<StepMetrics>) -> Result<TrainOutcome, TrainError> {
        self.progress.finish();
        let history = metrics::read(&self.run_dir.join("metrics.jsonl"))?;
        draw_curves(&history, self.run_dir)?;
        let final_line = last.or_else(|| history.last().cloned());
        let field = |pick: fn(&StepMetrics) -> Option<f64>| final_line.as_ref().and_then(pick);
        Ok(TrainOutcome {
            steps: self.state.step,
            final_loss: final_line.as_ref().map_or(f64::NAN, |l| l.loss),
            final_eval_loss: field(|l| l.eval_loss),
            final_reward: mean_recent_reward(&history),
            final_eval_reward: field(|l| l.eval_reward),
            checkpoint: self.checkpoint_dir,
            step_mode: match &self.steps {
                Steps::Eager(_) => "eager",
                Steps::Replayed(replayed) if replayed.on_device() => "graph",
                Steps::Replayed(_) => "rerun",
            },
        })
    }
}

/// How a run takes its steps.
enum Steps {
    /// Eagerly, a replica and optimizer per device.
    Eager(Replicas),
    /// Captured once as a device graph and replayed (one device).
    Replayed(Box<ReplayedStep>),
}

impl Steps {
    /// `work` on the run's model.
    fn with_model<R>(&self, work: impl FnOnce(&Model) -> R) -> R {
        match self {
            Steps::Eager(replicas) => work(replicas.model()),
            Steps::Replayed(replayed) => work(&replayed.model()),
        }
    }
}

/// The objective as a [`Replayable`] one when the run replays its step: as `train.replay`
/// says, or, unset, on cuda where the recipe and the objective allow. Refused where the recipe
/// insists and the objective cannot.
fn replayed(
    recipe: &Recipe,
    objective: &Arc<dyn Objective>,
) -> Result<Option<Arc<dyn Replayable>>, TrainError> {
    let wanted = recipe.train.replay.unwrap_or_else(|| {
        replays_graphs(&recipe.train.device) && recipe.replay_refusal().is_none()
    });
    if !wanted {
        return Ok(None);
    }
    match objective.clone().replayable() {
        Ok(replayable) => Ok(Some(replayable)),
        Err(why) if recipe.train.replay == Some(true) => Err(TrainError::NotReplayable(why)),
        Err(_) => Ok(None),
    }
}

/// Where a run starts: the recipe's checkpoint at step 0, or, on resume, the run's latest
/// checkpoint and the trainer state saved with it.
fn start_point(
    recipe: &Recipe,
    run_dir: &Path,
    resume: bool,
) -> Result<(PathBuf, TrainerState), TrainError> {
    if resume {
        let dir = checkpoint::latest(run_dir)?;
        let state = checkpoint::read_state(&dir)?;
        return Ok((dir, state));
    }
    let state = TrainerState {
        step: 0,
        data: MixturePosition::default(),
        tokens_seen: 0,
        reward_shift: Default::default(),
    };
    Ok((recipe.model.checkpoint.clone(), state))
}

/// The model to train, on `device` with its parameters in `precision`'s dtype, frozen per
/// `train.freeze`: the one in `start_dir`, except that an adapter stage always starts from
/// the recipe's base, float or package (its checkpoints hold the adapter only).
fn load_model(
    recipe: &Recipe,
    start_dir: &Path,
    device: &Device,
    precision: Precision,
) -> Result<(ModelConfig, Model), TrainError> {
    let dtype = precision.parameter_dtype();
    let (config, model) = match recipe.stage.adapter() {
        Some(_) => adapters::load_base(recipe, device, dtype)?,
        None => Model::load(start_dir, device, dtype)?,
    };
    let (model, _frozen) = freeze(model, &recipe.train.freeze);
    Ok((config, model))
}

/// AdamW for `replica` on `device`, its moments and update count `saved`'s when resuming.
fn optimizer_for(
    replica: &Model,
    device: &Device,
    recipe: &Recipe,
    saved: Option<&HostState>,
) -> Result<InPlaceAdamW, TrainError> {
    let mut optimizer = InPlaceAdamW::new(replica, &recipe.optimizer, device).copying_shared();
    if let Some(saved) = saved {
        optimizer.restore(replica, saved)?;
    }
    Ok(optimizer)
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
