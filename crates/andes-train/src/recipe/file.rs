//! The recipe file: the flat TOML layout a user writes, read into a [`Recipe`] (overrides
//! applied, every value checked, a refusal naming the file and the key) and written back from
//! one.

use std::path::{Path, PathBuf};

use andes_model::quantize::{BaseFormats, PtqMethod};
use andes_quant::QuantFormat;
use serde::{Deserialize, Serialize};

use andes_data::dataset::{DataFormat, Packing};

use super::{
    CALIBRATION_WINDOWS, DataSection, DataSource, DistillSection, LoraInit, LoraSection,
    ModelSection, OptimizerSection, QuantSection, Recipe, Stage, StageName, TrainSection,
};
use crate::error::TrainError;
use crate::objective::{GrpoSection, MpoSection};
use crate::schedule::Schedule;

/// A recipe file as written: the stage's name beside every section, the sections only some
/// stages read optional.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecipeFile {
    stage: StageName,
    #[serde(default)]
    seed: u64,
    model: ModelSection,
    data: DataSection,
    optimizer: OptimizerSection,
    #[serde(default)]
    schedule: Schedule,
    train: TrainSection,
    lora: Option<LoraSection>,
    quant: Option<QuantFile>,
    mpo: Option<MpoSection>,
    grpo: Option<GrpoSection>,
    distill: Option<DistillSection>,
}

/// `[quant]` as written: `format` and `plan` side by side, exactly one of them given.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QuantFile {
    format: Option<QuantFormat>,
    plan: Option<PathBuf>,
    #[serde(default = "default_initializer")]
    init: PtqMethod,
    #[serde(default)]
    learn_scales: bool,
    #[serde(default = "default_calibration_windows")]
    calibration_windows: usize,
}

fn default_initializer() -> PtqMethod {
    PtqMethod::Rtn
}
fn default_calibration_windows() -> usize {
    CALIBRATION_WINDOWS
}

/// `[data]` as written: one source's `format`, `train` and `eval`, or `[[data.sources]]`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DataFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<DataFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    train: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eval: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shuffle_buffer: Option<usize>,
    seq_len: usize,
    #[serde(default)]
    skip_bad_records: bool,
    #[serde(default)]
    packing: Packing,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<DataSource>,
}

impl TryFrom<DataFile> for DataSection {
    type Error = String;

    /// One source from `format`/`train`/`eval`, or the `sources` list, each source's weight
    /// checked and its name defaulted to its file's stem (names unique).
    fn try_from(file: DataFile) -> Result<Self, String> {
        let single = file.format.is_some()
            || file.train.is_some()
            || file.eval.is_some()
            || file.shuffle_buffer.is_some();
        let mut sources = match (single, file.sources.is_empty()) {
            (true, false) => {
                return Err("data: give either format, train and eval (one file) or                             [[data.sources]], not both"
                    .into());
            }
            (true, true) => {
                let (Some(format), Some(path)) = (file.format, file.train) else {
                    return Err("data: format and train name the training file (or use                                 [[data.sources]])"
                        .into());
                };
                vec![DataSource {
                    name: String::new(),
                    format,
                    path,
                    eval: file.eval,
                    weight: 1.0,
                    shuffle_buffer: file.shuffle_buffer,
                }]
            }
            (false, true) => {
                return Err("data: no training data; give format and train, or                             [[data.sources]] with path, format and weight"
                    .into());
            }
            (false, false) => file.sources,
        };
        let mut names = std::collections::HashSet::new();
        for (i, source) in sources.iter_mut().enumerate() {
            if !(source.weight.is_finite() && source.weight > 0.0) {
                return Err(format!(
                    "data.sources[{i}].weight: found {}, expected a positive number (a                      source's share of the examples drawn, relative to the others')",
                    source.weight
                ));
            }
            if source.name.is_empty() {
                source.name = stem(&source.path);
            }
            if let Some(buffer) = source.shuffle_buffer {
                let key = format!("data.sources[{i}].shuffle_buffer");
                if buffer == 0 {
                    return Err(format!("{key}: found 0, expected a number of records"));
                }
                if !source.format.is_packed() {
                    return Err(format!(
                        "{key}: streaming reads text and chat records; this source is {:?}",
                        source.format
                    ));
                }
                if file.packing != Packing::Stream {
                    return Err(format!(
                        "{key}: a streamed source is cut as one stream; data.packing \
                         \"padding_free\" and \"padded\" need the file whole"
                    ));
                }
            }
            if !names.insert(source.name.clone()) {
                return Err(format!(
                    "data.sources[{i}].name: {:?} names two sources; give each its own name",
                    source.name
                ));
            }
        }
        Ok(DataSection {
            sources,
            seq_len: file.seq_len,
            skip_bad_records: file.skip_bad_records,
            packing: file.packing,
        })
    }
}

