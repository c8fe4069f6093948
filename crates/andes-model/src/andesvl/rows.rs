//! AndesVL rows: image-caption records and conversations that show images, turned into
//! token rows with each image's visual tokens at its place (the scored tokens marked), and
//! into input embeddings. Training reads them as batches; quantization calibrates on them.

use std::ops::Range;
use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use andes_data::dataset::{
    CaptionRecord, DataFormat, ImageChat, MaskedTokens, end_of_text, load_captions,
    load_image_conversations, load_sequences, tokenize_image_conversation,
};
use andes_data::image_processor::{ImageProcessor, ProcessedImage};
use andes_data::image_prompt::{ImagePrompt, ImageTokens, tokenize_with_images};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::{AndesVL, AndesVLConfig, ImagePlacement};
use crate::error::ModelError;

/// How an AndesVL checkpoint spells an image in its token stream.
pub fn image_tokens(config: &AndesVLConfig) -> ImageTokens {
    ImageTokens {
        token_id: config.image_token_id,
        start: config.image_start.clone(),
        end: config.image_end.clone(),
    }
}

/// One record of a vision-language data file.
pub enum VisualExample {
    /// An image and its caption.
    Caption(CaptionRecord),
    /// A conversation, possibly showing images.
    Chat(ImageChat),
    /// A text document (every token a target, ended by end-of-text), for mixtures of text
    /// and image data.
    Document(MaskedTokens),
}

impl VisualExample {
    /// The images the record shows.
    pub fn images(&self) -> &[PathBuf] {
        match self {
            VisualExample::Caption(record) => std::slice::from_ref(&record.image),
            VisualExample::Chat(chat) => &chat.images,
            VisualExample::Document(_) => &[],
        }
    }
}

/// One row ready for the model: ids with the scored tokens marked, and its preprocessed
/// images with their token spans, still on the host (a data-parallel replica builds every
/// row of a step for its token count, and uploads only the rows it computes).
pub struct VisualRow {
    /// Token ids, the scored ones marked.
    pub tokens: MaskedTokens,
    /// Each image with its token span in the row.
    pub images: Vec<(Range<usize>, ProcessedImage)>,
}

impl VisualRow {
    /// The row's images placed as row `sequence` of a batch on `device`.
    pub fn placements(
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
pub struct VisualRows {
    data_file: PathBuf,
    processor: ImageProcessor,
    tokenizer: TextTokenizer,
    image_tokens: ImageTokens,
    end_of_text: u32,
    seq_len: usize,
}

/// The records of `path`: image captions, conversations that may show images, or text
/// documents.
pub fn load_visual_examples(
    path: &Path,
    format: DataFormat,
    tokenizer: &TextTokenizer,
    skip_bad_records: bool,
) -> Result<Vec<VisualExample>, ModelError> {
    Ok(match format {
        DataFormat::Text => {
            let end_of_text = end_of_text(path, tokenizer)?;
            load_sequences(path, format, tokenizer, end_of_text, skip_bad_records)?
                .0
                .into_iter()
                .map(VisualExample::Document)
                .collect()
        }
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
) -> Result<Vec<Tensor<3>>, ModelError> {
    use std::io::BufRead;
    let reader = std::fs::File::open(file).map_err(|e| ModelError::row(file, e))?;
    let first = std::io::BufReader::new(reader)
        .lines()
        .next()
        .transpose()
        .map_err(|e| ModelError::row(file, e))?
        .unwrap_or_default();
    let format = match serde_json::from_str::<serde_json::Value>(&first) {
        Ok(record) if record.get("image").is_some() => DataFormat::ImageCaption,
        _ => DataFormat::Chat,
    };
    let examples = load_visual_examples(file, format, tokenizer, false)?;
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
            model.embed(ids, &VisualRow::placements(row.images, 0, &device))
        })
        .collect()
}

impl VisualRows {
    /// Reads `model_dir`'s image preprocessing; `data_file` labels errors.
    pub fn new(
        model_dir: &Path,
        data_file: &Path,
        tokenizer: &TextTokenizer,
        config: &AndesVLConfig,
        seq_len: usize,
    ) -> Result<Self, ModelError> {
        let processor = ImageProcessor::from_file(&model_dir.join("preprocessor_config.json"))?;
        let end_of_text = end_of_text(data_file, tokenizer)?;
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
    pub fn row(&self, model: &AndesVL, example: &VisualExample) -> Result<VisualRow, ModelError> {
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
                .map_err(|message| ModelError::row(&self.data_file, message))?;
                (tokenized.tokens, tokenized.image_spans)
            }
            VisualExample::Document(tokens) => (tokens.clone(), Vec::new()),
        };
        let limit = self.seq_len + 1;
        if let Some((span, image)) = spans
            .iter()
            .zip(example.images())
            .find(|(s, _)| s.end > limit)
        {
            return Err(ModelError::row(
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

    /// The rows of `examples`, in order.
    pub fn rows(
        &self,
        model: &AndesVL,
        examples: &[&VisualExample],
    ) -> Result<Vec<VisualRow>, ModelError> {
        examples
            .iter()
            .map(|example| self.row(model, example))
            .collect()
    }
}

/// Preprocesses `paths` with the model's `preprocessor_config.json` and tokenizes `text`
/// with each `<image>` expanded to that image's visual tokens.
pub fn image_prompt(
    paths: &[PathBuf],
    dir: &Path,
    text: &str,
    tokenizer: &TextTokenizer,
    config: &AndesVLConfig,
    device: &Device,
) -> Result<(ImagePrompt, Vec<ImagePlacement>), ModelError> {
    let processed = if paths.is_empty() {
        Vec::new()
    } else {
        let processor = ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        paths
            .iter()
            .map(|path| processor.load(path))
            .collect::<Result<Vec<_>, _>>()?
    };
    let counts: Vec<usize> = processed
        .iter()
        .map(|image| config.visual_tokens(image.height, image.width))
        .collect();
    let prompt = tokenize_with_images(tokenizer, text, &counts, &image_tokens(config))?;
    let placements = processed
        .into_iter()
        .zip(&prompt.image_spans)
        .map(|(image, span)| ImagePlacement {
            sequence: 0,
            span: span.clone(),
            pixels: Tensor::from_data(
                TensorData::new(image.pixels, [3, image.height, image.width]),
                device,
            ),
        })
        .collect();
    Ok((prompt, placements))
}

impl ModelError {
    /// A record of `path` that cannot become a row, and why.
    fn row(path: &Path, message: impl std::fmt::Display) -> Self {
        Self::Row {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}
