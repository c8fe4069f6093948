//! A recipe: one TOML file naming everything a training run needs.
//!
//! The file is flat: `stage = "qalft"` at the top beside the sections every stage reads, and
//! the sections only some stages read (`[lora]`, `[quant]`, `[mpo]`, `[grpo]`) optional. A
//! loaded [`Recipe`] is typed instead: its [`Stage`] carries exactly the sections that stage
//! reads, so a missing or stray section is refused once, at load, naming its key
//! (`recipe/file.rs` turns the one form into the other and back), and the code that trains a
//! stage takes its sections from the stage without looking for them again.

mod file;

use std::fmt;
use std::path::PathBuf;

use andes_data::dataset::{DataFormat, Packing, Windowing};
use andes_model::lora::{LoraConfig, LoraTarget};
use andes_model::precision::Precision;
use andes_model::quantize::{BaseFormats, BaseQuantization, PtqMethod};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::objective::{GrpoSection, MpoSection};
use crate::schedule::Schedule;

/// The training objective, with the sections only it reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Next-token loss on every token of text documents.
    Pretrain,
    /// Next-token loss on the assistant turns of conversations.
    Sft,
    /// A LoRA adapter on the frozen float base, trained on the masked next-token loss of its
    /// data: the float reference QALFT is measured against; or on the frozen base of a
    /// package (`[model] package`), the adapters of 1+N.
    Lora {
        /// The adapter (`[lora]`).
        lora: LoraSection,
        /// Distillation from a float teacher (`[distill]`): against a package, the float
        /// model with the float-trained adapter of the task shows the adapter on the quantized
        /// base what the float pair computes; on the float base, the same teacher trains the
        /// reference those adapters compare with.
        distill: Option<DistillSection>,
    },
    /// Quantization-aware LoRA fine-tuning: the base quantized per `[quant]` and frozen on its
    /// fake-quant grid, the adapter (and optionally the grid's scales) trained against it.
    Qalft {
        /// The adapter (`[lora]`).
        lora: LoraSection,
        /// The base's quantization (`[quant]`).
        quant: QuantSection,
        /// Distillation from a float teacher (`[distill]`), when given.
        distill: Option<DistillSection>,
    },
    /// Quantization-aware training of the base, before packaging: every linear's full (latent)
    /// weight trains through the fake-quant grid of `[quant]` (straight-through estimator),
    /// its scales by LSQ when `learn_scales`. Checkpoints are whole models with their grid,
    /// which `andes quantize --plan CKPT/bit_plan.json` packs to exactly the codes training
    /// computed with; adapters then train against that package (`lora`, `[model] package`).
    Qat {
        /// The grid's formats, initialiser and scales (`[quant]`).
        quant: QuantSection,
        /// Distillation from a float teacher (`[distill]`), when given.
        distill: Option<DistillSection>,
    },
    /// Mixed Preference Optimization on preference pairs, against the starting checkpoint as a
    /// frozen reference.
    Mpo {
        /// The term weights (`[mpo]`; InternVL's defaults when the file has none).
        mpo: MpoSection,
    },
    /// Group Relative Policy Optimization on prompts with answers, against the starting
    /// checkpoint as a frozen reference.
    Grpo {
        /// Sampling and reward (`[grpo]`).
        grpo: GrpoSection,
    },
}

/// A stage's name: the value of the recipe's `stage` key, and what messages and a bundle's
/// provenance call the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageName {
    /// `pretrain`.
    Pretrain,
    /// `sft`.
    Sft,
    /// `lora`.
    Lora,
    /// `qalft`.
    Qalft,
    /// `qat`.
    Qat,
    /// `mpo`.
    Mpo,
    /// `grpo`.
    Grpo,
}

impl fmt::Display for StageName {
    /// The name as a recipe writes it (`qalft`): serde's, so the two cannot differ.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.serialize(f)
    }
}

/// What an adapter stage (`lora`, `qalft`) reads besides the shared sections: the adapter it
/// trains and, for `qalft`, how its base is quantized.
#[derive(Debug, Clone, Copy)]
pub struct AdapterSections<'a> {
    /// The adapter (`[lora]`).
    pub lora: &'a LoraSection,
    /// The base's quantization (`[quant]`); none for the float base of `lora`.
    pub quant: Option<&'a QuantSection>,
}

impl AdapterSections<'_> {
    /// Whether the quantization grid's scales train along with the adapter (and so are saved
    /// with it).
    pub fn learns_scales(&self) -> bool {
        self.quant.is_some_and(|quant| quant.learn_scales)
    }
}

