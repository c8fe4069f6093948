//! Training data: records read from files, tokenized with loss masks, packed into windows.

mod caption;
mod conversation;
mod packing;
mod preference;
mod prompt;
mod reader;
mod records;
mod stream;
mod task;
mod text;
mod windows;

pub use caption::{CaptionRecord, load_captions};
pub use conversation::{
    Conversation, ImageChat, ImageConversation, Message, load_image_conversations,
    tokenize_conversation, tokenize_image_conversation,
};
pub use packing::{PackedWindows, Packing, TokenWindow};
pub use preference::{PreferencePair, load_preferences};
pub use prompt::{PromptExample, load_prompts};
pub use reader::{RawRecord, RecordReader, is_parquet};
pub use records::{DataFormat, RecordError, load_sequences, read_records};
pub use stream::{StreamPosition, StreamedWindows};
pub use task::{TaskRecord, TaskTarget, load_task};
pub use text::tokenize_document;
pub use windows::{
    DataPosition, END_OF_TEXT, MixturePosition, WindowSet, Windowing, document_stream,
    draw_indices, draw_mixture, end_of_text,
};

/// Token ids of one document with, per token, whether it is a training target.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskedTokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `true` where the token is predicted and counted in the loss.
    pub loss_mask: Vec<bool>,
}

impl MaskedTokens {
    /// Appends `ids`, all with the same mask value.
    pub fn push(&mut self, ids: &[u32], trained: bool) {
        self.ids.extend_from_slice(ids);
        self.loss_mask
            .extend(std::iter::repeat_n(trained, ids.len()));
    }

    /// Appends `other`'s tokens with their own mask values.
    pub fn push_masked(&mut self, other: &MaskedTokens) {
        self.ids.extend_from_slice(&other.ids);
        self.loss_mask.extend_from_slice(&other.loss_mask);
    }
}

/// Targets a row's loss counts: the masked tokens after the first (nothing predicts the
/// first token of a row).
pub fn counted_targets(loss_mask: &[bool]) -> usize {
    loss_mask.iter().skip(1).filter(|&&m| m).count()
}
