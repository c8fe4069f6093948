//! What a stage optimises: each objective turns the next slice of its data into the
//! gradients of one optimizer step, and scores the model on its held-out data. The trainer
//! around it (optimizer, schedule, clipping, checkpoints, metrics) is the same for all.

mod grpo;
mod mpo;
mod replies;
mod tokens;
mod vision;

use andes_data::TextTokenizer;
use std::path::Path;
use std::sync::Arc;

use andes_data::dataset::DataFormat;
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{DType, Device, Tensor};

pub use grpo::{GrpoObjective, GrpoSection, group_advantages};
pub use mpo::{MpoObjective, MpoSection, RunningMean, mpo_loss};
pub use replies::ReplyRows;
pub use tokens::TokenObjective;
pub use vision::VisionObjective;

use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::recipe::{DataSource, Recipe, Stage};
use andes_data::dataset::{WindowSet, draw_mixture};
use andes_model::batch::{Batch, HostBatch};
use andes_model::{Model, ModelConfig};

/// One shard's part of an optimizer step: its gradients and its share of the step's figures.
pub struct StepOutput {
    /// Gradients of this shard's micro-batches, already divided so that the shards' sum is
    /// the gradient of the step's mean loss.
    pub grads: GradientsParams,
    /// This shard's share of the step's figures.
    pub figures: StepFigures,
}

/// One data source's part of a step: the summed NLL and the counted targets of the step's
/// examples drawn from it (mixtures only).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SourceShare {
    /// Summed NLL of the source's targets.
    pub nll: f64,
    /// Targets counted.
    pub tokens: usize,
}

impl SourceShare {
    /// Adds `rows`' NLLs (`[rows]`, read back here) and `row_tokens` to the shares of the
    /// sources `row_sources` names, row by row.
    pub(crate) fn add_rows(
        shares: &mut Vec<SourceShare>,
        sources: usize,
        row_sources: &[usize],
        row_nll: Tensor<1>,
        row_tokens: &[usize],
    ) {
        shares.resize(sources, SourceShare::default());
        let values = row_nll
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .expect("converted to f64");
        for ((&source, nll), &tokens) in row_sources.iter().zip(values).zip(row_tokens) {
            shares[source].nll += nll;
            shares[source].tokens += tokens;
        }
    }
}

/// A step's figures, or one shard's share of them: each is a sum over examples divided by
/// the whole step's count, so the shares of all shards add up to the step's figure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepFigures {
    /// The step's loss.
    pub loss: f64,
    /// Tokens the loss was computed on (targets, or reply tokens).
    pub tokens: usize,
    /// Mean reward of the step's sampled completions (GRPO).
    pub reward: Option<f64>,
    /// Fraction of pairs whose chosen reply the model prefers over the rejected one, by the
    /// implicit reward (MPO).
    pub preference_accuracy: Option<f64>,
    /// Each source's NLL and targets, when the run draws from a mixture (else empty).
    pub sources: Vec<SourceShare>,
}

impl std::ops::Add for StepFigures {
    type Output = StepFigures;

    fn add(self, other: StepFigures) -> StepFigures {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        StepFigures {
            loss: self.loss + other.loss,
            tokens: self.tokens + other.tokens,
            reward: sum(self.reward, other.reward),
            preference_accuracy: sum(self.preference_accuracy, other.preference_accuracy),
            sources: (0..self.sources.len().max(other.sources.len()))
                .map(|i| {
                    let (a, b) = (self.sources.get(i), other.sources.get(i));
                    SourceShare {
                        nll: a.map_or(0.0, |a| a.nll) + b.map_or(0.0, |b| b.nll),
                        tokens: a.map_or(0, |a| a.tokens) + b.map_or(0, |b| b.tokens),
                    }
                })
                .collect(),
        }
    }
}

/// Which of a step's micro-batches one replica computes in a data-parallel run: those whose
/// index is `rank` modulo `ranks`, dealt round-robin as torch's `DistributedSampler` deals
/// samples. Every micro-batch of the step goes to exactly one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This replica's position, from 0.
    pub rank: usize,
    /// Replicas in the run.
    pub ranks: usize,
}

