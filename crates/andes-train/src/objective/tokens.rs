//! The next-token objective of `pretrain`, `sft`, `lora`, `qalft` and `qat`: packed windows,
//! loss on their masked targets, with a distillation term from a float teacher when the
//! recipe asks (`[distill]`).

use andes_data::TextTokenizer;
use andes_data::dataset::counted_targets;
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;

use super::{
    DrawnBatch, Evaluation, Objective, Replayable, Shard, SourceShare, StepBatches, StepFigures,
    StepOutput, accumulate_share,
};
use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::recipe::{DistillSection, Recipe};
use andes_data::dataset::{StreamPosition, StreamedWindows, TokenWindow, WindowSet};
use andes_model::Model;
use andes_model::batch::{Batch, HostBatch, to_batch};
use andes_model::lora::peft::import_peft_adapter;
use andes_model::loss::{masked_distillation_kl, masked_target_log_probs};
use andes_model::perplexity::mean_nll;
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::tensor::{DType, Tensor};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Mean next-token NLL over a recipe's windows, drawn from its sources by weight.
pub struct TokenObjective {
    /// Each source's training windows, in the recipe's order.
    train: Vec<TrainWindows>,
    /// Each source's name and held-out windows, for the sources with a held-out file.
    eval: Vec<(String, WindowSet)>,
    batches: StepBatches,
    distill: Option<Teacher>,
}

/// One micro-batch's windows, each with the source it came from.
type MicroBatch<'a> = Vec<(usize, Cow<'a, TokenWindow>)>;

/// One source's training windows: read whole, or streamed through a shuffle buffer.
enum TrainWindows {
    /// Every window of the file, drawn in a seeded order.
    Loaded(WindowSet),
    /// The file's windows as its stream gives them (one device: the stream is read as the
    /// step draws).
    Streamed(Box<Mutex<StreamedWindows>>),
}

impl TrainWindows {
    /// The number of windows drawn by index; none for a stream.
    fn len(&self) -> Option<usize> {
        match self {
            TrainWindows::Loaded(set) => Some(set.packed.windows.len()),
            TrainWindows::Streamed(_) => None,
        }
    }
}

/// The frozen float teacher of `[distill]`, on the device the model trains on.
struct Teacher {
    model: Qwen3ForCausalLM,
    temperature: f64,
    weight: f64,
}

impl Teacher {
    /// The teacher `distill` names (the recipe's checkpoint by default, with its adapter when
    /// given), every parameter frozen, on `device`.
    fn load(
        recipe: &Recipe,
        distill: &DistillSection,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let dir = distill.teacher.as_ref().unwrap_or(&recipe.model.checkpoint);
        let (_, model) = Model::load(dir, device, DType::F32)?;
        let Model::Text(mut model) = model else {
            return Err(TrainError::WrongModel {
                path: dir.join("config.json"),
                message: "a distillation teacher is a text model; this is an AndesVL checkpoint"
                    .into(),
            });
        };
        if let Some(adapter) = &distill.teacher_adapter {
            import_peft_adapter(&mut model, adapter, TEACHER_ADAPTER)?;
            model.set_active_adapter(Some(TEACHER_ADAPTER))?;
        }
        Ok(Self {
            model: model.no_grad(),
            temperature: distill.temperature,
            weight: distill.weight,
        })
    }

    /// `(1 − weight)·nll + weight·T²·KL(teacher ‖ student)` over the masked positions of
    /// `batch`, the student's final hidden states `hidden`.
    fn loss(
        &self,
        model: &Qwen3ForCausalLM,
        hidden: Tensor<3>,
        batch: &Batch,
        nll: Tensor<1>,
    ) -> Result<Tensor<1>, TrainError> {
        let mask = batch.mask.clone();
        let teacher_hidden = batch.hidden(&self.model)?;
        let kl = masked_distillation_kl(
            model,
            hidden,
            &self.model,
            teacher_hidden,
            mask,
            self.temperature,
        );
        let kl_weight = self.weight * self.temperature * self.temperature;
        Ok(nll.mul_scalar(1.0 - self.weight) + kl.mul_scalar(kl_weight))
    }
}

/// The name the teacher's adapter is attached under.
const TEACHER_ADAPTER: &str = "teacher";

impl TokenObjective {
    /// Reads and packs the recipe's training and held-out files, and loads the distillation
    /// teacher when the stage has one (onto `device`'s training device, beside the model).
    pub fn new(
        recipe: &Recipe,
        tokenizer: &TextTokenizer,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let data = &recipe.data;
        let mut train = Vec::with_capacity(data.sources.len());
        let mut eval = Vec::new();
        for source in &data.sources {
            let windowing = data.windowing(source);
            train.push(match source.shuffle_buffer {
                None => {
                    TrainWindows::Loaded(WindowSet::load(&source.path, &windowing, tokenizer)?.0)
                }
                Some(buffer) => TrainWindows::Streamed(Box::new(Mutex::new(StreamedWindows::new(
                    &source.path,
                    windowing,
                    buffer,
                    recipe.seed,
                    tokenizer,
                )?))),
            });
            if let Some(path) = &source.eval {
                let set = WindowSet::load(path, &windowing, tokenizer)?.0;
                eval.push((source.name.clone(), set));
            }
        }
        let training_device = recipe.train.autodiff_device(device);
        let distill = recipe
            .stage
            .distill()
            .map(|distill| Teacher::load(recipe, distill, &training_device))
            .transpose()?;
        Ok(Self {
            train,
            eval,
            batches: StepBatches::of(recipe),
            distill,
        })
    }
}

