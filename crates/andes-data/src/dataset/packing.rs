//! Packing tokenized documents into fixed windows of `seq_len + 1` tokens (inputs and shifted
//! targets), as GPT-style pretraining does: no padding, documents separated by end-of-text.

use super::MaskedTokens;

/// One training example: `seq_len + 1` tokens; position `t` predicts token `t + 1` where
/// `loss_mask[t + 1]` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenWindow {
    /// Token ids, `seq_len + 1` of them.
    pub ids: Vec<u32>,
    /// Whether each token is a target.
    pub loss_mask: Vec<bool>,
}

/// All windows of a dataset, in file order; the trainer draws them in a seeded order.
#[derive(Debug, Clone)]
pub struct PackedWindows {
    /// The windows.
    pub windows: Vec<TokenWindow>,
    /// Tokens that were targets in the windows.
    pub target_tokens: usize,
}

impl PackedWindows {
    /// Concatenates `documents` and cuts the stream into consecutive windows of `seq_len + 1`
    /// tokens that overlap by one token (the last target of a window is the first input of
    /// the next); the incomplete tail is dropped.
    pub fn pack(documents: &[MaskedTokens], seq_len: usize) -> Self {
        let ids: Vec<u32> = documents
            .iter()
            .flat_map(|d| d.ids.iter().copied())
            .collect();
        let mask: Vec<bool> = documents
            .iter()
            .flat_map(|d| d.loss_mask.iter().copied())
            .collect();
        let mut windows = Vec::new();
        let mut start = 0;
        while start + seq_len < ids.len() {
            windows.push(TokenWindow {
                ids: ids[start..start + seq_len + 1].to_vec(),
                loss_mask: mask[start..start + seq_len + 1].to_vec(),
            });
            start += seq_len;
        }
        let target_tokens = windows
            .iter()
            .map(|w| w.loss_mask[1..].iter().filter(|&&m| m).count())
            .sum();
        Self {
            windows,
            target_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_one_token_and_drop_the_tail() {
        let mut doc = MaskedTokens::default();
        doc.push(&(0..10).collect::<Vec<u32>>(), true);
        let packed = PackedWindows::pack(&[doc], 4);
        let ids: Vec<Vec<u32>> = packed.windows.iter().map(|w| w.ids.clone()).collect();
        assert_eq!(ids, vec![vec![0, 1, 2, 3, 4], vec![4, 5, 6, 7, 8]]);
        assert_eq!(packed.target_tokens, 8);
    }
}
