//! Data for andes: tokenization (Hugging Face `tokenizer.json` through the `tokenizers`
//! crate), the Qwen3 ChatML template, and image preprocessing for the vision tower.

pub mod answer;
pub mod chat;
pub mod dataset;
pub mod image_processor;
pub mod image_prompt;
pub mod tokenizer;

pub use tokenizer::{DataError, TextTokenizer};
