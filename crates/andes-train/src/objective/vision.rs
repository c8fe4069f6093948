//! Training an AndesVL model on images: image-caption pairs (pretraining; with
//! `freeze = ["language_model."]` AndesVL's alignment phase, vision side and projector only)
//! and conversations that show images (SFT). Each image becomes its visual tokens at its
//! place in the row; the next-token loss counts the caption, or the assistant turns, only.

use andes_data::dataset::counted_targets;
use std::ops::Range;
use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use andes_data::dataset::{
    CaptionRecord, DataFormat, ImageChat, MaskedTokens, load_captions, load_image_conversations,
    tokenize_image_conversation,
};
use andes_data::image_processor::{ImageProcessor, ProcessedImage};
use andes_data::image_prompt::{ImageTokens, tokenize_with_images};
use andes_model::andesvl::{AndesVL, AndesVLConfig, ImagePlacement};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, Tensor, TensorData};

use super::{
    Evaluation, Objective, ReplyRows, Shard, StepBatches, StepFigures, StepOutput,
    accumulate_share, load_splits, scalar,
};
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

/// One row ready for the model: ids with the scored tokens marked, and its preprocessed
/// images with their token spans, still on the host (a data-parallel replica builds every
/// row of a step for its token count, and uploads only the rows it computes).
struct VisualRow {
    tokens: MaskedTokens,
    images: Vec<(Range<usize>, ProcessedImage)>,
}

impl VisualRow {
    /// The row's images placed as row `sequence` of a batch on `device`.
    fn placements(
        images: Vec<(Range<usize>, ProcessedImage)>,
        sequence: usize,
        device: &Device,
    ) -> Vec<ImagePlacement> {
        images
            .into_iter()
            .map(|(span, image)| ImagePlacement {
                sequence,
                span,
                pixels: Tensor::from_data(
                    TensorData::new(image.pixels, [3, image.height, image.width]),
                    device,
                ),
            })
            .collect()
    }
}

/// Turns vision-language records into model rows: images decoded and preprocessed per the
/// model's `preprocessor_config.json`, tokens with each image's span, rows cut to
/// `seq_len + 1` tokens.
struct VisualRows {
    data_file: PathBuf,
    processor: ImageProcessor,
    tokenizer: TextTokenizer,
    image_tokens: ImageTokens,
    end_of_text: u32,
    seq_len: usize,
}

/// Mean NLL of the scored tokens of an image-caption or conversation file.
pub struct VisionObjective {
    train: Vec<VisualExample>,
    eval: Option<Vec<VisualExample>>,
    rows: VisualRows,
    batches: StepBatches,
}

/// The records of `path`: image captions, or conversations that may show images.
fn load_examples(
    path: &Path,
    format: DataFormat,
    tokenizer: &TextTokenizer,
    skip_bad_records: bool,
) -> Result<Vec<VisualExample>, TrainError> {
    Ok(match format {
        DataFormat::ImageCaption => load_captions(path, skip_bad_records)?
            .0
            .into_iter()
            .map(VisualExample::Caption)
            .collect(),
        _ => load_image_conversations(path, tokenizer, skip_bad_records)?
            .0
            .into_iter()
            .map(VisualExample::Chat)
            .collect(),
    })
}

/// Input embeddings of the first `count` records of `file` (image captions or conversations
/// that show images, told apart by the first record's keys) for `model`, one `[1, seq,
/// hidden]` tensor a record: what `andes quantize` calibrates an AndesVL model's language
/// model on, so its linears see visual tokens as well as text. Images are preprocessed per
/// `model_dir`'s `preprocessor_config.json`; rows are cut to `seq_len + 1` tokens.
pub fn image_text_embeddings(
    model: &AndesVL,
    config: &AndesVLConfig,
    model_dir: &Path,
    tokenizer: &TextTokenizer,
    file: &Path,
    seq_len: usize,
    count: usize,
) -> Result<Vec<Tensor<3>>, TrainError> {
    use std::io::BufRead;
    let reader = std::fs::File::open(file).map_err(|e| TrainError::io(file, e))?;
    let first = std::io::BufReader::new(reader)
        .lines()
        .next()
        .transpose()
        .map_err(|e| TrainError::io(file, e))?
        .unwrap_or_default();
    let format = match serde_json::from_str::<serde_json::Value>(&first) {
        Ok(record) if record.get("image").is_some() => DataFormat::ImageCaption,
        _ => DataFormat::Chat,
    };
    let examples = load_examples(file, format, tokenizer, false)?;
    let rows = VisualRows::new(model_dir, file, tokenizer, config, seq_len)?;
    let device: Device = model.devices()[0].clone();
    examples
        .iter()
        .take(count)
        .map(|example| {
            let row = rows.row(model, example)?;
            let ids: Vec<i64> = row.tokens.ids.iter().map(|&id| id as i64).collect();
            let len = ids.len();
            let ids = Tensor::from_data(TensorData::new(ids, [1, len]), &device);
            Ok(model.embed(ids, &VisualRow::placements(row.images, 0, &device))?)
        })
        .collect()
}

