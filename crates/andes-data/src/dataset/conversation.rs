//! Chat conversations for SFT, in the OpenAI/ShareGPT `messages` shape, rendered through the
//! Qwen3 ChatML template with the loss on assistant turns only.

use serde::Deserialize;

use super::MaskedTokens;
use crate::chat::{END_OF_TURN, Role};
use crate::tokenizer::{DataError, TextTokenizer};

/// One turn of a conversation record.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

/// A JSONL record `{"messages": [...]}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    /// Turns in order.
    pub messages: Vec<Message>,
}

/// The role of a message, or a message naming what is allowed.
pub fn parse_role(role: &str) -> Result<Role, String> {
    match role {
        "system" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(format!(
            "role {other:?} is unknown; expected system, user or assistant"
        )),
    }
}

/// Renders `conversation` as `<|im_start|>role\ncontent<|im_end|>\n` turns; the content and
/// closing `<|im_end|>` of assistant turns are targets, everything else is context.
pub fn tokenize_conversation(
    tokenizer: &TextTokenizer,
    conversation: &Conversation,
) -> Result<Result<MaskedTokens, String>, DataError> {
    let mut tokens = MaskedTokens::default();
    if !conversation.messages.iter().any(|m| m.role == "assistant") {
        return Ok(Err(
            "the conversation has no assistant turn to learn from".into()
        ));
    }
    for message in &conversation.messages {
        let role = match parse_role(&message.role) {
            Ok(role) => role,
            Err(message) => return Ok(Err(message)),
        };
        let trained = role == Role::Assistant;
        tokens.push(
            &tokenizer.encode(&format!("<|im_start|>{}\n", message.role))?,
            false,
        );
        tokens.push(&tokenizer.encode(&message.content)?, trained);
        tokens.push(&tokenizer.encode(END_OF_TURN)?, trained);
        tokens.push(&tokenizer.encode("\n")?, false);
    }
    Ok(Ok(tokens))
}
