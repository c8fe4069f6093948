//! A recipe: one TOML file naming everything a training run needs.

use std::path::{Path, PathBuf};

use andes_data::dataset::{DataFormat, Windowing};
use andes_model::lora::{LoraConfig, LoraTarget};
use andes_model::precision::Precision;
use andes_model::quantize::{BaseFormats, BaseQuantization, PtqMethod};
use andes_quant::QuantFormat;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::objective::{GrpoSection, MpoSection};
use crate::schedule::Schedule;

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Next-token loss on every token of text documents.
    Pretrain,
    /// Next-token loss on the assistant turns of conversations.
    Sft,
    /// A LoRA adapter on the frozen float base (the `[lora]` section), trained on the masked
    /// next-token loss of its data: the float reference QALFT is measured against.
    Lora,
    /// Quantization-aware LoRA fine-tuning: the base quantized per `[quant]` and frozen on its
    /// fake-quant grid, the adapter (and optionally the grid's scales) trained against it.
    Qalft,
    /// Mixed Preference Optimization on preference pairs (the `[mpo]` section), against the
    /// starting checkpoint as a frozen reference.
    Mpo,
    /// Group Relative Policy Optimization on prompts with answers (the `[grpo]` section),
    /// against the starting checkpoint as a frozen reference.
    Grpo,
}

impl Stage {
    /// Whether the stage trains an adapter rather than the model's own weights.
    pub fn trains_adapter(self) -> bool {
        matches!(self, Stage::Lora | Stage::Qalft)
    }

    /// Whether the stage scores whole replies against a reference (its loss is not a
    /// next-token NLL, so it has no perplexity).
    pub fn scores_replies(self) -> bool {
        matches!(self, Stage::Mpo | Stage::Grpo)
    }

    /// The data formats the stage reads, for validation and its message.
    pub fn formats(self) -> &'static [DataFormat] {
        match self {
            Stage::Pretrain => &[DataFormat::Text, DataFormat::Chat, DataFormat::ImageCaption],
            Stage::Sft | Stage::Lora | Stage::Qalft => &[DataFormat::Text, DataFormat::Chat],
            Stage::Mpo => &[DataFormat::Preference],
            Stage::Grpo => &[DataFormat::Prompt],
        }
    }
}

/// `[model]`: where the starting weights, config and tokenizer come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face model directory to start from.
    pub checkpoint: PathBuf,
}

/// `[data]`: training and held-out files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Record layout of both files.
    pub format: DataFormat,
    /// Training file.
    pub train: PathBuf,
    /// Held-out file for periodic evaluation.
    pub eval: Option<PathBuf>,
    /// Tokens per training window.
    pub seq_len: usize,
    /// Count and skip malformed records instead of stopping at the first.
    #[serde(default)]
    pub skip_bad_records: bool,
}

impl DataSection {
    /// How both files become windows.
    pub fn windowing(&self) -> Windowing {
        Windowing {
            format: self.format,
            seq_len: self.seq_len,
            skip_bad_records: self.skip_bad_records,
        }
    }
}

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

/// `[quant]`: how a `qalft` run quantizes its base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantSection {
    /// One format for every linear (`int2-g64-asym`); exclusive with `plan`.
    pub format: Option<QuantFormat>,
    /// A `bit_plan.json` (from `andes quantize`, or edited by hand); exclusive with `format`.
    pub plan: Option<PathBuf>,
    /// The post-training quantizer that sets the initial codes and scales.
    #[serde(default = "default_initializer")]
    pub init: PtqMethod,
    /// Train the grid's scales (LSQ) along with the adapter.
    #[serde(default)]
    pub learn_scales: bool,
    /// Training windows (the first ones of the file) whose activations give GPTQ its Hessians.
    #[serde(default = "default_calibration_windows")]
    pub calibration_windows: usize,
}

impl QuantSection {
    /// The base quantization this section asks for (validation ensured exactly one of
    /// `format` and `plan`).
    pub fn base_quantization(&self) -> BaseQuantization {
        let formats = match (&self.plan, self.format) {
            (Some(path), _) => BaseFormats::Plan(path.clone()),
            (None, Some(format)) => BaseFormats::Uniform(format),
            (None, None) => unreachable!("the recipe is validated"),
        };
        BaseQuantization {
            formats,
            method: self.init,
            learn_scales: self.learn_scales,
            calibration_windows: self.calibration_windows,
        }
    }
}

fn default_initializer() -> PtqMethod {
    PtqMethod::Rtn
}
fn default_calibration_windows() -> usize {
    32
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
}

impl TrainSection {
    /// The run's precision: as set, else the device's default.
    pub fn precision(&self) -> Precision {
        self.precision
            .unwrap_or_else(|| Precision::default_for(&self.device))
    }
}

fn one() -> usize {
    1
}
fn default_device() -> String {
    "cpu".into()
}

