//! Completing a prompt with either model a directory holds: what `andes generate` prints.
//! A text model decodes the prompt's tokens; an AndesVL model first places each image's
//! visual tokens where the prompt says `<image>` (all images first when it says nowhere).

use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use burn::tensor::Device;

use crate::andesvl::rows::image_prompt;
use crate::error::ModelError;
use crate::generate::{GenerationRequest, generate, generate_from_embeddings, token_tensor};
use crate::model::{Model, ModelConfig};

/// A prompt: its text, tokenized as it stands, and the images it shows (PNG, JPEG, WebP).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text, `<image>` marking where each image goes.
    pub text: String,
    /// The images, in the order of the marks.
    pub images: Vec<PathBuf>,
}

/// What a completion gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Tokens of the prompt, visual tokens included.
    pub prompt_tokens: usize,
    /// The new tokens.
    pub token_ids: Vec<u32>,
}

/// Completes `prompt` with `model` (of `config`, loaded from `dir`, whose
/// `preprocessor_config.json` prepares an AndesVL model's images) per `request`.
pub fn complete(
    (model, config, dir): (&Model, &ModelConfig, &Path),
    tokenizer: &TextTokenizer,
    prompt: &Prompt,
    request: &GenerationRequest,
    device: &Device,
) -> Result<Completion, ModelError> {
    match (model, config.andesvl()) {
        (Model::VisionLanguage(model), Some(config)) => {
            let (ids, images) =
                image_prompt(&prompt.images, dir, &prompt.text, tokenizer, config, device)?;
            let embeddings = model.embed(token_tensor(&ids.ids, device), &images)?;
            Ok(Completion {
                prompt_tokens: ids.ids.len(),
                token_ids: generate_from_embeddings(
                    &model.language_model,
                    embeddings,
                    request,
                    device,
                )?,
            })
        }
        (model, _) => {
            if !prompt.images.is_empty() {
                return Err(ModelError::InvalidInput(format!(
                    "images need an AndesVL model directory (config.json with model_type \
                     \"andesvl\"); {} holds a text-only model",
                    dir.display()
                )));
            }
            let ids = tokenizer.encode(&prompt.text)?;
            Ok(Completion {
                prompt_tokens: ids.len(),
                token_ids: generate(model.language_model(), &ids, request, device)?,
            })
        }
    }
}
