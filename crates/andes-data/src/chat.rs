//! Chat templates: Qwen3's ChatML turns (`<|im_start|>role\ncontent<|im_end|>\n`) with its
//! thinking blocks, as the released `tokenizer_config.json` renders tool-less conversations;
//! and the prompt OPPO's released AndesVL checkpoints are driven with (plain ChatML turns, a
//! `<think>` opened for their Thinking models).

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// Token that closes every turn; generation of an assistant turn stops on it.
pub const END_OF_TURN: &str = "<|im_end|>";
/// Opens every turn of the template.
pub const START_OF_TURN: &str = "<|im_start|>";

/// One message as Qwen3's chat template reads it: a role, its content, and for an assistant
/// turn optionally its reasoning apart (`reasoning_content`, as OpenAI-style data sets and
/// transformers write it; otherwise a `<think>…</think>` block at the start of the content is
/// taken as the reasoning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMessage<'a> {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: &'a str,
    /// The assistant's reasoning, when given apart from the content.
    pub reasoning_content: Option<&'a str>,
}

impl<'a> ChatMessage<'a> {
    /// A message without separate reasoning.
    pub fn new(role: Role, content: &'a str) -> Self {
        Self {
            role,
            content,
            reasoning_content: None,
        }
    }
}

/// Renders `messages` exactly as Qwen3's released chat template does (tool-less
/// conversations): a leading system message first; assistant turns after the last user
/// question with their reasoning in a `<think>` block (an empty one on the last turn when there
/// is none), earlier assistant turns without it; with `add_generation_prompt`, an opened
/// assistant turn, with an empty `<think>` block when `enable_thinking` is false (Qwen3's
/// switch for answering without thinking). Checked against transformers'
/// `apply_chat_template` on the released template (`fixtures/chat/qwen3-template.json`).
pub fn render_qwen3(
    messages: &[ChatMessage<'_>],
    add_generation_prompt: bool,
    enable_thinking: bool,
) -> String {
    let mut text = String::new();
    let turn = |text: &mut String, role: Role, content: &str| {
        text.push_str(&format!("<|im_start|>{}\n{content}", role.as_str()));
    };
    if let Some(first) = messages.first().filter(|m| m.role == Role::System) {
        turn(&mut text, Role::System, first.content);
        text.push_str(&format!("{END_OF_TURN}\n"));
    }
    // The last question a person asked (a user turn that is not a tool's response).
    let last_query = messages
        .iter()
        .rposition(|m| m.role == Role::User && !is_tool_response(m.content))
        .unwrap_or(messages.len().saturating_sub(1));
    for (index, message) in messages.iter().enumerate() {
        match message.role {
            Role::System if index == 0 => continue,
            Role::User | Role::System => turn(&mut text, message.role, message.content),
            Role::Assistant => {
                let (reasoning, content) = split_reasoning(message);
                let last = index + 1 == messages.len();
                if index > last_query && (last || !reasoning.is_empty()) {
                    let reasoning = reasoning.trim_matches('\n');
                    let content = content.trim_start_matches('\n');
                    let shown = format!("<think>\n{reasoning}\n</think>\n\n{content}");
                    turn(&mut text, Role::Assistant, &shown);
                } else {
                    turn(&mut text, Role::Assistant, content);
                }
            }
        }
        text.push_str(&format!("{END_OF_TURN}\n"));
    }
    if add_generation_prompt {
        text.push_str("<|im_start|>assistant\n");
        if !enable_thinking {
            text.push_str("<think>\n\n</think>\n\n");
        }
    }
    text
}

/// Whether a user turn carries a tool's output rather than a question.
fn is_tool_response(content: &str) -> bool {
    content.starts_with("<tool_response>") && content.ends_with("</tool_response>")
}

/// An assistant message's reasoning and reply: its `reasoning_content`, or else what a
/// `<think>…</think>` block of the content holds, as the template splits them.
fn split_reasoning<'a>(message: &ChatMessage<'a>) -> (&'a str, &'a str) {
    if let Some(reasoning) = message.reasoning_content {
        return (reasoning, message.content);
    }
    match message.content.rsplit_once("</think>") {
        Some((_, reply)) => {
            let before = message.content.split("</think>").next().unwrap_or_default();
            let thought = before.trim_end_matches('\n');
            let thought = thought.rsplit("<think>").next().unwrap_or_default();
            (
                thought.trim_start_matches('\n'),
                reply.trim_start_matches('\n'),
            )
        }
        None => ("", message.content),
    }
}

