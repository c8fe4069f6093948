//! Training an AndesVL model on images: image-caption pairs (pretraining; with
//! `freeze = ["language_model."]` AndesVL's alignment phase, vision side and projector only)
//! and conversations that show images (SFT). Each image becomes its visual tokens at its
//! place in the row; the next-token loss counts the caption, or the assistant turns, only.

use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use andes_data::dataset::{
    CaptionRecord, DataFormat, ImageChat, MaskedTokens, load_captions, load_image_conversations,
    tokenize_image_conversation,
};
use andes_data::image_processor::ImageProcessor;
use andes_data::image_prompt::{ImageTokens, tokenize_with_images};
use andes_model::andesvl::{AndesVL, AndesVLConfig, ImagePlacement};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, Tensor, TensorData};

use super::{Evaluation, Objective, ReplyRows, StepBatches, StepOutput, accumulate_share, scalar};
use crate::checkpoint::TrainerState;
use crate::data::END_OF_TEXT;
use crate::error::TrainError;
use crate::model::{ModelConfig, TrainModel};
use crate::recipe::Recipe;

/// How an AndesVL checkpoint spells an image in its token stream.
pub fn image_tokens(config: &AndesVLConfig) -> ImageTokens {
    ImageTokens {
        token_id: config.image_token_id,
        start: config.image_start.clone(),
        end: config.image_end.clone(),
    }
}

/// One record of a vision-language data file.
enum VisualExample {
    /// An image and its caption.
    Caption(CaptionRecord),
    /// A conversation, possibly showing images.
    Chat(ImageChat),
}

impl VisualExample {
    fn images(&self) -> &[PathBuf] {
        match self {
            VisualExample::Caption(record) => std::slice::from_ref(&record.image),
            VisualExample::Chat(chat) => &chat.images,
        }
    }
}

/// One row ready for the model: ids with the scored tokens marked, and its images placed.
struct VisualRow {
    tokens: MaskedTokens,
    placements: Vec<ImagePlacement>,
}

