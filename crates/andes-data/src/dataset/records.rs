//! Reading a data file into masked token sequences, with file:line errors for bad records.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Conversation, MaskedTokens, tokenize_conversation, tokenize_document};
use crate::tokenizer::{DataError, TextTokenizer};

/// How the records of a file are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// `.txt`: one document per non-empty line; or JSONL `{"text": ...}`.
    Text,
    /// JSONL `{"messages": [{"role", "content"}, ...]}`, loss on assistant turns.
    Chat,
}

/// A record that cannot be used, located by file and line.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The data file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// One record is malformed.
    #[error("{path}:{line}: {message}")]
    BadRecord {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] DataError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextRecord {
    text: String,
}

/// Token sequences of every record of `path`, and how many bad records were skipped (only
/// when `skip_bad_records`; otherwise the first bad record is the error).
pub fn load_sequences(
    path: &Path,
    format: DataFormat,
    tokenizer: &TextTokenizer,
    end_of_text: u32,
    skip_bad_records: bool,
) -> Result<(Vec<MaskedTokens>, usize), RecordError> {
    let content = std::fs::read_to_string(path).map_err(|source| RecordError::Io {
        path: path.to_owned(),
        source,
    })?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut sequences = Vec::new();
    let mut skipped = 0;
    for (index, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(line, format, jsonl, tokenizer, end_of_text)?;
        match parsed {
            Ok(tokens) => sequences.push(tokens),
            Err(_) if skip_bad_records => skipped += 1,
            Err(message) => {
                return Err(RecordError::BadRecord {
                    path: path.to_owned(),
                    line: index + 1,
                    message,
                });
            }
        }
    }
    Ok((sequences, skipped))
}

/// Outer error: tokenizer failure (fatal); inner: the record is malformed.
fn parse_line(
    line: &str,
    format: DataFormat,
    jsonl: bool,
    tokenizer: &TextTokenizer,
    end_of_text: u32,
) -> Result<Result<MaskedTokens, String>, DataError> {
    match (format, jsonl) {
        (DataFormat::Text, false) => tokenize_document(tokenizer, line, end_of_text).map(Ok),
        (DataFormat::Text, true) => match serde_json::from_str::<TextRecord>(line) {
            Ok(record) => tokenize_document(tokenizer, &record.text, end_of_text).map(Ok),
            Err(e) => Ok(Err(format!("expected {{\"text\": string}}: {e}"))),
        },
        (DataFormat::Chat, _) => match serde_json::from_str::<Conversation>(line) {
            Ok(conversation) => tokenize_conversation(tokenizer, &conversation),
            Err(e) => Ok(Err(format!(
                "expected {{\"messages\": [{{\"role\", \"content\"}}, ...]}}: {e}"
            ))),
        },
    }
}
