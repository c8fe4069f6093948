//! Prompts with reference answers for reinforcement learning (GRPO): the prompt becomes a
//! ChatML user turn with the assistant turn opened, the answer is kept as text for the
//! reward function.

use std::path::Path;

use serde::Deserialize;

use super::records::{DataFormat, RecordError, read_records};
use crate::chat::{END_OF_TURN, Role, render_for_generation};
use crate::tokenizer::{DataError, TextTokenizer};

/// A JSONL record `{"prompt", "answer"}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PromptRecord {
    prompt: String,
    answer: String,
}

/// One tokenized prompt and the answer its completions are scored against.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptExample {
    /// The user turn and the opened assistant turn.
    pub prompt: Vec<u32>,
    /// The reference answer.
    pub answer: String,
}

/// Reads the prompts of `path`; a prompt of `max_prompt_tokens` or more is a bad record.
pub fn load_prompts(
    path: &Path,
    tokenizer: &TextTokenizer,
    max_prompt_tokens: usize,
    skip_bad_records: bool,
) -> Result<(Vec<PromptExample>, usize), RecordError> {
    read_records(
        path,
        DataFormat::Prompt.columns(),
        skip_bad_records,
        |line| {
            let record: PromptRecord = match serde_json::from_str(line) {
                Ok(record) => record,
                Err(e) => {
                    return Ok(Err(format!(
                        "expected {{\"prompt\": string, \"answer\": string}}: {e}"
                    )));
                }
            };
            Ok(
                user_prompt(tokenizer, &record.prompt, max_prompt_tokens)?.map(|prompt| {
                    PromptExample {
                        prompt,
                        answer: record.answer,
                    }
                }),
            )
        },
    )
}

/// `text` as a user turn followed by the opened assistant turn, or a message when it takes
/// `limit` tokens or more (leaving no room for a reply).
pub(super) fn user_prompt(
    tokenizer: &TextTokenizer,
    text: &str,
    limit: usize,
) -> Result<Result<Vec<u32>, String>, DataError> {
    tokenizer.check_chat_tokens()?;
    let ids = tokenizer.encode(&render_for_generation(&[(Role::User, text)], true))?;
    if ids.len() >= limit {
        return Ok(Err(format!(
            "the prompt takes {} tokens, leaving no room for a reply: at most {} fit \
             (data.seq_len less the reply's room)",
            ids.len(),
            limit - 1
        )));
    }
    Ok(Ok(ids))
}

/// `text` as the content of an assistant turn, closed by the end-of-turn token.
pub(super) fn assistant_reply(
    tokenizer: &TextTokenizer,
    text: &str,
) -> Result<Vec<u32>, DataError> {
    let mut ids = tokenizer.encode(text)?;
    ids.extend(tokenizer.encode(END_OF_TURN)?);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer");
        TextTokenizer::from_model_dir(&dir).unwrap()
    }

    fn write(lines: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .unwrap();
        std::io::Write::write_all(&mut file, lines.as_bytes()).unwrap();
        file
    }

    #[test]
    fn prompts_render_as_an_opened_assistant_turn() {
        let tokenizer = tokenizer();
        let file = write(
            "{\"prompt\": \"How many letters are in the word \\\"cat\\\"?\", \"answer\": \"3\"}\n",
        );
        let (prompts, skipped) = load_prompts(file.path(), &tokenizer, 64, false).unwrap();
        assert_eq!((prompts.len(), skipped), (1, 0));
        assert_eq!(prompts[0].answer, "3");
        let text = tokenizer.decode(&prompts[0].prompt).unwrap();
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    }

    #[test]
    fn a_missing_answer_or_long_prompt_names_the_line() {
        let tokenizer = tokenizer();
        let file = write("{\"prompt\": \"a\", \"answer\": \"1\"}\n{\"prompt\": \"b\"}\n");
        let err = load_prompts(file.path(), &tokenizer, 64, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(":2:") && err.contains("answer"), "{err}");
        let (kept, skipped) = load_prompts(file.path(), &tokenizer, 64, true).unwrap();
        assert_eq!((kept.len(), skipped), (1, 1));
        let err = load_prompts(file.path(), &tokenizer, 4, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":1:") && err.contains("no room for a reply"),
            "{err}"
        );
    }

    #[test]
    fn preference_replies_share_the_prompt_and_fit_the_limit() {
        let tokenizer = tokenizer();
        let file = write(
            "{\"prompt\": \"Define cat.\", \"chosen\": \"A small domesticated carnivore.\", \"rejected\": \"A large body of water surrounded by land, much longer than this limit allows.\"}\n",
        );
        let (pairs, _) =
            super::super::load_preferences(file.path(), &tokenizer, 40, false).unwrap();
        let pair = &pairs[0];
        assert!(pair.prompt.len() + pair.rejected.len() <= 40);
        let chosen = tokenizer.decode(&pair.chosen).unwrap();
        assert_eq!(chosen, "A small domesticated carnivore.<|im_end|>");
        let same = write("{\"prompt\": \"p\", \"chosen\": \"x\", \"rejected\": \"x\"}\n");
        let err = super::super::load_preferences(same.path(), &tokenizer, 40, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("same text"), "{err}");
    }
}
