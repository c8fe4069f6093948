//! Chat conversations for SFT, in the OpenAI/ShareGPT `messages` shape, rendered through the
//! Qwen3 ChatML template with the loss on assistant turns only.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::MaskedTokens;
use super::caption::resolve_image;
use super::records::{DataFormat, RecordError, read_records};
use crate::chat::{END_OF_TURN, Role};
use crate::image_prompt::{IMAGE_PLACEHOLDER, ImageTokens, tokenize_with_images};
use crate::tokenizer::{DataError, TextTokenizer};

/// One turn of a conversation record.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn, an `<image>` placeholder where it shows an image.
    pub content: String,
}

/// A JSONL record `{"messages": [...]}`, with `"images": [paths]` when its turns show
/// images. A turn's `content` may also be a list of parts, as OpenAI-style and Qwen-VL data
/// sets write it: `{"type": "text", "text": ...}` and `{"type": "image"}` (its file in
/// `images`) or `{"type": "image", "image": path}`; it is read as the text with an `<image>`
/// placeholder per image part, and the parts' paths as `images`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RecordFile")]
pub struct Conversation {
    /// Turns in order.
    pub messages: Vec<Message>,
    /// Image files, in the order of the `<image>` placeholders of the turns (all in front of
    /// the first user turn when there is none), relative to the data file.
    pub images: Vec<String>,
}

/// A conversation record as written, turn contents as text or parts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    messages: Vec<MessageFile>,
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageFile {
    role: String,
    content: Content,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Part {
    Text { text: String },
    Image { image: Option<String> },
}

impl TryFrom<RecordFile> for Conversation {
    type Error = String;

    fn try_from(record: RecordFile) -> Result<Self, String> {
        let mut part_images = Vec::new();
        let messages = record
            .messages
            .into_iter()
            .map(|message| {
                let content = match message.content {
                    Content::Text(text) => text,
                    Content::Parts(parts) => parts
                        .into_iter()
                        .map(|part| match part {
                            Part::Text { text } => text,
                            Part::Image { image } => {
                                part_images.extend(image);
                                IMAGE_PLACEHOLDER.to_string()
                            }
                        })
                        .collect(),
                };
                Message {
                    role: message.role,
                    content,
                }
            })
            .collect();
        if !part_images.is_empty() && !record.images.is_empty() {
            return Err(
                "image paths are given both in `images` and in the content parts; \
                        give them in one place"
                    .into(),
            );
        }
        let images = if part_images.is_empty() {
            record.images
        } else {
            part_images
        };
        Ok(Self { messages, images })
    }
}

/// A conversation with images, tokenized: loss mask on assistant turns, and the span of
/// each image's tokens (never targets).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConversation {
    /// Ids and loss mask.
    pub tokens: MaskedTokens,
    /// One span of image tokens per image, in order.
    pub image_spans: Vec<Range<usize>>,
}

/// A conversation record of a vision-language data file, its images resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageChat {
    /// The record.
    pub conversation: Conversation,
    /// Its image files, resolved against the data file's folder.
    pub images: Vec<PathBuf>,
}

/// Reads conversations that may show images (for a vision-language model). Image files must
/// exist, and turns, roles and placeholders are checked here (by tokenizing with one token an
/// image), so that a bad record is reported with its line rather than mid-run.
pub fn load_image_conversations(
    path: &Path,
    tokenizer: &TextTokenizer,
    skip_bad_records: bool,
) -> Result<(Vec<ImageChat>, usize), RecordError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let probe = ImageTokens::plain(0);
    read_records(path, DataFormat::Chat.columns(), skip_bad_records, |line| {
        let conversation: Conversation = match serde_json::from_str(line) {
            Ok(conversation) => conversation,
            Err(e) => return Ok(Err(format!("expected {CONVERSATION_SHAPE}: {e}"))),
        };
        let images: Result<Vec<PathBuf>, String> = conversation
            .images
            .iter()
            .map(|image| resolve_image(folder, image))
            .collect();
        let images = match images {
            Ok(images) => images,
            Err(message) => return Ok(Err(message)),
        };
        let ones = vec![1; images.len()];
        Ok(
            tokenize_image_conversation(tokenizer, &conversation, &ones, &probe)?.map(|_| {
                ImageChat {
                    conversation,
                    images,
                }
            }),
        )
    })
}