/// A whole recipe file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The objective.
    pub stage: Stage,
    /// Seed of the data order.
    #[serde(default)]
    pub seed: u64,
    /// Starting model.
    pub model: ModelSection,
    /// Data.
    pub data: DataSection,
    /// AdamW.
    pub optimizer: OptimizerSection,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// The loop.
    pub train: TrainSection,
    /// The adapter of a `lora` or `qalft` run.
    pub lora: Option<LoraSection>,
    /// The quantized base of a `qalft` run.
    pub quant: Option<QuantSection>,
    /// The term weights of an `mpo` run (InternVL's defaults when absent).
    pub mpo: Option<MpoSection>,
    /// Sampling and reward of a `grpo` run.
    pub grpo: Option<GrpoSection>,
}

impl Recipe {
    /// Reads `path`, applies `overrides` (`section.key=value`, the value in TOML syntax or a
    /// bare string), and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut value: toml::Table = toml::from_str(&text).map_err(|e| TrainError::Recipe {
            path: path.to_owned(),
            key: String::new(),
            message: e.to_string(),
        })?;
        for assignment in overrides {
            apply_override(&mut value, assignment).map_err(|message| TrainError::Recipe {
                path: path.to_owned(),
                key: assignment.clone(),
                message,
            })?;
        }
        let mut recipe = Self::from_table(value, path)?;
        recipe
            .absolutize_paths()
            .map_err(|e| TrainError::io(path, e))?;
        Ok(recipe)
    }

    /// Makes every file path absolute (relative ones are relative to the working directory),
    /// so the resolved recipe saved with a run names the same files from anywhere.
    fn absolutize_paths(&mut self) -> std::io::Result<()> {
        let mut paths = vec![&mut self.model.checkpoint, &mut self.data.train];
        paths.extend(self.data.eval.as_mut());
        paths.extend(self.quant.as_mut().and_then(|q| q.plan.as_mut()));
        for path in paths {
            *path = std::path::absolute(&*path)?;
        }
        Ok(())
    }

    /// Parses an already-read table (`path` labels errors).
    pub fn from_table(table: toml::Table, path: &Path) -> Result<Self, TrainError> {
        let recipe: Recipe =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                TrainError::Recipe {
                    path: path.to_owned(),
                    key: e.path().to_string(),
                    message: e.inner().to_string(),
                }
            })?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    fn validate(&self, path: &Path) -> Result<(), TrainError> {
        let fail = |key: &str, message: &str| {
            Err(TrainError::Recipe {
                path: path.to_owned(),
                key: key.into(),
                message: message.into(),
            })
        };
        let positive = [
            ("train.steps", self.train.steps),
            ("train.batch_size", self.train.batch_size),
            ("train.grad_accum", self.train.grad_accum),
            ("train.checkpoint_every", self.train.checkpoint_every),
            ("data.seq_len", self.data.seq_len),
        ];
        for (key, value) in positive {
            if value == 0 {
                return fail(key, "found 0, expected a positive integer");
            }
        }
        let devices = self.train.device.split(',').count();
        if devices > 1 && self.stage == Stage::Mpo {
            return fail(
                "train.device",
                "stage mpo trains on one device: its quality term's shift is a running mean \
                 over the micro-batches in order",
            );
        }
        if self.train.grad_accum < devices {
            return fail(
                "train.grad_accum",
                &format!(
                    "found {}, expected at least {devices}, the number of devices in \
                     train.device: each device takes whole micro-batches of the step",
                    self.train.grad_accum
                ),
            );
        }
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
            return fail("optimizer.lr", "expected a positive number");
        }
        if !(0.0..1.0).contains(&self.optimizer.beta1)
            || !(0.0..1.0).contains(&self.optimizer.beta2)
        {
            return fail("optimizer.beta1", "betas must lie in [0, 1)");
        }
        if self.optimizer.grad_clip.is_some_and(|c| c <= 0.0) {
            return fail("optimizer.grad_clip", "expected a positive number");
        }
        if !(0.0..=1.0).contains(&self.schedule.min_lr_ratio) {
            return fail("schedule.min_lr_ratio", "expected a number in [0, 1]");
        }
        let adapter_stage = self.stage.trains_adapter();
        match (&self.lora, adapter_stage) {
            (None, true) => return fail("lora", "stages lora and qalft need a [lora] section"),
            (Some(_), false) => {
                return fail("lora", "[lora] is read only by stages lora and qalft");
            }
            (Some(lora), true) => {
                if let Err(e) = lora.config().validate() {
                    return fail("lora", &e.to_string());
                }
            }
            (None, false) => {}
        }
        match (&self.quant, self.stage == Stage::Qalft) {
            (None, true) => return fail("quant", "stage qalft needs a [quant] section"),
            (Some(_), false) => return fail("quant", "[quant] is read only by stage qalft"),
            (Some(quant), true) => {
                if quant.format.is_some() == quant.plan.is_some() {
                    return fail("quant", "give exactly one of `format` and `plan`");
                }
                if quant.init == PtqMethod::Gptq && quant.calibration_windows == 0 {
                    return fail(
                        "quant.calibration_windows",
                        "found 0; GPTQ needs calibration windows",
                    );
                }
            }
            (None, false) => {}
        }
        if !self.stage.formats().contains(&self.data.format) {
            return fail(
                "data.format",
                &format!(
                    "stage {:?} reads {:?}, found {:?}",
                    self.stage,
                    self.stage.formats(),
                    self.data.format
                ),
            );
        }
        if self.mpo.is_some() && self.stage != Stage::Mpo {
            return fail("mpo", "[mpo] is read only by stage mpo");
        }
        match (&self.grpo, self.stage == Stage::Grpo) {
            (None, true) => return fail("grpo", "stage grpo needs a [grpo] section"),
            (Some(_), false) => return fail("grpo", "[grpo] is read only by stage grpo"),
            (Some(grpo), true) => {
                if grpo.group_size < 2 {
                    return fail(
                        "grpo.group_size",
                        "expected 2 or more: advantages compare completions within a group",
                    );
                }
                if grpo.max_new_tokens == 0 || grpo.max_new_tokens >= self.data.seq_len {
                    return fail(
                        "grpo.max_new_tokens",
                        "expected at least 1 and below data.seq_len (the prompt needs room)",
                    );
                }
                if grpo.temperature.is_nan() || grpo.temperature <= 0.0 {
                    return fail("grpo.temperature", "expected a positive number");
                }
            }
            (None, false) => {}
        }
        Ok(())
    }

    /// Micro-batch windows per optimizer step.
    pub fn windows_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum
    }
}