impl From<DataSection> for DataFile {
    /// A single source of weight 1 named by its file is written as `format`, `train` and
    /// `eval`, as the user wrote it; anything else as `sources`.
    fn from(data: DataSection) -> Self {
        let plain = match data.sources.as_slice() {
            [source] if source.weight == 1.0 && source.name == stem(&source.path) => {
                Some(source.clone())
            }
            _ => None,
        };
        Self {
            format: plain.as_ref().map(|source| source.format),
            train: plain.as_ref().map(|source| source.path.clone()),
            eval: plain.as_ref().and_then(|source| source.eval.clone()),
            shuffle_buffer: plain.as_ref().and_then(|source| source.shuffle_buffer),
            seq_len: data.seq_len,
            skip_bad_records: data.skip_bad_records,
            packing: data.packing,
            sources: if plain.is_some() {
                Vec::new()
            } else {
                data.sources
            },
        }
    }
}

/// A source's default name: its training file's stem.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Recipe {
    /// Reads `path`, applies `overrides` (`section.key=value`, the value in TOML syntax or a
    /// bare string), and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut value: toml::Table = toml::from_str(&text).map_err(|e| refuse(path, "", e))?;
        for assignment in overrides {
            apply_override(&mut value, assignment)
                .map_err(|message| refuse(path, assignment, message))?;
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
        let mut paths = vec![&mut self.model.checkpoint];
        for source in &mut self.data.sources {
            paths.push(&mut source.path);
            paths.extend(source.eval.as_mut());
        }
        paths.extend(self.model.package.as_mut());
        let (quant, distill) = match &mut self.stage {
            Stage::Qalft { quant, distill, .. } | Stage::Qat { quant, distill } => {
                (Some(quant), distill.as_mut())
            }
            Stage::Lora { distill, .. } => (None, distill.as_mut()),
            _ => (None, None),
        };
        if let Some(QuantSection {
            formats: BaseFormats::Plan(plan),
            ..
        }) = quant
        {
            paths.push(plan);
        }
        if let Some(distill) = distill {
            paths.extend(distill.teacher.as_mut());
            paths.extend(distill.teacher_adapter.as_mut());
        }
        for path in paths {
            *path = std::path::absolute(&*path)?;
        }
        Ok(())
    }

    /// Parses an already-read table (`path` labels errors).
    pub fn from_table(table: toml::Table, path: &Path) -> Result<Self, TrainError> {
        let file: RecipeFile = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| refuse(path, &e.path().to_string(), e.inner()))?;
        file.into_recipe(path)
    }
}