impl Stage {
    /// The stage's name.
    pub fn name(&self) -> StageName {
        match self {
            Stage::Pretrain => StageName::Pretrain,
            Stage::Sft => StageName::Sft,
            Stage::Lora { .. } => StageName::Lora,
            Stage::Qalft { .. } => StageName::Qalft,
            Stage::Qat { .. } => StageName::Qat,
            Stage::Mpo { .. } => StageName::Mpo,
            Stage::Grpo { .. } => StageName::Grpo,
        }
    }

    /// The sections of an adapter stage; none for a stage that trains the model's own
    /// weights (its checkpoints are whole models, not adapters).
    pub fn adapter(&self) -> Option<AdapterSections<'_>> {
        match self {
            Stage::Lora { lora, .. } => Some(AdapterSections { lora, quant: None }),
            Stage::Qalft { lora, quant, .. } => Some(AdapterSections {
                lora,
                quant: Some(quant),
            }),
            Stage::Pretrain
            | Stage::Sft
            | Stage::Qat { .. }
            | Stage::Mpo { .. }
            | Stage::Grpo { .. } => None,
        }
    }

    /// The base's quantization (`[quant]`) of the stages that quantize it, `qalft` and `qat`.
    pub fn quant(&self) -> Option<&QuantSection> {
        match self {
            Stage::Qalft { quant, .. } | Stage::Qat { quant, .. } => Some(quant),
            Stage::Pretrain
            | Stage::Sft
            | Stage::Lora { .. }
            | Stage::Mpo { .. }
            | Stage::Grpo { .. } => None,
        }
    }

    /// Distillation from a float teacher (`[distill]` of `qat`, `qalft` and `lora`), when
    /// given.
    pub fn distill(&self) -> Option<&DistillSection> {
        match self {
            Stage::Lora { distill, .. }
            | Stage::Qalft { distill, .. }
            | Stage::Qat { distill, .. } => distill.as_ref(),
            Stage::Pretrain | Stage::Sft | Stage::Mpo { .. } | Stage::Grpo { .. } => None,
        }
    }

    /// Whether the stage scores whole replies against a reference (its loss is not a
    /// next-token NLL, so it has no perplexity).
    pub fn scores_replies(&self) -> bool {
        matches!(self, Stage::Mpo { .. } | Stage::Grpo { .. })
    }

    /// Whether the stage draws from a mixture of sources (the next-token stages); the others
    /// read one file.
    pub fn mixes_sources(&self) -> bool {
        !matches!(self, Stage::Mpo { .. } | Stage::Grpo { .. })
    }

    /// The data formats the stage reads, for validation and its message.
    pub fn formats(&self) -> &'static [DataFormat] {
        match self {
            Stage::Pretrain => &[DataFormat::Text, DataFormat::Chat, DataFormat::ImageCaption],
            Stage::Sft | Stage::Lora { .. } | Stage::Qalft { .. } | Stage::Qat { .. } => {
                &[DataFormat::Text, DataFormat::Chat]
            }
            Stage::Mpo { .. } => &[DataFormat::Preference],
            Stage::Grpo { .. } => &[DataFormat::Prompt],
        }
    }
}

/// A whole recipe, checked: the stage with its sections, and the sections every stage reads.
/// It serializes back to the file's layout, which is how a run directory keeps its resolved
/// recipe for `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "file::RecipeFile")]
pub struct Recipe {
    /// The objective (`stage`) and the sections only it reads.
    pub stage: Stage,
    /// Seed of the data order.
    pub seed: u64,
    /// Starting model.
    pub model: ModelSection,
    /// Data.
    pub data: DataSection,
    /// AdamW.
    pub optimizer: OptimizerSection,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// The loop.
    pub train: TrainSection,
}

impl Recipe {
    /// Micro-batch windows per optimizer step.
    pub fn windows_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum
    }

    /// Why this recipe's step cannot be captured once and replayed (`train.replay`), as far as
    /// the recipe tells; `None` when it can (the objective has the last word: image data
    /// does not replay).
    pub fn replay_refusal(&self) -> Option<&'static str> {
        if self.stage.scores_replies() {
            Some("the stages that score replies sample and read rewards back mid-step")
        } else if file::device_count(&self.train) > 1 {
            Some("data-parallel runs exchange gradients between devices mid-step")
        } else if self.stage.adapter().is_some_and(|a| a.lora.dropout > 0.0) {
            Some("LoRA dropout draws a new mask every step; a replayed graph would reuse the first")
        } else if self.data.packing == Packing::PaddingFree {
            Some("windows packed apart mask attention by record segments the host builds each step")
        } else {
            None
        }
    }
}