/// Mean NLL of the scored tokens of an image-caption or conversation file.
pub struct VisionObjective {
    data_file: PathBuf,
    train: Vec<VisualExample>,
    eval: Option<Vec<VisualExample>>,
    processor: ImageProcessor,
    tokenizer: TextTokenizer,
    image_tokens: ImageTokens,
    end_of_text: u32,
    seq_len: usize,
    batches: StepBatches,
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
            return Err(TrainError::io(
                &recipe.model.checkpoint.join("config.json"),
                "data.format image_caption trains a vision-language model; this checkpoint \
                 is a text model (expected model_type \"andesvl\", see `andes assemble`)",
            ));
        };
        let skip = recipe.data.skip_bad_records;
        let load = |path: &Path| -> Result<Vec<VisualExample>, TrainError> {
            Ok(match recipe.data.format {
                DataFormat::ImageCaption => load_captions(path, skip)?
                    .0
                    .into_iter()
                    .map(VisualExample::Caption)
                    .collect(),
                _ => load_image_conversations(path, tokenizer, skip)?
                    .0
                    .into_iter()
                    .map(VisualExample::Chat)
                    .collect(),
            })
        };
        let train = load(&recipe.data.train)?;
        if train.is_empty() {
            return Err(TrainError::io(&recipe.data.train, "no records"));
        }
        let eval = recipe.data.eval.as_deref().map(load).transpose()?;
        let processor =
            ImageProcessor::from_file(&recipe.model.checkpoint.join("preprocessor_config.json"))?;
        let end_of_text = tokenizer.token_id(END_OF_TEXT).ok_or_else(|| {
            TrainError::io(
                &recipe.model.checkpoint.join("tokenizer.json"),
                format!("the tokenizer has no {END_OF_TEXT} token"),
            )
        })?;
        Ok(Self {
            data_file: recipe.data.train.clone(),
            train,
            eval,
            processor,
            tokenizer: tokenizer.clone(),
            image_tokens: image_tokens(config),
            end_of_text,
            seq_len: recipe.data.seq_len,
            batches: StepBatches::of(recipe),
        })
    }

    /// Decodes the images of `example` and tokenizes it as row `sequence` of a batch; the
    /// row is cut to `seq_len + 1` tokens, which must keep every image whole.
    fn row(
        &self,
        model: &AndesVL,
        example: &VisualExample,
        sequence: usize,
        device: &Device,
    ) -> Result<VisualRow, TrainError> {
        let images = example
            .images()
            .iter()
            .map(|path| self.processor.load(path))
            .collect::<Result<Vec<_>, _>>()?;
        let counts: Vec<usize> = images
            .iter()
            .map(|image| model.visual_tokens(image.height, image.width))
            .collect();
        let (mut tokens, spans) = match example {
            VisualExample::Caption(record) => {
                let prompt =
                    tokenize_with_images(&self.tokenizer, "", &counts, &self.image_tokens)?;
                let mut tokens = MaskedTokens::default();
                tokens.push(&prompt.ids, false);
                tokens.push(&self.tokenizer.encode(&record.caption)?, true);
                tokens.push(&[self.end_of_text], true);
                (tokens, prompt.image_spans)
            }
            VisualExample::Chat(chat) => {
                let tokenized = tokenize_image_conversation(
                    &self.tokenizer,
                    &chat.conversation,
                    &counts,
                    &self.image_tokens,
                )?
                .map_err(|message| TrainError::io(&self.data_file, message))?;
                (tokenized.tokens, tokenized.image_spans)
            }
        };
        let limit = self.seq_len + 1;
        if let Some((span, image)) = spans
            .iter()
            .zip(example.images())
            .find(|(s, _)| s.end > limit)
        {
            return Err(TrainError::io(
                image,
                format!(
                    "the image's tokens end at position {} of the row, beyond data.seq_len {}",
                    span.end, self.seq_len
                ),
            ));
        }
        tokens.ids.truncate(limit);
        tokens.loss_mask.truncate(limit);
        let placements = images
            .into_iter()
            .zip(spans)
            .map(|(image, span)| ImagePlacement {
                sequence,
                span,
                pixels: Tensor::from_data(
                    TensorData::new(image.pixels, [3, image.height, image.width]),
                    device,
                ),
            })
            .collect();
        Ok(VisualRow { tokens, placements })
    }

    fn rows(
        &self,
        model: &AndesVL,
        examples: &[&VisualExample],
    ) -> Result<Vec<VisualRow>, TrainError> {
        let device: Device = model.devices()[0].clone();
        examples
            .iter()
            .enumerate()
            .map(|(i, example)| self.row(model, example, i, &device))
            .collect()
    }

    /// Summed NLL of the scored tokens of `rows` (one-element tensor).
    fn nll(model: &AndesVL, rows: Vec<VisualRow>) -> Result<Tensor<1>, TrainError> {
        let device: Device = model.devices()[0].clone();
        let (masked, placements): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .map(|row| ((row.tokens.ids, row.tokens.loss_mask), row.placements))
            .unzip();
        let batch = ReplyRows::masked(&masked, &device);
        let placements: Vec<ImagePlacement> = placements.into_iter().flatten().collect();
        let mut cache = model.language_model.new_cache();
        let embeddings = model.embed(batch.inputs.clone(), &placements)?;
        let hidden = model
            .language_model
            .forward_embeddings(embeddings, &mut cache)?;
        Ok(batch.log_probs(&model.language_model, hidden).sum().neg())
    }
}

/// Tokens of `row` the loss counts.
fn scored_tokens(row: &VisualRow) -> usize {
    row.tokens.loss_mask[1..].iter().filter(|&&m| m).count()
}

/// The AndesVL model of a run whose data show images (checked when the objective is built).
fn vision_language(model: &TrainModel) -> &AndesVL {
    model
        .vision_language()
        .expect("the vision objective is built for AndesVL checkpoints only")
}

impl Objective for VisionObjective {
    fn step(
        &self,
        model: &TrainModel,
        state: &mut TrainerState,
        _step_seed: u64,
    ) -> Result<StepOutput, TrainError> {
        let model = vision_language(model);
        let micro_batches = self
            .batches
            .draw(&self.train, state)
            .iter()
            .map(|examples| self.rows(model, examples))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens: usize = micro_batches.iter().flatten().map(scored_tokens).sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut nll_sum = 0.0;
        for rows in micro_batches {
            let nll = Self::nll(model, rows)?;
            nll_sum += accumulate_share(&mut accumulator, model, nll, tokens as f64);
        }
        Ok(StepOutput {
            grads: accumulator.grads(),
            loss: nll_sum / tokens.max(1) as f64,
            tokens,
            reward: None,
            preference_accuracy: None,
        })
    }

    fn evaluate(&self, model: &TrainModel) -> Result<Option<Evaluation>, TrainError> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let model = vision_language(model).valid();
        let (mut nll, mut tokens) = (0.0, 0usize);
        let examples: Vec<&VisualExample> = eval.iter().collect();
        for chunk in examples.chunks(self.batches.batch_size) {
            let rows = self.rows(&model, chunk)?;
            tokens += rows.iter().map(scored_tokens).sum::<usize>();
            nll += scalar(Self::nll(&model, rows)?);
        }
        Ok(Some(Evaluation {
            loss: Some(nll / tokens.max(1) as f64),
            ..Evaluation::default()
        }))
    }
}