impl RecipeFile {
    /// The typed recipe: the shared sections' values checked, then the stage built with its
    /// own sections, then what the stage asks of the shared sections.
    fn into_recipe(self, path: &Path) -> Result<Recipe, TrainError> {
        self.check_loop(path)?;
        let sections = StageSections {
            lora: self.lora,
            quant: self.quant,
            mpo: self.mpo,
            grpo: self.grpo,
            distill: self.distill,
        };
        let stage = sections.into_stage(self.stage, self.data.seq_len, path)?;
        check_stage_fits(&stage, &self.data, &self.train, path)?;
        check_package_stage(&stage, &self.model, path)?;
        check_lora_init(&stage, &self.model, path)?;
        check_distill_student(&stage, &self.model, path)?;
        if stage.distill().is_some() && device_count(&self.train) > 1 {
            return Err(refuse(
                path,
                "distill",
                "the teacher runs on one device; data-parallel distillation is not built: \
                 train.device names one device",
            ));
        }
        let recipe = Recipe {
            stage,
            seed: self.seed,
            model: self.model,
            data: self.data,
            optimizer: self.optimizer,
            schedule: self.schedule,
            train: self.train,
        };
        if let (Some(true), Some(refusal)) = (recipe.train.replay, recipe.replay_refusal()) {
            let message = format!("this run cannot replay its step: {refusal}");
            return Err(refuse(path, "train.replay", &message));
        }
        Ok(recipe)
    }

    /// Checks the values of the sections every stage reads.
    fn check_loop(&self, path: &Path) -> Result<(), TrainError> {
        let fail = |key: &str, message: &str| Err(refuse(path, key, message));
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
        let devices = device_count(&self.train);
        if self.train.grad_accum < devices {
            let message = format!(
                "found {}, expected at least {devices}, the number of devices in train.device: \
                 each device takes whole micro-batches of the step",
                self.train.grad_accum
            );
            return fail("train.grad_accum", &message);
        }
        let optimizer = &self.optimizer;
        if !(optimizer.lr.is_finite() && optimizer.lr > 0.0) {
            return fail("optimizer.lr", "expected a positive number");
        }
        if !(0.0..1.0).contains(&optimizer.beta1) || !(0.0..1.0).contains(&optimizer.beta2) {
            return fail("optimizer.beta1", "betas must lie in [0, 1)");
        }
        if !(self.train.bucket_mb.is_finite() && self.train.bucket_mb > 0.0) {
            return fail("train.bucket_mb", "expected a positive number of MiB");
        }
        if optimizer.grad_clip.is_some_and(|c| c <= 0.0) {
            return fail("optimizer.grad_clip", "expected a positive number");
        }
        if !(0.0..=1.0).contains(&self.schedule.min_lr_ratio) {
            return fail("schedule.min_lr_ratio", "expected a number in [0, 1]");
        }
        Ok(())
    }
}

impl From<Recipe> for RecipeFile {
    fn from(recipe: Recipe) -> Self {
        let stage = recipe.stage.name();
        let sections = StageSections::from(recipe.stage);
        Self {
            stage,
            seed: recipe.seed,
            model: recipe.model,
            data: recipe.data,
            optimizer: recipe.optimizer,
            schedule: recipe.schedule,
            train: recipe.train,
            lora: sections.lora,
            quant: sections.quant,
            mpo: sections.mpo,
            grpo: sections.grpo,
            distill: sections.distill,
        }
    }
}

/// The sections of a file that only some stages read. Building the stage takes its own out;
/// one left over is a section that stage does not read.
#[derive(Default)]
struct StageSections {
    lora: Option<LoraSection>,
    quant: Option<QuantFile>,
    mpo: Option<MpoSection>,
    grpo: Option<GrpoSection>,
    distill: Option<DistillSection>,
}

impl StageSections {
    /// Stage `name` with its sections, each checked (`seq_len` bounds GRPO's completions);
    /// refused, naming the key, when one it needs is missing or one it does not read is given.
    fn into_stage(
        mut self,
        name: StageName,
        seq_len: usize,
        path: &Path,
    ) -> Result<Stage, TrainError> {
        let stage = match name {
            StageName::Pretrain => Stage::Pretrain,
            StageName::Sft => Stage::Sft,
            StageName::Lora => Stage::Lora {
                lora: self.take_lora(name, path)?,
                distill: self.take_distill(path)?,
            },
            StageName::Qalft => Stage::Qalft {
                lora: self.take_lora(name, path)?,
                quant: needed(self.quant.take(), name, "quant", path)?.into_section(path)?,
                distill: self.take_distill(path)?,
            },
            StageName::Qat => Stage::Qat {
                quant: needed(self.quant.take(), name, "quant", path)?.into_section(path)?,
                distill: self.take_distill(path)?,
            },
            StageName::Mpo => Stage::Mpo {
                mpo: self.mpo.take().unwrap_or_default(),
            },
            StageName::Grpo => {
                let grpo = needed(self.grpo.take(), name, "grpo", path)?;
                check_grpo(&grpo, seq_len, path)?;
                Stage::Grpo { grpo }
            }
        };
        self.refuse_unread(name, path)?;
        Ok(stage)
    }