/// `[distill]`: knowledge distillation from a float teacher (`qat`, `qalft`, and `lora`, whose
/// teacher carries the task's float-trained adapter): the step's loss becomes `(1 − weight)·NLL +
/// weight·T²·KL(teacher ‖ student)` at temperature `T`, over the positions the NLL counts
/// (Hinton et al. 2015), the logits of both computed in the same chunks of positions as the
/// loss so they never take memory whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    /// The teacher's model directory; the recipe's checkpoint (the float model) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
    /// A PEFT adapter on the teacher, e.g. the float-trained adapter of the same task (`qalft`,
    /// `lora`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_adapter: Option<PathBuf>,
    /// Softmax temperature of both distributions.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Share of the KL term in the loss, in [0, 1].
    #[serde(default = "default_distill_weight")]
    pub weight: f64,
}

fn default_temperature() -> f64 {
    1.0
}

fn default_distill_weight() -> f64 {
    0.5
}

/// `[model]`: where the starting weights, config and tokenizer come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face model directory to start from.
    pub checkpoint: PathBuf,
    /// A package of `andes quantize` made from `checkpoint`, for the `lora` stage: the adapter
    /// trains against the package's codes and scales, dequantized exactly as `andes eval
    /// --model PKG` runs them and frozen, so it learns the base the phone runs (1+N: one
    /// quantized base, N adapters) rather than a re-quantization of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PathBuf>,
}

/// `[data]`: what training reads, from one file or a weighted mixture of sources. The file
/// writes either `format`, `train` and `eval` (one source) or `[[data.sources]]` tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "file::DataFile", into = "file::DataFile")]
pub struct DataSection {
    /// The sources, in the file's order; at least one.
    pub sources: Vec<DataSource>,
    /// Tokens per training window.
    pub seq_len: usize,
    /// Count and skip malformed records instead of stopping at the first.
    pub skip_bad_records: bool,
    /// How text and conversation records become windows: `stream` (cut from one stream of
    /// every record) or `padding_free` (whole records side by side, each attending to itself
    /// only, positions restarting: TRL's padding-free packing). Image data and the pair and
    /// prompt stages train a record a row either way.
    pub packing: Packing,
}

/// One data source: a training file in one record layout, drawn with a weight relative to the
/// other sources', and its held-out file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// What metrics call the source (`source_losses`); the training file's stem by default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Record layout of both files.
    pub format: DataFormat,
    /// Training file.
    pub path: PathBuf,
    /// Held-out file for periodic evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<PathBuf>,
    /// Relative share of the training examples drawn from this source (positive).
    #[serde(default = "one_weight")]
    pub weight: f64,
    /// Stream the training file through a seeded shuffle buffer of this many records instead
    /// of reading it whole: bounded memory for files of any size (text and chat records, the
    /// stream packing, one device; the held-out file is still read whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_buffer: Option<usize>,
}

fn one_weight() -> f64 {
    1.0
}

impl DataSection {
    /// The first source: the one file of a single-source recipe, and what a stage that reads
    /// one file (calibration windows, MPO, GRPO) reads.
    pub fn primary(&self) -> &DataSource {
        &self.sources[0]
    }

    /// How `source`'s files become windows.
    pub fn windowing(&self, source: &DataSource) -> Windowing {
        Windowing {
            format: source.format,
            seq_len: self.seq_len,
            skip_bad_records: self.skip_bad_records,
            packing: self.packing,
        }
    }

    /// Every source's weight, in order.
    pub fn weights(&self) -> Vec<f64> {
        self.sources.iter().map(|source| source.weight).collect()
    }

    /// Whether any source is in `format`.
    pub fn reads(&self, format: DataFormat) -> bool {
        self.sources.iter().any(|source| source.format == format)
    }
}

/// Training windows that calibrate a quantized base when the recipe does not say how many
/// (`quant.calibration_windows`), and that weigh the residual an adapter starts at.
pub const CALIBRATION_WINDOWS: usize = 32;

/// `[lora]`: the adapter a `lora` or `qalft` run trains (PEFT's settings and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// The adapter's name in the 1+N bundle (letters, digits, `_`, `-`).
    pub name: String,
    /// Rank r of the update.
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    #[serde(default)]
    pub dropout: f64,
    /// Projections to adapt (PEFT names); all seven when absent.
    #[serde(default = "all_targets")]
    pub targets: Vec<LoraTarget>,
    /// How the factors start (`init`): PEFT's zero update unless the recipe says otherwise.
    #[serde(default)]
    pub init: LoraInit,
}

/// How a new adapter's factors start (`[lora] init`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraInit {
    /// `zero-update`: PEFT's start (`init_lora_weights = true`), A kaiming-uniform and B zero,
    /// so the adapter changes nothing until it trains.
    #[default]
    ZeroUpdate,
    /// `quantization-residual`: `B·A` starts as the rank-r correction of the quantized base's
    /// error that the float model's inputs (the training windows) see least of (CLoQ,
    /// arXiv:2501.18475), so training starts from a repaired base; for a quantized base only
    /// (`qalft`, or `lora` against a `[model] package`).
    QuantizationResidual,
}

