//! Data for andes: tokenization (Hugging Face `tokenizer.json` through the `tokenizers`
//! crate) and the Qwen3 ChatML template.

pub mod chat;
pub mod dataset;
pub mod tokenizer;

pub use tokenizer::{DataError, TextTokenizer};
