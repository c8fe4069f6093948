//! The training loop, written once for every stage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_data::TextTokenizer;
use andes_model::checkpoint::load_qwen3;
use andes_model::device::parse_device;
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};

use crate::adapters::{self, QUANTIZATION_FILE};
use crate::checkpoint::{self, ModelFiles, RECIPE_FILE, TrainerState};
use crate::data::{DataPosition, WindowSet, to_batch};
use crate::error::TrainError;
use crate::loss::masked_next_token_nll;
use crate::metrics::{self, MetricsLog, StepMetrics};
use crate::optim::{adamw, clip_global_norm, freeze};
use crate::plot::loss_curves;
use crate::recipe::Recipe;

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Steps completed.
    pub steps: usize,
    /// Training loss of the last step.
    pub final_loss: f64,
    /// Held-out loss at the end, when the recipe names an eval file.
    pub final_eval_loss: Option<f64>,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
}

/// Trains per `recipe` into `run_dir` (`checkpoints/`, `metrics.jsonl`, `recipe.toml`,
/// `loss.svg`). With `resume`, continues from the run's latest checkpoint and ends with the
/// same losses an uninterrupted run would have (on the CPU, where kernels are deterministic).
pub fn train(
    recipe: &Recipe,
    recipe_toml: &str,
    run_dir: &Path,
    resume: bool,
    show_progress: bool,
) -> Result<TrainOutcome, TrainError> {
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let device = parse_device(&recipe.train.device)?.autodiff();
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
        };
        (recipe.model.checkpoint.clone(), state)
    };
    let tokenizer_file = start_dir.join("tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&tokenizer_file)?;
    let adapter_stage = recipe.stage.trains_adapter();
    // An adapter checkpoint holds the adapter only: the base always comes from the recipe.
    let model_dir = if adapter_stage {
        &recipe.model.checkpoint
    } else {
        &start_dir
    };
    let (config, model) = load_qwen3(model_dir, &device, DType::F32)?;
    let (mut model, _frozen) = freeze(model, &recipe.train.freeze);
    let (train_set, _skipped) = WindowSet::load(&recipe.data.train, &recipe.data, &tokenizer)?;
    if adapter_stage {
        let resume_from = resume.then_some(start_dir.as_path());
        if let Some(summary) = adapters::prepare(&mut model, recipe, Some(&train_set), resume_from)?
        {
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
    let mut optimizer = adamw(&model, &recipe.optimizer);
    if resume {
        optimizer = checkpoint::load_optimizer(&start_dir, optimizer)?;
    }
    let eval_set = match &recipe.data.eval {
        Some(path) => Some(WindowSet::load(path, &recipe.data, &tokenizer)?.0),
        None => None,
    };
    andes_model::checkpoint::write_atomically(&run_dir.join(RECIPE_FILE), recipe_toml.as_bytes())?;
    let metrics_log = MetricsLog::open(run_dir, state.step)?;
    let total = recipe.train.steps;
    let progress = progress_bar(total, state.step, show_progress);
    let mut last = None;
    let mut checkpoint_dir = start_dir.clone();
    while state.step < total {
        let started = Instant::now();
        // Dropout draws from a generator seeded per step, so a resumed run draws the same masks.
        device.seed(step_seed(recipe.seed, state.step));
        let lr = recipe.schedule.lr(state.step, total, recipe.optimizer.lr);
        let micro_batches: Vec<Vec<_>> = (0..recipe.train.grad_accum)
            .map(|_| train_set.draw(recipe.seed, &mut state.data, recipe.train.batch_size))
            .collect();
        let step_tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|w| w.loss_mask[1..].iter().filter(|&&m| m).count())
            .sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut nll_sum = 0.0;
        for windows in &micro_batches {
            let batch = to_batch(windows, &device);
            let logits = model.forward(batch.inputs, &mut model.new_cache())?;
            let nll = masked_next_token_nll(logits, batch.targets, batch.mask);
            nll_sum += nll.clone().into_scalar::<f64>();
            let loss = nll.div_scalar(step_tokens.max(1) as f64);
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let loss = nll_sum / step_tokens.max(1) as f64;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: state.step + 1,
                loss,
            });
        }
        let mut grads = accumulator.grads();
        let grad_norm = clip_global_norm(&model, &mut grads, recipe.optimizer.grad_clip);
        model = optimizer.step(lr, model, grads);
        state.step += 1;
        state.tokens_seen += step_tokens as u64;
        let seconds = started.elapsed().as_secs_f64();
        let mut line = StepMetrics {
            step: state.step,
            loss,
            lr,
            grad_norm,
            tokens: step_tokens,
            tokens_per_s: step_tokens as f64 / seconds,
            eval_loss: None,
            eval_perplexity: None,
        };
        let eval_due = recipe
            .train
            .eval_every
            .is_some_and(|every| state.step.is_multiple_of(every))
            || state.step == total;
        if let (Some(set), true) = (&eval_set, eval_due) {
            let eval_loss = evaluate(&model, set, recipe.train.batch_size)?;
            line.eval_loss = Some(eval_loss);
            line.eval_perplexity = Some(eval_loss.exp());
        }
        metrics_log.append(&line)?;
        progress.set_message(format!(
            "loss {loss:.4}  lr {lr:.2e}  {:.0} tok/s",
            line.tokens_per_s
        ));
        progress.inc(1);
        if state.step.is_multiple_of(recipe.train.checkpoint_every) || state.step == total {
            let write_adapter = |dir: &Path| adapters::save(&model, recipe, dir);
            let files = if adapter_stage {
                ModelFiles::Adapter(&write_adapter)
            } else {
                ModelFiles::Full(&model, &config)
            };
            checkpoint_dir = checkpoint::save(
                run_dir,
                files,
                &optimizer,
                &state,
                recipe_toml,
                &tokenizer_file,
            )?;
        }
        last = Some(line);
    }
    progress.finish();
    let history = metrics::read(&run_dir.join("metrics.jsonl"))?;
    loss_curves(&history, &run_dir.join("loss.svg"))?;
    let final_line = last.or_else(|| history.last().cloned());
    Ok(TrainOutcome {
        steps: state.step,
        final_loss: final_line.as_ref().map_or(f64::NAN, |l| l.loss),
        final_eval_loss: final_line.and_then(|l| l.eval_loss),
        checkpoint: checkpoint_dir,
    })
}

/// The generator seed of step `step` of a run seeded with `seed`.
fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64
}

/// Mean NLL per target token over every held-out window, without gradients.
pub fn evaluate(
    model: &Qwen3ForCausalLM,
    set: &WindowSet,
    batch_size: usize,
) -> Result<f64, TrainError> {
    let model = model.valid();
    let device: Device = model.devices()[0].clone();
    let windows: Vec<_> = set.packed.windows.iter().collect();
    let mut nll = 0.0;
    let mut tokens = 0usize;
    for chunk in windows.chunks(batch_size) {
        let batch = to_batch(chunk, &device);
        let logits = model.forward(batch.inputs, &mut model.new_cache())?;
        nll += masked_next_token_nll(logits, batch.targets, batch.mask).into_scalar::<f64>();
        tokens += batch.target_tokens;
    }
    Ok(nll / tokens.max(1) as f64)
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
