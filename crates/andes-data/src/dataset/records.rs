//! Reading a data file into masked token sequences, with file:line errors for bad records.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::conversation::CONVERSATION_SHAPE;
use super::reader::{RecordReader, is_parquet};
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
    /// JSONL `{"prompt", "chosen", "rejected"}`: preference pairs for stage `mpo`.
    Preference,
    /// JSONL `{"prompt", "answer"}`: prompts with reference answers for stage `grpo`.
    Prompt,
    /// JSONL `{"image", "caption"}`: image-caption pairs for vision-language pretraining.
    ImageCaption,
}

impl DataFormat {
    /// The keys of a record (a JSONL line's, a Parquet file's columns), the one every record
    /// needs first.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            DataFormat::Text => &["text"],
            DataFormat::Chat => &["messages", "images"],
            DataFormat::Preference => &["prompt", "chosen", "rejected"],
            DataFormat::Prompt => &["prompt", "answer"],
            DataFormat::ImageCaption => &["image", "caption"],
        }
    }

    /// Whether records are token sequences packed into training windows (text, chat), as
    /// opposed to pairs or prompts that a stage batches itself.
    pub fn is_packed(self) -> bool {
        matches!(self, DataFormat::Text | DataFormat::Chat)
    }
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
    /// The tokenizer lacks a token the data's layout needs.
    #[error("{path}: the tokenizer has no {token} token, which ends every document")]
    MissingToken {
        /// The data file.
        path: PathBuf,
        /// The token.
        token: String,
    },
    /// The file holds less than one window.
    #[error("{path}: too little data: not one window of {window} tokens")]
    TooLittleData {
        /// The data file.
        path: PathBuf,
        /// Tokens one window needs.
        window: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextRecord {
    text: String,
}

/// Token sequences of every record of `path`, and how many bad records were skipped (only
/// when `skip_bad_records`; otherwise the first bad record is the error). `format` must be
/// one of the packed formats (text, chat).
pub fn load_sequences(
    path: &Path,
    format: DataFormat,
    tokenizer: &TextTokenizer,
    end_of_text: u32,
    skip_bad_records: bool,
) -> Result<(Vec<MaskedTokens>, usize), RecordError> {
    if !format.is_packed() {
        return Err(RecordError::BadRecord {
            path: path.to_owned(),
            line: 0,
            message: format!("format {format:?} is not a token-sequence format (text or chat)"),
        });
    }
    read_records(path, format.columns(), skip_bad_records, |line| {
        parse_record(line, format, path, tokenizer, end_of_text)
    })
}

/// Every record of `path` (a non-empty line, or a Parquet row as the JSON object of those of
/// `columns` it has) through `parse`, and how many bad records were skipped (only when
/// `skip_bad_records`; otherwise the first bad record is the error, located by line or row).
/// `parse`'s outer error (a tokenizer failure) always stops the read; its inner error says
/// what is wrong with the record.
pub fn read_records<T>(
    path: &Path,
    columns: &[&str],
    skip_bad_records: bool,
    mut parse: impl FnMut(&str) -> Result<Result<T, String>, DataError>,
) -> Result<(Vec<T>, usize), RecordError> {
    let mut records = Vec::new();
    let mut skipped = 0;
    for record in RecordReader::open(path, columns)? {
        let record = record?;
        match parse(&record.text)? {
            Ok(parsed) => records.push(parsed),
            Err(_) if skip_bad_records => skipped += 1,
            Err(message) => {
                return Err(RecordError::BadRecord {
                    path: path.to_owned(),
                    line: record.line,
                    message,
                });
            }
        }
    }
    Ok((records, skipped))
}

/// One record's text (a line, or a Parquet row's JSON) of `path` as tokens of `format` (text
/// or chat). Outer error: tokenizer failure (fatal); inner: the record is malformed.
pub(super) fn parse_record(
    text: &str,
    format: DataFormat,
    path: &Path,
    tokenizer: &TextTokenizer,
    end_of_text: u32,
) -> Result<Result<MaskedTokens, String>, DataError> {
    let jsonl = path.extension().is_some_and(|e| e == "jsonl") || is_parquet(path);
    parse_line(text, format, jsonl, tokenizer, end_of_text)
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
            Err(e) => Ok(Err(format!("expected {CONVERSATION_SHAPE}: {e}"))),
        },
        (DataFormat::Preference | DataFormat::Prompt | DataFormat::ImageCaption, _) => {
            unreachable!("load_sequences refuses formats that are not packed")
        }
    }
}