    /// The `[lora]` that stage `stage` needs, its values checked.
    fn take_lora(&mut self, stage: StageName, path: &Path) -> Result<LoraSection, TrainError> {
        let lora = needed(self.lora.take(), stage, "lora", path)?;
        lora.config()
            .validate()
            .map_err(|e| refuse(path, "lora", e))?;
        Ok(lora)
    }

    /// The optional `[distill]`, its values checked.
    fn take_distill(&mut self, path: &Path) -> Result<Option<DistillSection>, TrainError> {
        let Some(distill) = self.distill.take() else {
            return Ok(None);
        };
        if !(distill.temperature.is_finite() && distill.temperature > 0.0) {
            return Err(refuse(
                path,
                "distill.temperature",
                "expected a positive number",
            ));
        }
        if !(0.0..=1.0).contains(&distill.weight) {
            return Err(refuse(
                path,
                "distill.weight",
                "expected a number in [0, 1]",
            ));
        }
        Ok(Some(distill))
    }

    /// Refuses the first section left over: one that stage `name` does not read.
    fn refuse_unread(self, name: StageName, path: &Path) -> Result<(), TrainError> {
        let given = [
            ("lora", self.lora.is_some(), "stages lora and qalft"),
            ("quant", self.quant.is_some(), "stages qalft and qat"),
            (
                "distill",
                self.distill.is_some(),
                "stages lora, qalft and qat",
            ),
            ("mpo", self.mpo.is_some(), "stage mpo"),
            ("grpo", self.grpo.is_some(), "stage grpo"),
        ];
        match given.into_iter().find(|(_, given, _)| *given) {
            Some((key, _, readers)) => Err(refuse(
                path,
                key,
                format!("[{key}] is read only by {readers}, not by stage {name}"),
            )),
            None => Ok(()),
        }
    }
}

impl From<Stage> for StageSections {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Pretrain | Stage::Sft => Self::default(),
            Stage::Lora { lora, distill } => Self {
                lora: Some(lora),
                distill,
                ..Self::default()
            },
            Stage::Qalft {
                lora,
                quant,
                distill,
            } => Self {
                lora: Some(lora),
                quant: Some(quant.into()),
                distill,
                ..Self::default()
            },
            Stage::Qat { quant, distill } => Self {
                quant: Some(quant.into()),
                distill,
                ..Self::default()
            },
            Stage::Mpo { mpo } => Self {
                mpo: Some(mpo),
                ..Self::default()
            },
            Stage::Grpo { grpo } => Self {
                grpo: Some(grpo),
                ..Self::default()
            },
        }
    }
}

impl QuantFile {
    /// The section with its formats as one value, checked.
    fn into_section(self, path: &Path) -> Result<QuantSection, TrainError> {
        let formats = match (self.format, self.plan) {
            (Some(format), None) => BaseFormats::Uniform(format),
            (None, Some(plan)) => BaseFormats::Plan(plan),
            (Some(_), Some(_)) | (None, None) => {
                return Err(refuse(
                    path,
                    "quant",
                    "give exactly one of `format` and `plan`",
                ));
            }
        };
        if self.init == PtqMethod::Gptq && self.calibration_windows == 0 {
            return Err(refuse(
                path,
                "quant.calibration_windows",
                "found 0; GPTQ needs calibration windows",
            ));
        }
        Ok(QuantSection {
            formats,
            init: self.init,
            learn_scales: self.learn_scales,
            calibration_windows: self.calibration_windows,
        })
    }
}