impl VisualRows {
    /// Reads `model_dir`'s image preprocessing; `data_file` labels errors.
    fn new(
        model_dir: &Path,
        data_file: &Path,
        tokenizer: &TextTokenizer,
        config: &AndesVLConfig,
        seq_len: usize,
    ) -> Result<Self, TrainError> {
        let processor = ImageProcessor::from_file(&model_dir.join("preprocessor_config.json"))?;
        let end_of_text = tokenizer.token_id(END_OF_TEXT).ok_or_else(|| {
            TrainError::io(
                &model_dir.join("tokenizer.json"),
                format!("the tokenizer has no {END_OF_TEXT} token"),
            )
        })?;
        Ok(Self {
            data_file: data_file.to_owned(),
            processor,
            tokenizer: tokenizer.clone(),
            image_tokens: image_tokens(config),
            end_of_text,
            seq_len,
        })
    }

    /// Decodes the images of `example` and tokenizes it; the row is cut to `seq_len + 1`
    /// tokens, which must keep every image whole.
    fn row(&self, model: &AndesVL, example: &VisualExample) -> Result<VisualRow, TrainError> {
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
        Ok(VisualRow {
            tokens,
            images: spans.into_iter().zip(images).collect(),
        })
    }

    fn rows(
        &self,
        model: &AndesVL,
        examples: &[&VisualExample],
    ) -> Result<Vec<VisualRow>, TrainError> {
        examples
            .iter()
            .map(|example| self.row(model, example))
            .collect()
    }

    /// Summed NLL of the scored tokens of `rows` (one-element tensor).
    fn nll(model: &AndesVL, rows: Vec<VisualRow>) -> Result<Tensor<1>, TrainError> {
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
        Ok(batch.log_probs(&model.language_model, hidden).sum().neg())
    }
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
        let load = |path: &Path| {
            load_examples(
                path,
                recipe.data.format,
                tokenizer,
                recipe.data.skip_bad_records,
            )
        };
        let (train, eval) = load_splits(recipe, load)?;
        let rows = VisualRows::new(
            &recipe.model.checkpoint,
            &recipe.data.train,
            tokenizer,
            config,
            recipe.data.seq_len,
        )?;
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
        shard: Shard,
    ) -> Result<StepOutput, TrainError> {
        let model = vision_language(model);
        // Every shard builds every row on the host: the step's token count, the loss's
        // divisor, needs each image's size. Only its own rows go to the device.
        let micro_batches = self
            .batches
            .draw(&self.train, state)
            .iter()
            .map(|examples| self.rows.rows(model, examples))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens: usize = micro_batches.iter().flatten().map(scored_tokens).sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut nll_sum = 0.0;
        let mut shard_tokens = 0;
        for (index, rows) in micro_batches.into_iter().enumerate() {
            if !shard.owns(index) {
                continue;
            }
            shard_tokens += rows.iter().map(scored_tokens).sum::<usize>();
            let nll = VisualRows::nll(model, rows)?;
            nll_sum += accumulate_share(&mut accumulator, model, nll, tokens as f64);
        }
        Ok(StepOutput {
            grads: accumulator.grads(),
            figures: StepFigures {
                loss: nll_sum / tokens.max(1) as f64,
                tokens: shard_tokens,
                ..StepFigures::default()
            },
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
            let rows = self.rows.rows(&model, chunk)?;
            tokens += rows.iter().map(scored_tokens).sum::<usize>();
            nll += scalar(VisualRows::nll(&model, rows)?);
        }
        Ok(Some(Evaluation {
            loss: Some(nll / tokens.max(1) as f64),
            ..Evaluation::default()
        }))
    }
}
