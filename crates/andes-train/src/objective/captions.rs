//! Image-caption pretraining of an AndesVL model: each image becomes its visual tokens, the
//! caption follows, and the next-token loss counts the caption (and its end-of-text token)
//! only. With `freeze = ["language_model."]` this is AndesVL's alignment phase (vision side
//! and projector learn, the LLM stays fixed); without, the joint phase.

use andes_data::TextTokenizer;
use andes_data::dataset::{CaptionRecord, load_captions};
use andes_data::image_processor::ImageProcessor;
use andes_data::image_prompt::{ImageTokens, tokenize_with_images};
use andes_model::andesvl::{AndesVL, AndesVLConfig, ImagePlacement};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};

use super::{Evaluation, Objective, ReplyRows, StepOutput, scalar};
use crate::checkpoint::TrainerState;
use crate::data::{END_OF_TEXT, draw_indices};
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

/// One example ready for the model: its row ids split into the image prompt and the
/// caption, the image's span and pixels.
struct CaptionRow {
    prompt: Vec<u32>,
    caption: Vec<u32>,
    placement: ImagePlacement,
}

/// Mean caption NLL over an image-caption file.
pub struct CaptionObjective {
    train: Vec<CaptionRecord>,
    eval: Option<Vec<CaptionRecord>>,
    processor: ImageProcessor,
    tokenizer: TextTokenizer,
    image_tokens: ImageTokens,
    end_of_text: u32,
    seq_len: usize,
    seed: u64,
    batch_size: usize,
    grad_accum: usize,
}

impl CaptionObjective {
    /// Reads the recipe's caption files; the images' preprocessing comes from the starting
    /// checkpoint's `preprocessor_config.json`. `config` must be an AndesVL model's.
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
        let load = |path| {
            load_captions(path, recipe.data.skip_bad_records).map(|(records, _skipped)| records)
        };
        let train = load(&recipe.data.train)?;
        if train.is_empty() {
            return Err(TrainError::io(&recipe.data.train, "no image-caption pairs"));
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
            train,
            eval,
            processor,
            tokenizer: tokenizer.clone(),
            image_tokens: image_tokens(config),
            end_of_text,
            seq_len: recipe.data.seq_len,
            seed: recipe.seed,
            batch_size: recipe.train.batch_size,
            grad_accum: recipe.train.grad_accum,
        })
    }

    /// Decodes the image of `record` and tokenizes image and caption; the caption is cut so
    /// the row fits `seq_len + 1` tokens.
    fn row(
        &self,
        model: &AndesVL,
        record: &CaptionRecord,
        sequence: usize,
        device: &Device,
    ) -> Result<CaptionRow, TrainError> {
        let image = self.processor.load(&record.image)?;
        let count = model.visual_tokens(image.height, image.width);
        let prompt = tokenize_with_images(&self.tokenizer, "", &[count], &self.image_tokens)?;
        let room = (self.seq_len + 1).saturating_sub(prompt.ids.len());
        if room < 2 {
            return Err(TrainError::io(
                &record.image,
                format!(
                    "the image takes {} tokens, leaving no room for its caption in data.seq_len \
                     {}",
                    prompt.ids.len(),
                    self.seq_len
                ),
            ));
        }
        let mut caption = self.tokenizer.encode(&record.caption)?;
        caption.push(self.end_of_text);
        caption.truncate(room);
        Ok(CaptionRow {
            prompt: prompt.ids,
            caption,
            placement: ImagePlacement {
                sequence,
                span: prompt.image_spans[0].clone(),
                pixels: Tensor::from_data(
                    TensorData::new(image.pixels, [3, image.height, image.width]),
                    device,
                ),
            },
        })
    }

    /// Summed caption NLL of `rows` (one-element tensor).
    fn caption_nll(model: &AndesVL, rows: Vec<CaptionRow>) -> Result<Tensor<1>, TrainError> {
        let device: Device = model.devices()[0].clone();
        let pairs: Vec<(&[u32], &[u32])> = rows
            .iter()
            .map(|r| (r.prompt.as_slice(), r.caption.as_slice()))
            .collect();
        let batch = ReplyRows::new(&pairs, &device);
        let placements: Vec<ImagePlacement> = rows.into_iter().map(|r| r.placement).collect();
        let logits = model.forward(
            batch.inputs.clone(),
            &placements,
            &mut model.language_model.new_cache(),
        )?;
        Ok(batch.log_probs(logits).sum().neg())
    }

    fn rows(
        &self,
        model: &AndesVL,
        records: &[&CaptionRecord],
    ) -> Result<Vec<CaptionRow>, TrainError> {
        let device: Device = model.devices()[0].clone();
        records
            .iter()
            .enumerate()
            .map(|(i, record)| self.row(model, record, i, &device))
            .collect()
    }
}

/// The AndesVL model of a run whose data are images (checked when the objective is built).
fn vision_language(model: &TrainModel) -> &AndesVL {
    model
        .vision_language()
        .expect("the caption objective is built for AndesVL checkpoints only")
}

impl Objective for CaptionObjective {
    fn step(
        &self,
        model: &TrainModel,
        state: &mut TrainerState,
        _step_seed: u64,
    ) -> Result<StepOutput, TrainError> {
        let model = vision_language(model);
        let mut micro_batches = Vec::with_capacity(self.grad_accum);
        for _ in 0..self.grad_accum {
            let records: Vec<&CaptionRecord> = draw_indices(
                self.train.len(),
                self.seed,
                &mut state.data,
                self.batch_size,
            )
            .into_iter()
            .map(|i| &self.train[i])
            .collect();
            micro_batches.push(self.rows(model, &records)?);
        }
        let tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|r| r.caption.len())
            .sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut nll_sum = 0.0;
        for rows in micro_batches {
            let nll = Self::caption_nll(model, rows)?;
            nll_sum += scalar(nll.clone());
            let loss = nll.div_scalar(tokens as f64);
            accumulator.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
        }
        Ok(StepOutput {
            grads: accumulator.grads(),
            loss: nll_sum / tokens as f64,
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
        let records: Vec<&CaptionRecord> = eval.iter().collect();
        for chunk in records.chunks(self.batch_size) {
            let rows = self.rows(&model, chunk)?;
            tokens += rows.iter().map(|r| r.caption.len()).sum::<usize>();
            nll += scalar(Self::caption_nll(&model, rows)?);
        }
        Ok(Some(Evaluation {
            loss: Some(nll / tokens as f64),
            ..Evaluation::default()
        }))
    }
}