/// Sets `a.b.c = value` in `table`; `value` is parsed as TOML, else taken as a string.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| "expected section.key=value".to_string())?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts.pop().ok_or("empty key")?;
    let mut current = table;
    for part in parts {
        current = current
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a section"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qalft_recipe() -> toml::Table {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/recipes/tiny/qalft.toml");
        toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn error_of(table: toml::Table) -> String {
        Recipe::from_table(table, Path::new("r.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_tiny_qalft_recipe_reads() {
        let recipe = Recipe::from_table(qalft_recipe(), Path::new("qalft.toml")).unwrap();
        assert_eq!(recipe.stage, Stage::Qalft);
        assert_eq!(recipe.quant.unwrap().init, PtqMethod::Gptq);
        assert_eq!(recipe.lora.unwrap().targets.len(), 7);
    }

    #[test]
    fn adapter_sections_must_match_the_stage() {
        let mut table = qalft_recipe();
        table.remove("quant");
        assert!(error_of(table).contains("stage qalft needs a [quant] section"));
        let mut table = qalft_recipe();
        table.insert("stage".into(), "sft".into());
        assert!(error_of(table).contains("[lora] is read only by stages lora and qalft"));
        let mut table = qalft_recipe();
        let quant = table["quant"].as_table_mut().unwrap();
        quant.insert("plan".into(), "bit_plan.json".into());
        assert!(error_of(table).contains("exactly one of `format` and `plan`"));
    }

    #[test]
    fn a_bad_format_or_rank_names_the_key() {
        let mut table = qalft_recipe();
        table["quant"]
            .as_table_mut()
            .unwrap()
            .insert("format".into(), "int5-g64-asym".into());
        let err = error_of(table);
        assert!(
            err.contains("quant.format") && err.contains("int5"),
            "{err}"
        );
        let mut table = qalft_recipe();
        table["lora"]
            .as_table_mut()
            .unwrap()
            .insert("rank".into(), 0.into());
        let err = error_of(table);
        assert!(err.contains("lora") && err.contains("found 0"), "{err}");
    }

    fn recipe(name: &str) -> toml::Table {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/recipes/tiny")
            .join(name);
        toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_rl_stages_need_their_format_and_section() {
        let mut table = recipe("grpo.toml");
        table["data"]
            .as_table_mut()
            .unwrap()
            .insert("format".into(), "chat".into());
        let err = error_of(table);
        assert!(
            err.contains("data.format") && err.contains("Prompt"),
            "{err}"
        );
        let mut table = recipe("grpo.toml");
        table.remove("grpo");
        assert!(error_of(table).contains("stage grpo needs a [grpo] section"));
        let mut table = recipe("grpo.toml");
        table["grpo"]
            .as_table_mut()
            .unwrap()
            .insert("group_size".into(), 1.into());
        assert!(error_of(table).contains("grpo.group_size"));
        let mut table = recipe("sft.toml");
        table["data"]
            .as_table_mut()
            .unwrap()
            .insert("format".into(), "preference".into());
        let err = error_of(table);
        assert!(
            err.contains("reads [Text, Chat], found Preference"),
            "{err}"
        );
        let mut table = recipe("sft.toml");
        table.insert("mpo".into(), toml::Value::Table(toml::Table::new()));
        assert!(error_of(table).contains("[mpo] is read only by stage mpo"));
        let mut table = recipe("grpo.toml");
        table["grpo"]
            .as_table_mut()
            .unwrap()
            .insert("reward".into(), "bleu".into());
        let err = error_of(table);
        assert!(
            err.contains("grpo.reward") && err.contains("numeric_match"),
            "{err}"
        );
    }
}
