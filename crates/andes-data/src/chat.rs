//! The Qwen3 ChatML template: `<|im_start|>role\ncontent<|im_end|>\n` per turn.

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

/// Renders `turns` in ChatML and opens an assistant turn for the model to complete, as
/// transformers' `apply_chat_template(..., add_generation_prompt=True)` does for Qwen3
/// (without the optional empty `<think>` block).
pub fn render_for_generation(turns: &[(Role, &str)]) -> String {
    let mut text = String::new();
    for (role, content) in turns {
        text.push_str(&format!(
            "<|im_start|>{}\n{}{END_OF_TURN}\n",
            role.as_str(),
            content
        ));
    }
    text.push_str("<|im_start|>assistant\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_user_turn_renders_like_the_qwen3_template() {
        assert_eq!(
            render_for_generation(&[(Role::User, "Hi")]),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
