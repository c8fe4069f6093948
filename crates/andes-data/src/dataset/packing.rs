//! Packing tokenized documents into fixed windows of `seq_len + 1` tokens (inputs and shifted
//! targets): as GPT-style pretraining does (a stream cut into windows, documents separated by
//! end-of-text and attending to each other), whole records side by side, each attending
//! only to itself with its positions restarting (TRL's padding-free packing for SFT), or one
//! record a window with its tail padded (the padded batches of SFT without packing).

use super::MaskedTokens;

/// One training example: `seq_len + 1` tokens; position `t` predicts token `t + 1` where
/// `loss_mask[t + 1]` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenWindow {
    /// Token ids, `seq_len + 1` of them.
    pub ids: Vec<u32>,
    /// Whether each token is a target.
    pub loss_mask: Vec<bool>,
    /// The record each token belongs to, when records are packed apart
    /// ([`Packing::PaddingFree`]): a token attends only to earlier tokens of its record, and
    /// its position counts from its record's start. Empty for a stream window.
    pub segments: Vec<u32>,
}

/// How records become windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// One stream of every record, cut into consecutive windows: no padding, but a record
    /// may be split across windows and sees the records before it.
    #[default]
    Stream,
    /// Whole records (cut to a window when longer) side by side, a window's tail padded when
    /// the next record does not fit; attention block-diagonal per record, positions restarting
    /// at each (TRL's `padding_free` packing): each record's loss is what it is alone.
    PaddingFree,
    /// One record a window (cut to the window when longer), its tail padding: a padded
    /// batch, one conversation a row, as transformers collates SFT data without packing. A
    /// batch's columns past its last counted target are cut off before it runs, so a batch
    /// costs its longest record (padding to the longest), not the window.
    Padded,
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
                segments: Vec::new(),
            });
            start += seq_len;
        }
        Self::of(windows)
    }

    /// Places `documents` whole (each cut to `seq_len + 1` tokens) in windows of `seq_len + 1`
    /// tokens, in order, starting a new window when the next one does not fit in the room
    /// left; the tail of a window is padding (id 0, never a target, a segment of its own).
    /// A record's first token is never a target: nothing of its record precedes it.
    pub fn pack_apart(documents: &[MaskedTokens], seq_len: usize) -> Self {
        let width = seq_len + 1;
        let mut windows = Vec::new();
        let mut current = TokenWindow {
            ids: Vec::with_capacity(width),
            loss_mask: Vec::with_capacity(width),
            segments: Vec::with_capacity(width),
        };
        let close = |current: &mut TokenWindow, windows: &mut Vec<TokenWindow>| {
            if current.ids.is_empty() {
                return;
            }
            let padding = width - current.ids.len();
            let segment = current.segments.last().map_or(0, |s| s + 1);
            current.ids.extend(std::iter::repeat_n(0, padding));
            current
                .loss_mask
                .extend(std::iter::repeat_n(false, padding));
            current
                .segments
                .extend(std::iter::repeat_n(segment, padding));
            windows.push(std::mem::replace(
                current,
                TokenWindow {
                    ids: Vec::with_capacity(width),
                    loss_mask: Vec::with_capacity(width),
                    segments: Vec::with_capacity(width),
                },
            ));
        };
        for document in documents.iter().filter(|d| d.ids.len() > 1) {
            let len = document.ids.len().min(width);
            if current.ids.len() + len > width {
                close(&mut current, &mut windows);
            }
            let segment = current.segments.last().map_or(0, |s| s + 1);
            current.ids.extend_from_slice(&document.ids[..len]);
            current.loss_mask.push(false);
            current
                .loss_mask
                .extend_from_slice(&document.loss_mask[1..len]);
            current.segments.extend(std::iter::repeat_n(segment, len));
        }
        close(&mut current, &mut windows);
        Self::of(windows)
    }

    /// Places each of `documents` (cut to `seq_len + 1` tokens) in a window of its own, its
    /// tail padding (id 0, never a target). A record's first token is never a target.
    pub fn pack_padded(documents: &[MaskedTokens], seq_len: usize) -> Self {
        let width = seq_len + 1;
        let windows = documents
            .iter()
            .filter(|d| d.ids.len() > 1)
            .map(|document| {
                let len = document.ids.len().min(width);
                let mut ids = document.ids[..len].to_vec();
                ids.resize(width, 0);
                let mut loss_mask = vec![false];
                loss_mask.extend_from_slice(&document.loss_mask[1..len]);
                loss_mask.resize(width, false);
                TokenWindow {
                    ids,
                    loss_mask,
                    segments: Vec::new(),
                }
            })
            .collect();
        Self::of(windows)
    }

    fn of(windows: Vec<TokenWindow>) -> Self {
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

    /// A record of `ids`, every token a target.
    fn record(ids: std::ops::Range<u32>) -> MaskedTokens {
        let mut doc = MaskedTokens::default();
        doc.push(&ids.collect::<Vec<u32>>(), true);
        doc
    }

    #[test]
    fn windows_overlap_by_one_token_and_drop_the_tail() {
        let mut doc = MaskedTokens::default();
        doc.push(&(0..10).collect::<Vec<u32>>(), true);
        let packed = PackedWindows::pack(&[doc], 4);
        let ids: Vec<Vec<u32>> = packed.windows.iter().map(|w| w.ids.clone()).collect();
        assert_eq!(ids, vec![vec![0, 1, 2, 3, 4], vec![4, 5, 6, 7, 8]]);
        assert_eq!(packed.target_tokens, 8);
    }

    #[test]
    fn records_packed_apart_stay_whole_in_their_own_segments() {
        let packed = PackedWindows::pack_apart(&[record(1..4), record(4..7), record(7..17)], 7);
        let windows = &packed.windows;
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].ids, [1, 2, 3, 4, 5, 6, 0, 0]);
        assert_eq!(windows[0].segments, [0, 0, 0, 1, 1, 1, 2, 2]);
        assert_eq!(
            windows[0].loss_mask,
            [false, true, true, false, true, true, false, false]
        );
        // Longer than a window: cut to it.
        assert_eq!(windows[1].ids, (7..15).collect::<Vec<u32>>());
        assert_eq!(packed.target_tokens, 4 + 7);
    }

    #[test]
    fn padded_records_take_a_window_each() {
        let packed = PackedWindows::pack_padded(&[record(1..4), record(7..17)], 7);
        let windows = &packed.windows;
        assert_eq!(windows[0].ids, [1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(
            windows[0].loss_mask,
            [false, true, true, false, false, false, false, false]
        );
        assert!(windows[0].segments.is_empty());
        assert_eq!(windows[1].ids, (7..15).collect::<Vec<u32>>());
        assert_eq!(packed.target_tokens, 2 + 7);
    }
}