/// Renders `turns` and opens an assistant turn for the model to complete: Qwen3's template with
/// `add_generation_prompt`, thinking on unless `enable_thinking` is false.
pub fn render_for_generation(turns: &[(Role, &str)], enable_thinking: bool) -> String {
    let messages: Vec<ChatMessage> = turns
        .iter()
        .map(|&(role, content)| ChatMessage::new(role, content))
        .collect();
    render_qwen3(&messages, true, enable_thinking)
}

/// Renders `messages` as OPPO's released AndesVL models are prompted: every message one
/// ChatML turn as written (no reasoning handling, `<image>` left where each image goes), then
/// an opened assistant turn, followed by `<think>` for the Thinking models (`thinking`). This
/// is `chat` of the released `modeling_andesvl.py` with one assistant header (that file
/// writes the header twice, which its evaluation toolkit does not) and the toolkit's
/// `extra_start = '<think>'` for thinking.
pub fn render_andesvl(messages: &[ChatMessage], thinking: bool) -> String {
    let mut prompt = String::new();
    for message in messages {
        prompt.push_str(&format!(
            "<|im_start|>{}\n{}{END_OF_TURN}\n",
            message.role.as_str(),
            message.content
        ));
    }
    prompt.push_str("<|im_start|>assistant\n");
    if thinking {
        prompt.push_str("<think>");
    }
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_user_turn_renders_like_the_qwen3_template() {
        assert_eq!(
            render_for_generation(&[(Role::User, "Hi")], true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// Every case of `fixtures/andesvl-released/chat-template.json` (the reference script's
    /// port of the released prompt, `make_andesvl_released_fixtures.py`): the same text and
    /// ids, images written as `<image>` where the content list shows them.
    #[test]
    fn renders_like_the_released_andesvl_prompt() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/andesvl-released");
        let cases: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("chat-template.json")).unwrap(),
        )
        .unwrap();
        let tokenizer = crate::TextTokenizer::from_model_dir(&root.join("aimv2")).unwrap();
        let cases = cases.as_array().unwrap();
        assert_eq!(cases.len(), 6);
        for case in cases {
            let contents: Vec<(Role, String)> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let role = match m["role"].as_str().unwrap() {
                        "system" => Role::System,
                        "user" => Role::User,
                        _ => Role::Assistant,
                    };
                    let content = match &m["content"] {
                        serde_json::Value::String(text) => text.clone(),
                        parts => parts
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| p["text"].as_str().unwrap_or("<image>").to_string())
                            .collect(),
                    };
                    (role, content)
                })
                .collect();
            let messages: Vec<ChatMessage> = contents
                .iter()
                .map(|(role, content)| ChatMessage::new(*role, content))
                .collect();
            let text = render_andesvl(&messages, case["thinking"].as_bool().unwrap());
            assert_eq!(text, case["text"].as_str().unwrap());
            let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tokenizer.encode(&text).unwrap(), expected, "{text}");
        }
    }

    /// Every case of `fixtures/chat/qwen3-template.json` (transformers' `apply_chat_template`
    /// on Qwen3's released template, `scripts/fixtures/make_chat_template_fixture.py`): the
    /// same text, and the same token ids under the tiny tokenizer.
    #[test]
    fn renders_like_transformers_with_the_released_qwen3_template() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let fixture = std::fs::read_to_string(root.join("chat/qwen3-template.json")).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&fixture).unwrap();
        let tokenizer = crate::TextTokenizer::from_model_dir(&root.join("tokenizer")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 9);
        for case in cases {
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| ChatMessage {
                    role: match m["role"].as_str().unwrap() {
                        "system" => Role::System,
                        "user" => Role::User,
                        _ => Role::Assistant,
                    },
                    content: m["content"].as_str().unwrap(),
                    reasoning_content: m["reasoning_content"].as_str(),
                })
                .collect();
            let generation = case["add_generation_prompt"].as_bool().unwrap_or(false);
            let thinking = case["enable_thinking"].as_bool().unwrap_or(true);
            let text = render_qwen3(&messages, generation, thinking);
            assert_eq!(text, case["text"].as_str().unwrap(), "{}", case["name"]);
            let ids: Vec<u32> = tokenizer.encode(&text).unwrap();
            let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(ids, expected, "{}", case["name"]);
        }
    }
}