impl Shard {
    /// The only shard of a single-device run: every micro-batch.
    pub const WHOLE: Shard = Shard { rank: 0, ranks: 1 };

    /// Whether micro-batch `index` of the step is this shard's.
    pub fn owns(&self, index: usize) -> bool {
        index % self.ranks == self.rank
    }

    /// This shard's items of `items` (a step's micro-batches), in order.
    pub fn take<'a, T>(&self, items: &'a [T]) -> impl Iterator<Item = &'a T> {
        items
            .iter()
            .enumerate()
            .filter(|(index, _)| self.owns(*index))
            .map(|(_, item)| item)
    }
}

/// Held-out figures of the model at an evaluation step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Held-out loss (next-token NLL, or the preference loss).
    pub loss: Option<f64>,
    /// Mean reward of greedy completions (GRPO).
    pub reward: Option<f64>,
    /// Preference accuracy on held-out pairs (MPO).
    pub preference_accuracy: Option<f64>,
    /// Each source's held-out loss, by name, when the run mixes sources with held-out files.
    pub source_losses: Vec<(String, f64)>,
}

impl Evaluation {
    /// The held-out figures of a next-token objective from each source's `(name, mean NLL,
    /// targets)`: the loss over all the held-out targets and, when there are several sources,
    /// each one's; none without held-out data.
    fn of_sources(losses: Vec<(String, f64, usize)>) -> Option<Self> {
        let loss = match losses.as_slice() {
            [] => return None,
            [(_, loss, _)] => *loss,
            several => {
                let tokens: usize = several.iter().map(|(_, _, tokens)| tokens).sum();
                let nll: f64 = several.iter().map(|(_, loss, t)| loss * *t as f64).sum();
                nll / tokens.max(1) as f64
            }
        };
        let source_losses = match losses.len() {
            1 => Vec::new(),
            _ => losses
                .into_iter()
                .map(|(name, loss, _)| (name, loss))
                .collect(),
        };
        Some(Self {
            loss: Some(loss),
            source_losses,
            ..Self::default()
        })
    }
}

/// One stage's loss over its data. Shared by the threads of a data-parallel run.
pub trait Objective: Sync {
    /// Draws the step's examples from `state.data` onward (advancing it past all of them)
    /// and returns, for `model`, the gradients of `shard`'s micro-batches' part of the step's
    /// loss. `step_seed` seeds whatever the step samples.
    fn step(
        &self,
        model: &Model,
        state: &mut TrainerState,
        step_seed: u64,
        shard: Shard,
    ) -> Result<StepOutput, TrainError>;

    /// Scores `model` (without gradients) on the held-out file, when the recipe names one.
    fn evaluate(&self, model: &Model) -> Result<Option<Evaluation>, TrainError>;

    /// Training windows for calibrating a quantized base (token objectives only).
    fn calibration_windows(&self) -> Option<&WindowSet> {
        None
    }

    /// This objective as a [`Replayable`] one, whose step a replayed trainer captures once as
    /// a device graph; `Err` says why it is not one.
    fn replayable(self: Arc<Self>) -> Result<Arc<dyn Replayable>, String> {
        Err(
            "only the next-token objective on text has a step of fixed shapes to replay; \
             image batches and scored replies change shape from step to step"
                .into(),
        )
    }
}

/// An objective whose step is one fixed computation over `grad_accum` micro-batches of one
/// shape, with nothing read back to the host midway: what a step captured once as a device
/// graph and replayed ([`crate::replayed_step::ReplayedStep`]) computes.
pub trait Replayable: Sync {
    /// Draws the step's micro-batches from `state.data` onward (advancing it past them),
    /// stacked on the host.
    fn draw_batches(&self, state: &mut TrainerState) -> Result<Vec<DrawnBatch>, TrainError>;

    /// One micro-batch's summed loss (`[1]`) and each row's summed NLL (`[rows]`) for `model`.
    fn batch_loss(
        &self,
        model: &Model,
        batch: &Batch,
    ) -> Result<(Tensor<1>, Tensor<1>), TrainError>;

