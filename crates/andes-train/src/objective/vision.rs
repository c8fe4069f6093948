//! Training an AndesVL model on images: image-caption pairs (pretraining; with
//! `freeze = ["language_model."]` AndesVL's alignment phase, vision side and projector only)
//! and conversations that show images (SFT). Each image becomes its visual tokens at its
//! place in the row; the next-token loss counts the caption, or the assistant turns, only.

use std::path::Path;

use andes_data::TextTokenizer;
use andes_data::dataset::counted_targets;
use andes_model::andesvl::rows::{VisualExample, VisualRow, VisualRows, load_visual_examples};
use andes_model::andesvl::{AndesVL, ImagePlacement};
use andes_model::{Model, ModelConfig};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, Tensor};

use super::{
    Evaluation, Objective, ReplyRows, Shard, SourceShare, StepBatches, StepFigures, StepOutput,
    accumulate_share, load_splits, scalar,
};
use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::recipe::Recipe;

/// Mean NLL of the scored tokens of image-caption, conversation (and, in a mixture, text)
/// sources, drawn by weight.
pub struct VisionObjective {
    /// Each source's training records, in the recipe's order.
    train: Vec<Vec<VisualExample>>,
    /// Each source's name, held-out records and index, for the sources with a held-out file.
    eval: Vec<(String, Vec<VisualExample>, usize)>,
    /// Each source's row maker (its file labels errors).
    rows: Vec<VisualRows>,
    batches: StepBatches,
}

/// Each row's summed NLL of its scored tokens, `[rows]`.
fn rows_nll(model: &AndesVL, rows: Vec<VisualRow>) -> Result<Tensor<1>, TrainError> {
    let device: Device = model.devices()[0].clone();
    let (masked, placements): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .enumerate()
        .map(|(sequence, row)| {
            let placements = VisualRow::placements(row.images, sequence, &device);
            ((row.tokens.ids, row.tokens.loss_mask), placements)
        })
        .unzip();
    let batch = ReplyRows::masked(&masked, &device);
    let placements: Vec<ImagePlacement> = placements.into_iter().flatten().collect();
    let mut cache = model.language_model.new_cache();
    let embeddings = model.embed(batch.inputs.clone(), &placements)?;
    let hidden = model
        .language_model
        .forward_embeddings(embeddings, &mut cache)?;
    Ok(batch
        .log_probs(&model.language_model, hidden)
        .sum_dim(1)
        .squeeze_dim::<1>(1)
        .neg())
}

impl VisionObjective {
    /// Reads the recipe's files (format `image_caption` or `chat`); the images' preprocessing
    /// comes from the starting checkpoint's `preprocessor_config.json`. `config` must be an
    /// AndesVL model's.
    pub fn new(
        recipe: &Recipe,
        tokenizer: &TextTokenizer,
        config: &ModelConfig,
    ) -> Result<Self, TrainError> {
        let ModelConfig::VisionLanguage(config) = config else {
            return Err(TrainError::WrongModel {
                path: recipe.model.checkpoint.join("config.json"),
                message: "data.format image_caption trains a vision-language model; this \
                          checkpoint is a text model (expected model_type \"andesvl\", see \
                          `andes assemble`)"
                    .into(),
            });
        };
        let data = &recipe.data;
        let (mut train, mut eval, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (index, source) in data.sources.iter().enumerate() {
            let load = |path: &Path| {
                load_visual_examples(path, source.format, tokenizer, data.skip_bad_records)
                    .map_err(TrainError::from)
            };
            let (source_train, source_eval) = load_splits(source, load)?;
            train.push(source_train);
            eval.extend(source_eval.map(|records| (source.name.clone(), records, index)));
            rows.push(VisualRows::new(
                &recipe.model.checkpoint,
                &source.path,
                tokenizer,
                config,
                data.seq_len,
            )?);
        }
        Ok(Self {
            train,
            eval,
            rows,
            batches: StepBatches::of(recipe),
        })
    }
}

/// Tokens of `row` the loss counts.
fn scored_tokens(row: &VisualRow) -> usize {
    counted_targets(&row.tokens.loss_mask)
}

/// The AndesVL model of a run whose data show images (checked when the objective is built).
fn vision_language(model: &Model) -> &AndesVL {
    model
        .vision_language()
        .expect("the vision objective is built for AndesVL checkpoints only")
}

impl Objective for VisionObjective {
    fn step(
        &self,
        model: &Model,
        state: &mut TrainerState,
        _step_seed: u64,
        shard: Shard,
    ) -> Result<StepOutput, TrainError> {
        let model = vision_language(model);
        // Every shard builds every row on the host: the step's token count, the loss's
        // divisor, needs each image's size. Only its own rows go to the device.
        let sources: Vec<&[VisualExample]> = self.train.iter().map(Vec::as_slice).collect();
        let micro_batches = self
            .batches
            .draw_from(&sources, state)
            .into_iter()
            .map(|drawn| {
                drawn
                    .into_iter()
                    .map(|(source, example)| Ok((source, self.rows[source].row(model, example)?)))
                    .collect::<Result<Vec<_>, TrainError>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|(_, row)| scored_tokens(row))
            .sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut nll_sum = 0.0;
        let mut shard_tokens = 0;
        let mut source_shares = Vec::new();
        for (index, drawn) in micro_batches.into_iter().enumerate() {
            if !shard.owns(index) {
                continue;
            }
            let (row_sources, rows): (Vec<usize>, Vec<VisualRow>) = drawn.into_iter().unzip();
            let row_tokens: Vec<usize> = rows.iter().map(scored_tokens).collect();
            shard_tokens += row_tokens.iter().sum::<usize>();
            let row_nll = rows_nll(model, rows)?;
            if self.train.len() > 1 {
                SourceShare::add_rows(
                    &mut source_shares,
                    self.train.len(),
                    &row_sources,
                    row_nll.clone(),
                    &row_tokens,
                );
            }
            let nll = row_nll.sum();
            nll_sum += accumulate_share(&mut accumulator, model, nll, tokens as f64);
        }
        Ok(StepOutput {
            grads: accumulator.grads(),
            figures: StepFigures {
                loss: nll_sum / tokens.max(1) as f64,
                tokens: shard_tokens,
                sources: source_shares,
                ..StepFigures::default()
            },
        })
    }

    fn evaluate(&self, model: &Model) -> Result<Option<Evaluation>, TrainError> {
        let model = vision_language(model).valid();
        let mut losses = Vec::with_capacity(self.eval.len());
        for (name, eval, source) in &self.eval {
            let (mut nll, mut tokens) = (0.0, 0usize);
            let examples: Vec<&VisualExample> = eval.iter().collect();
            for chunk in examples.chunks(self.batches.batch_size) {
                let rows = self.rows[*source].rows(&model, chunk)?;
                tokens += rows.iter().map(scored_tokens).sum::<usize>();
                nll += scalar(rows_nll(&model, rows)?.sum());
            }
            losses.push((name.clone(), nll / tokens.max(1) as f64, tokens));
        }
        Ok(Evaluation::of_sources(losses))
    }
}
