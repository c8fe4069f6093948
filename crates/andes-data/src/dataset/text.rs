//! Plain-text documents for next-token pretraining.

use super::MaskedTokens;
use crate::tokenizer::{DataError, TextTokenizer};

/// Tokens of one document followed by the end-of-text token, every token a target, so that
/// packed windows learn where documents end.
pub fn tokenize_document(
    tokenizer: &TextTokenizer,
    text: &str,
    end_of_text: u32,
) -> Result<MaskedTokens, DataError> {
    let mut tokens = MaskedTokens::default();
    tokens.push(&tokenizer.encode(text)?, true);
    tokens.push(&[end_of_text], true);
    Ok(tokens)
}