    /// The run's data sources, whose shares of the step's figures are reported.
    fn sources(&self) -> usize;
}

/// One micro-batch drawn for a replayed step: its windows stacked on the host, and each
/// row's source and counted targets (for the sources' shares of the step's figures).
pub struct DrawnBatch {
    /// The windows, stacked.
    pub batch: HostBatch,
    /// Each row's source.
    pub row_sources: Vec<usize>,
    /// Each row's counted targets.
    pub row_tokens: Vec<usize>,
}

/// The objective of `recipe`'s stage and data format, its data read and tokenized, for a
/// model of `config`. `device` is the plain (non-autodiff) device under the training device:
/// the reference model of MPO and GRPO is loaded there.
pub fn for_recipe(
    recipe: &Recipe,
    tokenizer: &TextTokenizer,
    config: &ModelConfig,
    device: &Device,
) -> Result<Arc<dyn Objective>, TrainError> {
    Ok(match &recipe.stage {
        Stage::Pretrain
        | Stage::Sft
        | Stage::Lora { .. }
        | Stage::Qalft { .. }
        | Stage::Qat { .. }
            if recipe.data.reads(DataFormat::ImageCaption)
                || (recipe.data.reads(DataFormat::Chat)
                    && matches!(config, ModelConfig::VisionLanguage(_))) =>
        {
            if recipe.stage.distill().is_some() {
                return Err(TrainError::Recipe {
                    path: recipe.data.primary().path.clone(),
                    key: "distill".into(),
                    message: "distillation is built for text data; image data trains without \
                              [distill]"
                        .into(),
                });
            }
            Arc::new(VisionObjective::new(recipe, tokenizer, config)?)
        }
        Stage::Pretrain
        | Stage::Sft
        | Stage::Lora { .. }
        | Stage::Qalft { .. }
        | Stage::Qat { .. } => Arc::new(TokenObjective::new(recipe, tokenizer, device)?),
        Stage::Mpo { mpo } => Arc::new(MpoObjective::new(recipe, mpo, tokenizer, device)?),
        Stage::Grpo { grpo } => Arc::new(GrpoObjective::new(recipe, grpo, tokenizer, device)?),
    })
}

/// A source's training examples (refused when there are none) and held-out examples (when
/// it names a file), each file read by `load`.
fn load_splits<T>(
    source: &DataSource,
    load: impl Fn(&Path) -> Result<Vec<T>, TrainError>,
) -> Result<(Vec<T>, Option<Vec<T>>), TrainError> {
    let train = load(&source.path)?;
    if train.is_empty() {
        return Err(TrainError::NoRecords {
            path: source.path.clone(),
        });
    }
    let eval = source.eval.as_deref().map(load).transpose()?;
    Ok((train, eval))
}

/// The frozen reference of MPO and GRPO: the starting checkpoint's language model, on the
/// plain `device`, with its configuration.
fn load_reference(
    recipe: &Recipe,
    device: &Device,
) -> Result<(ModelConfig, Qwen3ForCausalLM), TrainError> {
    let (config, reference) = Model::load(&recipe.model.checkpoint, device, DType::F32)?;
    Ok((config, reference.into_language_model().valid()))
}

/// The value of a one-element tensor, read back as f64.
fn scalar(tensor: Tensor<1>) -> f64 {
    tensor.into_scalar::<f64>()
}

/// How a step draws its examples: `grad_accum` micro-batches of `batch_size` each, from the
/// recipe's sources by weight, each source in its own seeded order.
#[derive(Debug, Clone)]
struct StepBatches {
    seed: u64,
    batch_size: usize,
    grad_accum: usize,
    weights: Vec<f64>,
}

impl StepBatches {
    fn of(recipe: &Recipe) -> Self {
        Self {
            seed: recipe.seed,
            batch_size: recipe.train.batch_size,
            grad_accum: recipe.train.grad_accum,
            weights: recipe.data.weights(),
        }
    }