impl From<QuantSection> for QuantFile {
    fn from(section: QuantSection) -> Self {
        let (format, plan) = match section.formats {
            BaseFormats::Uniform(format) => (Some(format), None),
            BaseFormats::Plan(plan) => (None, Some(plan)),
        };
        Self {
            format,
            plan,
            init: section.init,
            learn_scales: section.learn_scales,
            calibration_windows: section.calibration_windows,
        }
    }
}

/// Checks `[grpo]`'s values; completions must leave a prompt room within `seq_len`.
fn check_grpo(grpo: &GrpoSection, seq_len: usize, path: &Path) -> Result<(), TrainError> {
    if grpo.group_size < 2 {
        return Err(refuse(
            path,
            "grpo.group_size",
            "expected 2 or more: advantages compare completions within a group",
        ));
    }
    if grpo.max_new_tokens == 0 || grpo.max_new_tokens >= seq_len {
        return Err(refuse(
            path,
            "grpo.max_new_tokens",
            "expected at least 1 and below data.seq_len (the prompt needs room)",
        ));
    }
    if grpo.temperature.is_nan() || grpo.temperature <= 0.0 {
        return Err(refuse(
            path,
            "grpo.temperature",
            "expected a positive number",
        ));
    }
    Ok(())
}

/// Checks what `stage` asks of the shared sections: data it reads, and one device for `mpo`.
fn check_stage_fits(
    stage: &Stage,
    data: &DataSection,
    train: &TrainSection,
    path: &Path,
) -> Result<(), TrainError> {
    if matches!(stage, Stage::Mpo { .. }) && device_count(train) > 1 {
        return Err(refuse(
            path,
            "train.device",
            "stage mpo trains on one device: its quality term's shift is a running mean over \
             the micro-batches in order",
        ));
    }
    for (i, source) in data.sources.iter().enumerate() {
        if !stage.formats().contains(&source.format) {
            let message = format!(
                "stage {} reads {:?}, found {:?}",
                stage.name(),
                stage.formats(),
                source.format
            );
            let key = match data.sources.len() {
                1 => "data.format".to_string(),
                _ => format!("data.sources[{i}].format"),
            };
            return Err(refuse(path, &key, message));
        }
    }
    if data
        .sources
        .iter()
        .any(|source| source.shuffle_buffer.is_some())
    {
        if !matches!(stage, Stage::Pretrain | Stage::Sft | Stage::Lora { .. }) {
            return Err(refuse(
                path,
                "data.shuffle_buffer",
                format!(
                    "stage {} reads its training file whole (calibration, pairs or prompts); \
                     streaming is for pretrain, sft and lora",
                    stage.name()
                ),
            ));
        }
        if device_count(train) > 1 {
            return Err(refuse(
                path,
                "data.shuffle_buffer",
                "a streamed source feeds one device; data-parallel streaming is not built",
            ));
        }
    }
    if data.sources.len() > 1 && !stage.mixes_sources() {
        return Err(refuse(
            path,
            "data.sources",
            format!(
                "stage {} reads one file; mixtures are for the next-token stages",
                stage.name()
            ),
        ));
    }
    Ok(())
}

/// Devices named in `train.device`.
pub(super) fn device_count(train: &TrainSection) -> usize {
    train.device.split(',').count()
}

/// `section`, which stage `stage` needs under `key`.
fn needed<T>(
    section: Option<T>,
    stage: StageName,
    key: &str,
    path: &Path,
) -> Result<T, TrainError> {
    section.ok_or_else(|| refuse(path, key, format!("stage {stage} needs a [{key}] section")))
}

