//! A model directory's `tokenizer.json`, loaded with the Hugging Face `tokenizers` crate.

use std::path::{Path, PathBuf};

/// Errors of data loading, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A tokenizer file could not be read or parsed.
    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The library's complaint.
        message: String,
    },
    /// An image could not be read or decoded, or is unusable.
    #[error("image {path}: {message}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A prompt's `<image>` placeholders do not match the images given.
    #[error(
        "the prompt has {placeholders} `<image>` placeholder(s) but {images} image(s) were given"
    )]
    ImagePlaceholders {
        /// Placeholders in the text.
        placeholders: usize,
        /// Images supplied.
        images: usize,
    },
    /// A preprocessor configuration is malformed.
    #[error("{path}: key `{key}`: {message}")]
    ImageConfig {
        /// The `preprocessor_config.json` file.
        path: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// What was found and what was expected.
        message: String,
    },
    /// The tokenizer lacks a token of the chat template as a token of its own.
    #[error(
        "{path}: the tokenizer has no `{token}` token; chat records are rendered in Qwen3's \
         ChatML template (`<|im_start|>role\\ncontent<|im_end|>`), which needs it as one token \
         (a Qwen3 or AndesVL tokenizer.json has it)"
    )]
    MissingChatToken {
        /// The tokenizer file.
        path: PathBuf,
        /// The missing token.
        token: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer {path}: {message}")]
    Codec {
        /// The tokenizer file.
        path: PathBuf,
        /// The library's complaint.
        message: String,
    },
}

/// Byte-level BPE tokenizer of a checkpoint; encodes without adding special tokens, as
/// Qwen3 base models expect.
#[derive(Clone)]
pub struct TextTokenizer {
    path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, DataError> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            inner,
        })
    }

    /// Token ids of `text`, special-token markup (`<|im_start|>`) recognised, none added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.inner
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| DataError::Codec {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Text of `ids`, special tokens included verbatim.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner.decode(ids, false).map_err(|e| DataError::Codec {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Fails, naming the tokenizer file, unless the vocabulary holds ChatML's `<|im_start|>`
    /// and `<|im_end|>` as tokens of their own: without them the template's markers would be
    /// cut into ordinary text pieces and a chat model trained on pieces it never sees.
    pub fn check_chat_tokens(&self) -> Result<(), DataError> {
        for token in [crate::chat::START_OF_TURN, crate::chat::END_OF_TURN] {
            if self.token_id(token).is_none() {
                return Err(DataError::MissingChatToken {
                    path: self.path.clone(),
                    token: token.into(),
                });
            }
        }
        Ok(())
    }

    /// Id of a token string such as `<|im_end|>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
