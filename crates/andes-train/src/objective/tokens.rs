//! The next-token objective of `pretrain`, `sft`, `lora` and `qalft`: packed windows, loss
//! on their masked targets.

use andes_data::TextTokenizer;
use andes_data::dataset::counted_targets;
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;

use super::{Evaluation, Objective, Shard, StepBatches, StepFigures, StepOutput, accumulate_share};
use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::recipe::Recipe;
use andes_data::dataset::WindowSet;
use andes_model::Model;
use andes_model::batch::to_batch;
use andes_model::loss::masked_next_token_nll;
use andes_model::perplexity::mean_nll;

/// Mean next-token NLL over a recipe's windows.
pub struct TokenObjective {
    train: WindowSet,
    eval: Option<WindowSet>,
    batches: StepBatches,
}

impl TokenObjective {
    /// Reads and packs the recipe's training and held-out files.
    pub fn new(recipe: &Recipe, tokenizer: &TextTokenizer) -> Result<Self, TrainError> {
        let (train, _skipped) =
            WindowSet::load(&recipe.data.train, &recipe.data.windowing(), tokenizer)?;
        let eval = match &recipe.data.eval {
            Some(path) => Some(WindowSet::load(path, &recipe.data.windowing(), tokenizer)?.0),
            None => None,
        };
        Ok(Self {
            train,
            eval,
            batches: StepBatches::of(recipe),
        })
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
        let model = model.language_model();
        let device: Device = model.devices()[0].clone();
        let micro_batches = self.batches.draw(&self.train.packed.windows, state);
        let step_tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|w| counted_targets(&w.loss_mask))
            .sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut nll_sum = 0.0;
        let mut shard_tokens = 0;
        for windows in shard.take(&micro_batches) {
            let batch = to_batch(windows, &device);
            shard_tokens += batch.target_tokens;
            let hidden = model.forward_hidden(batch.inputs, &mut model.new_cache())?;
            let nll = masked_next_token_nll(model, hidden, batch.targets, batch.mask);
            nll_sum += accumulate_share(&mut accumulator, model, nll, step_tokens as f64);
        }
        Ok(StepOutput {
            grads: accumulator.grads(),
            figures: StepFigures {
                loss: nll_sum / step_tokens.max(1) as f64,
                tokens: shard_tokens,
                ..StepFigures::default()
            },
        })
    }

    fn evaluate(&self, model: &Model) -> Result<Option<Evaluation>, TrainError> {
        let model = model.language_model();
        let Some(set) = &self.eval else {
            return Ok(None);
        };
        Ok(Some(Evaluation {
            loss: Some(mean_nll(model, set, self.batches.batch_size)?),
            ..Evaluation::default()
        }))
    }

    fn calibration_windows(&self) -> Option<&WindowSet> {
        Some(&self.train)
    }
}