/// What a conversation record looks like, for error messages.
pub(super) const CONVERSATION_SHAPE: &str =
    "{\"messages\": [{\"role\", \"content\"}, ...], \"images\": [path, ...] (optional)}";

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
/// closing `<|im_end|>` of assistant turns are targets, everything else is context. A record
/// with images needs a vision-language model ([`tokenize_image_conversation`]).
pub fn tokenize_conversation(
    tokenizer: &TextTokenizer,
    conversation: &Conversation,
) -> Result<Result<MaskedTokens, String>, DataError> {
    if !conversation.images.is_empty() {
        return Ok(Err(
            "the conversation shows images: train a vision-language (AndesVL) checkpoint on it"
                .into(),
        ));
    }
    let no_images = ImageTokens::plain(0);
    Ok(tokenize_image_conversation(tokenizer, conversation, &[], &no_images)?.map(|c| c.tokens))
}

/// Renders `conversation` as [`tokenize_conversation`] does, each `<image>` placeholder of a
/// turn expanded to its image's tokens (`visual_tokens[i]` image tokens for image i, between
/// the model's markers); with images but no placeholder, the images open the first user turn.
pub fn tokenize_image_conversation(
    tokenizer: &TextTokenizer,
    conversation: &Conversation,
    visual_tokens: &[usize],
    image: &ImageTokens,
) -> Result<Result<ImageConversation, String>, DataError> {
    tokenizer.check_chat_tokens()?;
    if !conversation.messages.iter().any(|m| m.role == "assistant") {
        return Ok(Err(
            "the conversation has no assistant turn to learn from".into()
        ));
    }
    let placeholders: usize = conversation
        .messages
        .iter()
        .map(|m| m.content.matches(IMAGE_PLACEHOLDER).count())
        .sum();
    let images_first = placeholders == 0 && !visual_tokens.is_empty();
    if !images_first && placeholders != visual_tokens.len() {
        return Ok(Err(format!(
            "{placeholders} `{IMAGE_PLACEHOLDER}` placeholders for {} images",
            visual_tokens.len()
        )));
    }
    if images_first && !conversation.messages.iter().any(|m| m.role == "user") {
        return Ok(Err("images but no user turn to show them in".into()));
    }
    let mut tokens = MaskedTokens::default();
    let mut image_spans = Vec::with_capacity(visual_tokens.len());
    let mut next_image = 0;
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
        let shown = if images_first && role == Role::User && next_image == 0 {
            visual_tokens.len()
        } else {
            message.content.matches(IMAGE_PLACEHOLDER).count()
        };
        let counts = &visual_tokens[next_image..next_image + shown];
        next_image += shown;
        let content = tokenize_with_images(tokenizer, &message.content, counts, image)?;
        let offset = tokens.ids.len();
        tokens.push(&content.ids, trained);
        for span in content.image_spans {
            let span = span.start + offset..span.end + offset;
            tokens.loss_mask[span.clone()].fill(false);
            image_spans.push(span);
        }
        tokens.push(&tokenizer.encode(END_OF_TURN)?, trained);
        tokens.push(&tokenizer.encode("\n")?, false);
    }
    Ok(Ok(ImageConversation {
        tokens,
        image_spans,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer");
        TextTokenizer::from_model_dir(&dir).unwrap()
    }

    fn chat(user: &str, images: usize) -> Conversation {
        serde_json::from_value(serde_json::json!({
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": "Seven."},
            ],
            "images": vec!["x.png"; images],
        }))
        .unwrap()
    }

    /// A tokenizer whose vocabulary lacks `<|im_start|>` (here the fixture's with that added
    /// token removed) is refused, naming the file and the token, where the template would
    /// otherwise be cut into ordinary text pieces.
    #[test]
    fn a_tokenizer_without_the_template_tokens_is_refused_by_name() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture.join("tokenizer.json")).unwrap())
                .unwrap();
        json["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|token| token["content"] != "<|im_start|>");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        let without = TextTokenizer::from_model_dir(dir.path()).unwrap();
        let error = tokenize_conversation(&without, &chat("Which?", 0))
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("tokenizer.json") && error.contains("`<|im_start|>`"),
            "{error}"
        );
        assert!(tokenize_conversation(&tokenizer(), &chat("Which?", 0)).is_ok());
    }

    #[test]
    fn image_tokens_sit_in_the_user_turn_and_are_never_targets() {
        let tokenizer = tokenizer();
        let image = ImageTokens::plain(5);
        let conversation = chat("<image>\nWhich digit?", 1);
        let tokenized = tokenize_image_conversation(&tokenizer, &conversation, &[4], &image)
            .unwrap()
            .unwrap();
        let span = tokenized.image_spans[0].clone();
        assert_eq!(span.len(), 4);
        let turn = tokenizer.encode("<|im_start|>user\n").unwrap();
        assert_eq!(span.start, turn.len());
        assert!(tokenized.tokens.ids[span.clone()].iter().all(|&id| id == 5));
        assert!(tokenized.tokens.loss_mask[span].iter().all(|&m| !m));
        let targets: Vec<u32> = tokenized
            .tokens
            .ids
            .iter()
            .zip(&tokenized.tokens.loss_mask)
            .filter(|&(_, &m)| m)
            .map(|(&id, _)| id)
            .collect();
        assert_eq!(tokenizer.decode(&targets).unwrap(), "Seven.<|im_end|>");
        // Without a placeholder the image opens the first user turn.
        let tokenized = tokenize_image_conversation(&tokenizer, &chat("Which?", 1), &[4], &image)
            .unwrap()
            .unwrap();
        assert_eq!(tokenized.image_spans[0].start, turn.len());
    }

    #[test]
    fn placeholder_mismatches_and_images_on_text_models_are_refused() {
        let tokenizer = tokenizer();
        let image = ImageTokens::plain(5);
        let two = chat("<image> and <image>", 1);
        let err = tokenize_image_conversation(&tokenizer, &two, &[4], &image)
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains("2 `<image>` placeholders for 1 images"),
            "{err}"
        );
        let err = tokenize_conversation(&tokenizer, &chat("<image>", 1))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("vision-language"), "{err}");
    }

    /// OpenAI/Qwen-VL content parts read as the same text with an `<image>` placeholder per
    /// image, the parts' paths as the record's images; both sources at once are refused.
    #[test]
    fn content_parts_read_as_placeholders_and_images() {
        let parts: Conversation = serde_json::from_value(serde_json::json!({
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "image": "png/1.png"},
                    {"type": "text", "text": "\nWhich digit?"},
                ]},
                {"role": "assistant", "content": [{"type": "text", "text": "Seven."}]},
            ],
        }))
        .unwrap();
        let mut text = chat("<image>\nWhich digit?", 1);
        text.images = vec!["png/1.png".into()];
        assert_eq!(parts, text);
        let tokenizer = tokenizer();
        let image = ImageTokens::plain(5);
        let tokens = |c: &Conversation| {
            tokenize_image_conversation(&tokenizer, c, &[4], &image)
                .unwrap()
                .unwrap()
        };
        assert_eq!(tokens(&parts), tokens(&text));

        let both = serde_json::from_value::<Conversation>(serde_json::json!({
            "messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]}],
            "images": ["b.png"],
        }));
        assert!(both.unwrap_err().to_string().contains("in one place"));
        let unknown = serde_json::from_value::<Conversation>(serde_json::json!({
            "messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}],
        }));
        assert!(unknown.is_err());
    }
}
