//! The next-token objective of `pretrain`, `sft`, `lora`, `qalft` and `qat`: packed windows,
//! loss on their masked targets, with a distillation term from a float teacher when the
//! recipe asks (`[distill]`).

use andes_data::TextTokenizer;
use andes_data::dataset::counted_targets;
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;

use super::{Evaluation, Objective, Shard, StepBatches, StepFigures, StepOutput, accumulate_share};
use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::recipe::{DistillSection, Recipe};
use andes_data::dataset::WindowSet;
use andes_model::Model;
use andes_model::batch::to_batch;
use andes_model::lora::peft::import_peft_adapter;
use andes_model::loss::{masked_distillation_kl, masked_next_token_nll};
use andes_model::perplexity::mean_nll;
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::tensor::{Bool, DType, Int, Tensor};

/// Mean next-token NLL over a recipe's windows.
pub struct TokenObjective {
    train: WindowSet,
    eval: Option<WindowSet>,
    batches: StepBatches,
    distill: Option<Teacher>,
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
    /// `inputs`, the student's final hidden states `hidden`.
    fn loss(
        &self,
        model: &Qwen3ForCausalLM,
        hidden: Tensor<3>,
        inputs: Tensor<2, Int>,
        mask: Tensor<2, Bool>,
        nll: Tensor<1>,
    ) -> Result<Tensor<1>, TrainError> {
        let teacher_hidden = self
            .model
            .forward_hidden(inputs, &mut self.model.new_cache())?;
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
        let (train, _skipped) =
            WindowSet::load(&recipe.data.train, &recipe.data.windowing(), tokenizer)?;
        let eval = match &recipe.data.eval {
            Some(path) => Some(WindowSet::load(path, &recipe.data.windowing(), tokenizer)?.0),
            None => None,
        };
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
            let hidden = model.forward_hidden(batch.inputs.clone(), &mut model.new_cache())?;
            let nll =
                masked_next_token_nll(model, hidden.clone(), batch.targets, batch.mask.clone());
            let loss = match &self.distill {
                Some(teacher) => teacher.loss(model, hidden, batch.inputs, batch.mask, nll)?,
                None => nll,
            };
            nll_sum += accumulate_share(&mut accumulator, model, loss, step_tokens as f64);
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
