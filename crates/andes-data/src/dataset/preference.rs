//! Preference pairs for preference optimisation (DPO, MPO): a prompt, the answer to prefer
//! and the answer to avoid, each answer rendered as the assistant turn of a ChatML exchange.

use std::path::Path;

use serde::Deserialize;

use super::prompt::{assistant_reply, user_prompt};
use super::records::{DataFormat, RecordError, read_records};
use crate::tokenizer::TextTokenizer;

/// A JSONL record `{"prompt", "chosen", "rejected"}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PreferenceRecord {
    prompt: String,
    chosen: String,
    rejected: String,
}

/// One tokenized pair: the shared prompt and the two replies that may follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// The user turn and the opened assistant turn.
    pub prompt: Vec<u32>,
    /// The preferred reply, closed by the end-of-turn token.
    pub chosen: Vec<u32>,
    /// The dispreferred reply, closed by the end-of-turn token.
    pub rejected: Vec<u32>,
}

/// Reads the preference pairs of `path`; replies are cut so that prompt and reply fit
/// `max_tokens`, and a prompt that leaves no room for a reply is a bad record.
pub fn load_preferences(
    path: &Path,
    tokenizer: &TextTokenizer,
    max_tokens: usize,
    skip_bad_records: bool,
) -> Result<(Vec<PreferencePair>, usize), RecordError> {
    read_records(
        path,
        DataFormat::Preference.columns(),
        skip_bad_records,
        |line| {
            let record: PreferenceRecord = match serde_json::from_str(line) {
                Ok(record) => record,
                Err(e) => {
                    return Ok(Err(format!(
                        "expected {{\"prompt\": string, \"chosen\": string, \"rejected\": string}}: {e}"
                    )));
                }
            };
            if record.chosen == record.rejected {
                return Ok(Err("`chosen` and `rejected` are the same text".into()));
            }
            let prompt = match user_prompt(tokenizer, &record.prompt, max_tokens)? {
                Ok(prompt) => prompt,
                Err(message) => return Ok(Err(message)),
            };
            let room = max_tokens - prompt.len();
            let mut chosen = assistant_reply(tokenizer, &record.chosen)?;
            let mut rejected = assistant_reply(tokenizer, &record.rejected)?;
            chosen.truncate(room);
            rejected.truncate(room);
            Ok(Ok(PreferencePair {
                prompt,
                chosen,
                rejected,
            }))
        },
    )
}