impl TokenObjective {
    /// The step's micro-batches of `(source, window)`: a loaded source's window by the drawn
    /// index, a streamed source's next window from its place in `state.data.streams`.
    fn draw<'a>(&'a self, state: &mut TrainerState) -> Result<Vec<MicroBatch<'a>>, TrainError> {
        let lens: Vec<Option<usize>> = self.train.iter().map(TrainWindows::len).collect();
        let drawn = self.batches.draw(&lens, state);
        if lens.contains(&None) {
            let sources = self.train.len();
            state
                .data
                .streams
                .resize(sources, StreamPosition::default());
        }
        drawn
            .into_iter()
            .map(|batch| {
                batch
                    .into_iter()
                    .map(|(source, index)| {
                        let window = match (&self.train[source], index) {
                            (TrainWindows::Loaded(set), Some(index)) => {
                                Cow::Borrowed(&set.packed.windows[index])
                            }
                            (TrainWindows::Streamed(stream), _) => Cow::Owned(
                                stream
                                    .lock()
                                    .expect("the stream's lock is never poisoned")
                                    .next_window(&mut state.data.streams[source])?,
                            ),
                            (TrainWindows::Loaded(_), None) => {
                                unreachable!("a loaded source is drawn by index")
                            }
                        };
                        Ok((source, window))
                    })
                    .collect()
            })
            .collect()
    }
}

impl Objective for TokenObjective {
    fn step(
        &self,
        model: &Model,
        state: &mut TrainerState,
        _step_seed: u64,
        shard: Shard,
    ) -> Result<StepOutput, TrainError> {
        let full_model = model;
        let model = model.language_model();
        let device: Device = model.devices()[0].clone();
        let micro_batches = self.draw(state)?;
        let step_tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|(_, w)| counted_targets(&w.loss_mask))
            .sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut nll_sum = 0.0;
        let mut shard_tokens = 0;
        let mut source_shares = Vec::new();
        for drawn in shard.take(&micro_batches) {
            let (row_sources, windows) = rows_of(drawn);
            let batch = to_batch(&windows, &device);
            shard_tokens += batch.target_tokens;
            let (loss, row_nll) = self.batch_loss(full_model, &batch)?;
            if self.train.len() > 1 {
                SourceShare::add_rows(
                    &mut source_shares,
                    self.train.len(),
                    &row_sources,
                    row_nll,
                    &row_tokens(&windows),
                );
            }
            nll_sum += accumulate_share(&mut accumulator, model, loss, step_tokens as f64);
        }
        Ok(StepOutput {
            grads: accumulator.grads(),
            figures: StepFigures {
                loss: nll_sum / step_tokens.max(1) as f64,
                tokens: shard_tokens,
                sources: source_shares,
                ..StepFigures::default()
            },
        })
    }

    fn evaluate(&self, model: &Model) -> Result<Option<Evaluation>, TrainError> {
        let model = model.language_model();
        let batch_size = self.batches.batch_size;
        let losses = self
            .eval
            .iter()
            .map(|(name, set)| {
                let loss = mean_nll(model, set, batch_size)?;
                Ok((name.clone(), loss, set.packed.target_tokens))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Evaluation::of_sources(losses))
    }

    fn calibration_windows(&self) -> Option<&WindowSet> {
        match self.train.first() {
            Some(TrainWindows::Loaded(set)) => Some(set),
            _ => None,
        }
    }

    /// Windows packed apart, whose attention masks the host builds each step, are refused
    /// by the recipe (`Recipe::replay_refusal`) before this is asked.
    fn replayable(self: Arc<Self>) -> Result<Arc<dyn Replayable>, String> {
        Ok(self)
    }
}

impl Replayable for TokenObjective {
    fn draw_batches(&self, state: &mut TrainerState) -> Result<Vec<DrawnBatch>, TrainError> {
        Ok(self
            .draw(state)?
            .iter()
            .map(|drawn| {
                let (row_sources, windows) = rows_of(drawn);
                DrawnBatch {
                    batch: HostBatch::stack(&windows),
                    row_tokens: row_tokens(&windows),
                    row_sources,
                }
            })
            .collect())
    }

    /// The next-token NLL summed over the batch's counted targets, with the distillation
    /// term where the recipe asks; each row's NLL besides.
    fn batch_loss(
        &self,
        model: &Model,
        batch: &Batch,
    ) -> Result<(Tensor<1>, Tensor<1>), TrainError> {
        let model = model.language_model();
        let hidden = batch.hidden(model)?;
        let counted = masked_target_log_probs(
            model,
            hidden.clone(),
            batch.targets.clone(),
            batch.mask.clone(),
        );
        let row_nll = counted.clone().sum_dim(1).squeeze_dim::<1>(1).neg();
        let nll = counted.sum().neg();
        let loss = match &self.distill {
            Some(teacher) => teacher.loss(model, hidden, batch, nll)?,
            None => nll,
        };
        Ok((loss, row_nll))
    }

    fn sources(&self) -> usize {
        self.train.len()
    }
}

/// Each row's source, and its window.
fn rows_of<'a>(drawn: &'a MicroBatch<'_>) -> (Vec<usize>, Vec<&'a TokenWindow>) {
    drawn
        .iter()
        .map(|(source, window)| (*source, window.as_ref()))
        .unzip()
}

/// Each window's counted targets.
fn row_tokens(windows: &[&TokenWindow]) -> Vec<usize> {
    windows
        .iter()
        .map(|w| counted_targets(&w.loss_mask))
        .collect()
}