    /// The step's micro-batches as `(source, index)` pairs into sources of `lens` examples
    /// (none for a streamed source, whose next window its stream gives), drawn from
    /// `state.data` onward (advancing it).
    fn draw(
        &self,
        lens: &[Option<usize>],
        state: &mut TrainerState,
    ) -> Vec<Vec<(usize, Option<usize>)>> {
        (0..self.grad_accum)
            .map(|_| {
                draw_mixture(
                    lens,
                    &self.weights,
                    self.seed,
                    &mut state.data,
                    self.batch_size,
                )
            })
            .collect()
    }

    /// The step's micro-batches of `(source, example)` from every source's examples.
    fn draw_from<'a, T>(
        &self,
        sources: &[&'a [T]],
        state: &mut TrainerState,
    ) -> Vec<Vec<(usize, &'a T)>> {
        let lens: Vec<Option<usize>> = sources
            .iter()
            .map(|examples| Some(examples.len()))
            .collect();
        self.draw(&lens, state)
            .into_iter()
            .map(|batch| {
                batch
                    .into_iter()
                    .map(|(source, index)| {
                        (
                            source,
                            &sources[source][index.expect("every source is loaded")],
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// The step's micro-batches of a stage that reads one file.
    fn draw_one<'a, T>(&self, examples: &'a [T], state: &mut TrainerState) -> Vec<Vec<&'a T>> {
        self.draw_from(&[examples], state)
            .into_iter()
            .map(|batch| batch.into_iter().map(|(_, example)| example).collect())
            .collect()
    }
}

/// Adds to `accumulator` the gradients of one micro-batch's share `sum / step_count` of the
/// step's mean loss (so that accumulation leaves the mean unchanged); returns `sum`'s value.
fn accumulate_share<M: Module>(
    accumulator: &mut GradientsAccumulator<M>,
    model: &M,
    sum: Tensor<1>,
    step_count: f64,
) -> f64 {
    let value = scalar(sum.clone());
    let share = sum.div_scalar(step_count.max(1.0));
    accumulator.accumulate(model, GradientsParams::from_grads(share.backward(), model));
    value
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use andes_model::qwen3::Qwen3ForCausalLM;
    use burn::module::{ModuleVisitor, Param};

    use super::*;

    /// The tiny recipe `name` with its data (train and eval) replaced by `data` and every path
    /// absolute, and the tiny model's tokenizer; group size 4 for GRPO.
    pub(crate) fn tiny_recipe(name: &str, data: &str) -> (Recipe, TextTokenizer) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let fixture = root.join("fixtures/qwen3-tiny-untied-mha-f32");
        let data = root.join(data);
        let mut overrides = vec![
            format!("model.checkpoint={}", fixture.display()),
            format!("data.train={}", data.display()),
            format!("data.eval={}", data.display()),
        ];
        if name == "grpo" {
            overrides.push("grpo.group_size=4".into());
        }
        let path = root.join(format!("configs/recipes/tiny/{name}.toml"));
        let recipe = Recipe::load(&path, &overrides).unwrap();
        (recipe, TextTokenizer::from_model_dir(&fixture).unwrap())
    }

    /// Every gradient of `a` and `b` on `model`'s parameters: (largest difference, largest
    /// magnitude).
    pub(crate) fn gradient_gap(
        model: &Qwen3ForCausalLM,
        a: &GradientsParams,
        b: &GradientsParams,
    ) -> (f64, f64) {
        struct Gap<'a>(&'a GradientsParams, &'a GradientsParams, f64, f64);
        impl ModuleVisitor for Gap<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let (Some(a), Some(b)) = (self.0.get::<D>(param.id), self.1.get::<D>(param.id))
                else {
                    return;
                };
                self.2 = self.2.max((a - b.clone()).abs().max().into_scalar::<f64>());
                self.3 = self.3.max(b.abs().max().into_scalar::<f64>());
            }
        }
        let mut gap = Gap(a, b, 0.0, 0.0);
        model.visit(&mut gap);
        (gap.2, gap.3)
    }
}