/// The refusal of key `key` of recipe `path`.
fn refuse(path: &Path, key: &str, message: impl ToString) -> TrainError {
    TrainError::Recipe {
        path: path.to_owned(),
        key: key.into(),
        message: message.to_string(),
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

/// A package is the frozen base of the `lora` stage only: a stage that trains the whole model
/// would leave the package's grid, and `qalft` quantizes its own base, which a package has
/// already fixed.
fn check_package_stage(stage: &Stage, model: &ModelSection, path: &Path) -> Result<(), TrainError> {
    if model.package.is_none() || matches!(stage, Stage::Lora { .. }) {
        return Ok(());
    }
    let why = match stage {
        Stage::Qalft { .. } => {
            "a package's base is already quantized, and qalft would quantize it again by its \
             [quant] section; train adapters against a package with stage = \"lora\""
        }
        _ => {
            "a package is the frozen base of adapters (stage = \"lora\"); this stage trains \
              the whole model"
        }
    };
    Err(refuse(
        path,
        "model.package",
        format!("stage {}: {why}", stage.name()),
    ))
}

/// An adapter can start at the base's quantization error only where the base is quantized:
/// `qalft`'s own grid, or the package a `lora` run trains against.
fn check_lora_init(stage: &Stage, model: &ModelSection, path: &Path) -> Result<(), TrainError> {
    match stage.adapter() {
        Some(sections)
            if sections.lora.init == LoraInit::QuantizationResidual
                && sections.quant.is_none()
                && model.package.is_none() =>
        {
            Err(refuse(
                path,
                "lora.init",
                "quantization-residual starts the adapter at the quantized base's error, and \
                 this base is float: name a package in [model] package, use stage = \"qalft\", \
                 or init = \"zero-update\"",
            ))
        }
        _ => Ok(()),
    }
}

/// A `lora` run on the float base distils only from a teacher that differs from its own base
/// (another model, or an adapter on it, e.g. the float-trained adapter the package's adapters
/// distil from, trained again the same way as their reference): the base alone as teacher
/// would only pull the adapter towards changing nothing.
fn check_distill_student(
    stage: &Stage,
    model: &ModelSection,
    path: &Path,
) -> Result<(), TrainError> {
    match stage {
        Stage::Lora {
            distill:
                Some(DistillSection {
                    teacher: None,
                    teacher_adapter: None,
                    ..
                }),
            ..
        } if model.package.is_none() => Err(refuse(
            path,
            "distill",
            "this lora base is float and the teacher would be that base itself: name \
             distill.teacher_adapter (the task's float-trained adapter) or distill.teacher, or \
             train against a package ([model] package)",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(name: &str) -> toml::Table {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/recipes/tiny")
            .join(name);
        toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn qalft_recipe() -> toml::Table {
        recipe("qalft.toml")
    }

    fn error_of(table: toml::Table) -> String {
        Recipe::from_table(table, Path::new("r.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_tiny_qalft_recipe_reads() {
        let recipe = Recipe::from_table(qalft_recipe(), Path::new("qalft.toml")).unwrap();
        let Stage::Qalft { lora, quant, .. } = recipe.stage else {
            panic!("read as {:?}", recipe.stage);
        };
        assert_eq!(quant.init, PtqMethod::Gptq);
        assert_eq!(lora.targets.len(), 7);
    }

    /// Every shipped recipe loads, and its resolved form (what a run directory keeps for
    /// `--resume`) reads back as the same recipe.
    #[test]
    fn every_shipped_recipe_reads_and_its_saved_form_reads_back_the_same() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/recipes");
        let mut dirs = vec![root];
        let mut read = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let recipe = Recipe::from_table(toml::from_str(&text).unwrap(), &path)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let saved = toml::to_string(&recipe).unwrap();
                    let again = Recipe::from_table(toml::from_str(&saved).unwrap(), &path)
                        .unwrap_or_else(|e| panic!("{e}\n{saved}"));
                    assert_eq!(again, recipe, "{}", path.display());
                    read += 1;
                }
            }
        }
        assert!(read >= 13, "found {read} recipes");
    }

    #[test]
    fn adapter_sections_must_match_the_stage() {
        let mut table = qalft_recipe();
        table.remove("quant");
        assert!(error_of(table).contains("stage qalft needs a [quant] section"));
        let mut table = qalft_recipe();
        table.insert("stage".into(), "sft".into());
        assert!(error_of(table).contains("[lora] is read only by stages lora and qalft"));
        for plan in [Some("bit_plan.json"), None] {
            let mut table = qalft_recipe();
            let quant = table["quant"].as_table_mut().unwrap();
            match plan {
                Some(plan) => quant.insert("plan".into(), plan.into()),
                None => quant.remove("format"),
            };
            assert!(error_of(table).contains("exactly one of `format` and `plan`"));
        }
    }

    /// A section that the recipe's stage does not read is refused by its key, whichever
    /// stage and section.
    #[test]
    fn a_section_its_stage_does_not_read_is_refused_by_key() {
        let cases = [
            ("pretrain.toml", "grpo.toml", "grpo", "stage grpo"),
            ("lora.toml", "qalft.toml", "quant", "stages qalft and qat"),
            ("mpo.toml", "lora.toml", "lora", "stages lora and qalft"),
            ("grpo.toml", "mpo.toml", "mpo", "stage mpo"),
        ];
        for (name, donor, key, readers) in cases {
            let mut table = recipe(name);
            table.insert(key.into(), recipe(donor)[key].clone());
            let err = error_of(table);
            assert!(
                err.contains(&format!("key `{key}`"))
                    && err.contains(&format!("[{key}] is read only by {readers}")),
                "{name} with [{key}]: {err}"
            );
        }
    }

    /// A stage without the section it needs is refused by that section's key; `mpo`, whose
    /// section is optional, takes InternVL's weights instead.
    #[test]
    fn a_stage_without_its_section_is_refused_by_key() {
        let cases = [
            ("lora.toml", "lora", "stage lora"),
            ("qalft.toml", "lora", "stage qalft"),
            ("qalft.toml", "quant", "stage qalft"),
            ("grpo.toml", "grpo", "stage grpo"),
        ];
        for (name, key, stage) in cases {
            let mut table = recipe(name);
            table.remove(key);
            let err = error_of(table);
            assert!(
                err.contains(&format!("key `{key}`"))
                    && err.contains(&format!("{stage} needs a [{key}] section")),
                "{name} without [{key}]: {err}"
            );
        }
        let mut table = recipe("mpo.toml");
        table.remove("mpo");
        let recipe = Recipe::from_table(table, Path::new("mpo.toml")).unwrap();
        assert_eq!(
            recipe.stage,
            Stage::Mpo {
                mpo: MpoSection::default()
            }
        );
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

    /// `[distill]` is read by `qat` (and `qalft`, and `lora`), its values checked, and
    /// round-trips; a `lora` run on the float base with that base as its teacher and any other
    /// stage refuse it by key.
    #[test]
    fn distill_is_read_by_qat_checked_and_refused_elsewhere() {
        let distill: toml::Table =
            toml::from_str("teacher = \"fixtures/x\"\nweight = 0.25").unwrap();
        let mut table = recipe("qat.toml");
        table.insert("distill".into(), distill.clone().into());
        let path = Path::new("qat.toml");
        let parsed = Recipe::from_table(table.clone(), path).unwrap();
        let section = parsed.stage.distill().unwrap();
        assert_eq!((section.weight, section.temperature), (0.25, 1.0));
        let saved = toml::to_string(&parsed).unwrap();
        assert_eq!(
            Recipe::from_table(toml::from_str(&saved).unwrap(), path).unwrap(),
            parsed
        );

        let mut parallel = table.clone();
        let train = parallel["train"].as_table_mut().unwrap();
        train.insert("device".into(), "cpu,cpu".into());
        train.insert("grad_accum".into(), 2.into());
        assert!(error_of(parallel).contains("one device"));
        let settings = table["distill"].as_table_mut().unwrap();
        settings.insert("weight".into(), 1.5.into());
        assert!(error_of(table).contains("key `distill.weight`"));
        let mut lora = recipe("lora.toml");
        lora.insert("distill".into(), distill.clone().into());
        let settings = lora["distill"].as_table_mut().unwrap();
        settings.remove("teacher");
        assert!(error_of(lora.clone()).contains("teacher would be that base itself"));
        let mut taught = lora.clone();
        let settings = taught["distill"].as_table_mut().unwrap();
        settings.insert("teacher_adapter".into(), "runs/float-adapter".into());
        let float_base = Recipe::from_table(taught, Path::new("lora.toml")).unwrap();
        assert!(
            float_base
                .stage
                .distill()
                .unwrap()
                .teacher_adapter
                .is_some()
        );
        let model = lora["model"].as_table_mut().unwrap();
        model.insert("package".into(), "runs/package".into());
        let against_package = Recipe::from_table(lora, Path::new("lora.toml")).unwrap();
        assert_eq!(against_package.stage.distill().unwrap().weight, 0.25);
        let mut sft = recipe("sft.toml");
        sft.insert("distill".into(), distill.into());
        assert!(error_of(sft).contains("[distill] is read only by stages lora, qalft and qat"));
    }

    #[test]
    fn a_mixture_reads_with_names_and_weights_and_bad_sources_are_refused() {
        let mixture = Recipe::from_table(recipe("mixture.toml"), Path::new("m.toml")).unwrap();
        let names: Vec<&str> = mixture
            .data
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["prose", "ocr", "icons"]);
        assert_eq!(mixture.data.weights(), [1.0, 2.0, 2.0]);
        let single = Recipe::from_table(recipe("sft.toml"), Path::new("s.toml")).unwrap();
        assert_eq!(single.data.sources.len(), 1);
        assert_eq!(single.data.primary().name, "gcide-define-train");
        let saved = toml::to_string(&single).unwrap();
        assert!(
            saved.contains("train = ") && !saved.contains("sources"),
            "{saved}"
        );

        let with_source = |edit: &dyn Fn(&mut toml::Table)| {
            let mut table = recipe("mixture.toml");
            let data = table["data"].as_table_mut().unwrap();
            edit(
                data["sources"].as_array_mut().unwrap()[1]
                    .as_table_mut()
                    .unwrap(),
            );
            error_of(table)
        };
        for weight in [0.0, -1.0] {
            let error = with_source(&|source| {
                source.insert("weight".into(), weight.into());
            });
            assert!(error.contains("data.sources[1].weight: found"), "{error}");
        }
        let error = with_source(&|source| {
            source.insert("name".into(), "prose".into());
        });
        assert!(
            error.contains("data.sources[1].name: \"prose\" names two"),
            "{error}"
        );
        let error = with_source(&|source| {
            source.insert("format".into(), "preference".into());
        });
        assert!(error.contains("data.sources[1].format"), "{error}");
        let error = with_source(&|source| {
            source.insert("shuffle_buffer".into(), 0.into());
        });
        assert!(
            error.contains("data.sources[1].shuffle_buffer: found 0"),
            "{error}"
        );
        let mut streamed_qalft = qalft_recipe();
        let data = streamed_qalft["data"].as_table_mut().unwrap();
        data.insert("shuffle_buffer".into(), 100.into());
        let error = error_of(streamed_qalft);
        assert!(
            error.contains("data.shuffle_buffer") && error.contains("stage qalft"),
            "{error}"
        );
        let mut padded = recipe("sft.toml");
        let data = padded["data"].as_table_mut().unwrap();
        data.insert("shuffle_buffer".into(), 100.into());
        data.insert("packing".into(), "padding_free".into());
        assert!(error_of(padded).contains("need the file whole"));
        let mut both = recipe("mixture.toml");
        let data = both["data"].as_table_mut().unwrap();
        data.insert("format".into(), "text".into());
        data.insert("train".into(), "x.txt".into());
        assert!(error_of(both).contains("not both"));
        let mut grpo = recipe("grpo.toml");
        let mut sources = toml::value::Array::new();
        for name in ["a", "b"] {
            let mut source = toml::Table::new();
            source.insert("name".into(), name.into());
            source.insert("path".into(), "p.jsonl".into());
            source.insert("format".into(), "prompt".into());
            sources.push(source.into());
        }
        let data = grpo["data"].as_table_mut().unwrap();
        data.remove("format");
        data.remove("train");
        data.remove("eval");
        data.insert("sources".into(), sources.into());
        assert!(error_of(grpo).contains("stage grpo reads one file"));
    }
}
