//! Prompts with images: each `<image>` placeholder of the text becomes an optional start
//! marker, exactly as many image tokens as that image has visual tokens, and an optional end
//! marker; the spans of image tokens are returned so the model splices visual embeddings
//! there.

use std::ops::Range;

use crate::{DataError, TextTokenizer};

/// The placeholder a prompt marks each image with.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// How a model spells an image in its token stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTokens {
    /// Id repeated once per visual token (Qwen3's `<|vision_pad|>` in AndesVL).
    pub token_id: u32,
    /// Text before the image tokens (`<img>` in AndesVL), tokenized as text.
    pub start: Option<String>,
    /// Text after the image tokens (`</img>`).
    pub end: Option<String>,
}

impl ImageTokens {
    /// An image spelled by `token_id` alone, without start and end markers.
    pub fn plain(token_id: u32) -> Self {
        Self {
            token_id,
            start: None,
            end: None,
        }
    }
}

/// Token ids of a prompt and where its images go.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePrompt {
    /// The whole prompt's ids, image spans filled with the image token.
    pub ids: Vec<u32>,
    /// One range of `ids` per image, in order.
    pub image_spans: Vec<Range<usize>>,
}

/// Tokenizes `text` whose `<image>` placeholders stand for images of `visual_tokens[i]`
/// tokens each. With no placeholder at all, the images are put in front of the text (as the
/// transformers chat templates do for an image-then-text user turn).
pub fn tokenize_with_images(
    tokenizer: &TextTokenizer,
    text: &str,
    visual_tokens: &[usize],
    image: &ImageTokens,
) -> Result<ImagePrompt, DataError> {
    let placeholders = text.matches(IMAGE_PLACEHOLDER).count();
    let owned;
    let text = if placeholders == 0 && !visual_tokens.is_empty() {
        owned = IMAGE_PLACEHOLDER.repeat(visual_tokens.len()) + text;
        owned.as_str()
    } else if placeholders != visual_tokens.len() {
        return Err(DataError::ImagePlaceholders {
            placeholders,
            images: visual_tokens.len(),
        });
    } else {
        text
    };
    let mut ids = Vec::new();
    let mut image_spans = Vec::with_capacity(visual_tokens.len());
    for (i, piece) in text.split(IMAGE_PLACEHOLDER).enumerate() {
        if i > 0 {
            if let Some(start) = &image.start {
                ids.extend(tokenizer.encode(start)?);
            }
            let begin = ids.len();
            ids.extend(std::iter::repeat_n(image.token_id, visual_tokens[i - 1]));
            image_spans.push(begin..ids.len());
            if let Some(end) = &image.end {
                ids.extend(tokenizer.encode(end)?);
            }
        }
        if !piece.is_empty() {
            ids.extend(tokenizer.encode(piece)?);
        }
    }
    Ok(ImagePrompt { ids, image_spans })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tokenizer() -> TextTokenizer {
        TextTokenizer::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer/tokenizer.json"),
        )
        .unwrap()
    }

    #[test]
    fn placeholders_expand_to_each_images_token_count_between_markers() {
        let tokenizer = tokenizer();
        let image = ImageTokens {
            token_id: 7,
            start: Some("<img>".into()),
            end: Some("</img>".into()),
        };
        let prompt =
            tokenize_with_images(&tokenizer, "a <image> and <image>.", &[3, 5], &image).unwrap();
        assert_eq!(prompt.image_spans.len(), 2);
        assert_eq!(prompt.image_spans[0].len(), 3);
        assert_eq!(prompt.image_spans[1].len(), 5);
        for span in &prompt.image_spans {
            assert!(prompt.ids[span.clone()].iter().all(|&id| id == 7));
        }
        let start = tokenizer.encode("<img>").unwrap();
        let first = prompt.image_spans[0].start;
        assert_eq!(prompt.ids[first - start.len()..first], start[..]);
        let text = tokenizer.encode(" and ").unwrap();
        let end_len = tokenizer.encode("</img>").unwrap().len();
        let after = prompt.image_spans[0].end + end_len;
        assert_eq!(prompt.ids[after..after + text.len()], text[..]);
    }

    #[test]
    fn missing_placeholders_put_images_first_and_mismatches_are_errors() {
        let tokenizer = tokenizer();
        let image = ImageTokens::plain(7);
        let prompt = tokenize_with_images(&tokenizer, "hi", &[2], &image).unwrap();
        assert_eq!(prompt.image_spans, vec![0..2]);
        let error = tokenize_with_images(&tokenizer, "<image><image>", &[2], &image).unwrap_err();
        assert!(error.to_string().contains("2 `<image>`"), "{error}");
    }
}