fn all_targets() -> Vec<LoraTarget> {
    LoraTarget::ALL.to_vec()
}

impl LoraSection {
    /// The adapter configuration this section describes.
    pub fn config(&self) -> LoraConfig {
        LoraConfig {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules: self.targets.clone(),
        }
    }
}

/// `[quant]`: how a `qalft` run quantizes its base. The file gives exactly one of `format`
/// and `plan`; it serializes back to those keys (also in a bundle's manifest).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "file::QuantFile")]
pub struct QuantSection {
    /// Which format each linear takes: one for every linear (`format = "int2-g64-asym"`), or a
    /// `bit_plan.json` (`plan`, from `andes quantize` or edited by hand).
    pub formats: BaseFormats,
    /// The post-training quantizer that sets the initial codes and scales (`init`).
    pub init: PtqMethod,
    /// Train the grid's scales (LSQ) along with the adapter.
    pub learn_scales: bool,
    /// Training windows (the first ones of the file) whose activations give GPTQ its Hessians.
    pub calibration_windows: usize,
}

impl QuantSection {
    /// The base quantization this section asks for.
    pub fn base_quantization(&self) -> BaseQuantization {
        BaseQuantization {
            formats: self.formats.clone(),
            method: self.init,
            learn_scales: self.learn_scales,
            calibration_windows: self.calibration_windows,
        }
    }
}

/// `[optimizer]`: AdamW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay (not applied to norms and biases).
    #[serde(default)]
    pub weight_decay: f64,
    /// First-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Denominator epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this value (none when absent).
    pub grad_clip: Option<f64>,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}

/// `[train]`: the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Parameters whose Hugging Face name starts with one of these are not trained.
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Evaluate on the held-out file every this many steps (and at the end).
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// `cpu`, `cuda[:N]`, `wgpu[:N]`, `vulkan[:N]`, or a comma-separated list of devices of
    /// one kind (`cuda:0,cuda:1`) for data-parallel training: the step's `grad_accum`
    /// micro-batches are dealt among them.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32`, `bf16-mixed` or `bf16` (default: `bf16-mixed` on cuda, `f32` elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Recompute memory-bound activations in the backward pass instead of keeping them
    /// (Burn's balanced gradient checkpointing): less memory for some more compute, for the
    /// shapes that do not fit otherwise.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Data-parallel runs sum gradients in flat buckets of about this many MiB, last layer
    /// first, one collective call a bucket (PyTorch DDP's `bucket_cap_mb`).
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
    /// Capture the optimizer step once as a device graph and replay it every step, so the host
    /// launches one graph a step instead of every kernel (`crate::replayed_step`). `true`
    /// insists (a run that cannot replay is refused, saying why; off cuda the step reruns
    /// operation by operation, as a check), `false` steps eagerly; unset, cuda runs that can
    /// replay do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<bool>,
}

fn default_bucket_mb() -> f64 {
    crate::buckets::DEFAULT_BUCKET_MB
}

impl TrainSection {
    /// The run's precision: as set, else the device's default.
    pub fn precision(&self) -> Precision {
        self.precision
            .unwrap_or_else(|| Precision::default_for(&self.device))
    }

    /// The device a replica on `device` records its gradients on.
    pub fn autodiff_device(&self, device: &Device) -> Device {
        training_device(device, self.activation_checkpointing)
    }
}

/// `device` with autodiff, and with activation checkpointing when asked.
pub fn training_device(device: &Device, activation_checkpointing: bool) -> Device {
    let device = device.clone().autodiff();
    if activation_checkpointing {
        device.gradient_checkpointing()
    } else {
        device
    }
}

fn one() -> usize {
    1
}
fn default_device() -> String {
    "cpu".into()
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, GradientCheckpointingStrategy};

    use super::*;

    #[test]
    fn activation_checkpointing_reaches_the_replicas_device() {
        let train = |value: bool| -> TrainSection {
            toml::from_str(&format!(
                "steps = 1\nbatch_size = 1\ncheckpoint_every = 1\nactivation_checkpointing = {value}"
            ))
            .unwrap()
        };
        let strategy = |value: bool| {
            train(value)
                .autodiff_device(&Device::flex())
                .gradient_checkpointing_strategy()
        };
        assert_eq!(
            strategy(true),
            Some(GradientCheckpointingStrategy::Balanced)
        );
        assert_eq!(
            strategy(false),
            Some(GradientCheckpointingStrategy::Disabled)
        );
    }
}
