//! Completing a prompt with either model a directory holds: what `andes generate` prints.
//! A text model decodes the prompt's tokens; an AndesVL model first places each image's
//! visual tokens where the prompt says `<image>` (all images first when it says nowhere).

use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use andes_data::chat::{ChatMessage, Role, render_andesvl, render_for_generation};
use burn::tensor::Device;

use crate::andesvl::AndesVLLayout;

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

/// How a one-turn chat prompt opens the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thinking {
    /// The model's default: Qwen3 thinks, a released AndesVL Instruct model answers.
    Default,
    /// Qwen3's empty `<think>` block (`enable_thinking=False`).
    Off,
    /// `<think>` opened, as a released AndesVL Thinking model is prompted.
    Open,
}

/// `text` as one user turn of the model's chat template: Qwen3's, or a released AndesVL
/// checkpoint's own prompt (where `Off` is its default: its Instruct models do not think).
/// `Open` is refused on anything but a released checkpoint: Qwen3 thinks by default.
pub fn chat_prompt(
    config: &ModelConfig,
    text: &str,
    thinking: Thinking,
) -> Result<String, ModelError> {
    let released = config
        .andesvl()
        .is_some_and(|config| matches!(config.layout, AndesVLLayout::Released(_)));
    match (released, thinking) {
        (false, Thinking::Open) => Err(ModelError::InvalidInput(
            "opening <think> is for a released AndesVL Thinking model; this is not a released \
             AndesVL checkpoint (Qwen3 thinks unless told not to)"
                .into(),
        )),
        (false, thinking) => Ok(render_for_generation(
            &[(Role::User, text)],
            thinking != Thinking::Off,
        )),
        (true, thinking) => Ok(render_andesvl(
            &[ChatMessage::new(Role::User, text)],
            thinking == Thinking::Open,
        )),
    }
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
