//! Speculative decoding by prompt lookup (self-speculative: no draft model): the last `n`
//! tokens are searched for earlier in the context, prompt and output alike, and the tokens
//! that followed their latest earlier occurrence are proposed; the model verifies the whole
//! block in one pass ([`crate::generate`]).
//!
//! Why this drafter: on a phone it costs no memory and no training (a draft model is a second
//! package; an early-exit head must be trained), and the tasks AndesVL serves on device
//! repeat their context a great deal (reading text out of an image, rewriting a message,
//! answering about a screen): there the block is often accepted whole. Where the context
//! does not repeat nothing is proposed and a step costs what it did.

/// Prompt-lookup settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// Most tokens proposed per step.
    pub draft: usize,
    /// Longest n-gram matched (shorter ones are tried when it finds nothing, down to 1).
    pub ngram: usize,
}

impl Default for Speculation {
    fn default() -> Self {
        Self { draft: 8, ngram: 3 }
    }
}

/// Up to `min(draft, limit)` tokens that followed the latest earlier occurrence of the
/// longest matching suffix of `history`.
pub fn propose(history: &[u32], speculation: &Speculation, limit: usize) -> Vec<u32> {
    let len = history.len();
    let most = speculation.draft.min(limit);
    for n in (1..=speculation.ngram.min(len.saturating_sub(1))).rev() {
        let tail = &history[len - n..];
        // latest start i < len - n with history[i..i+n] == tail
        if let Some(i) = (0..len - n).rev().find(|&i| &history[i..i + n] == tail) {
            let follow = &history[i + n..(i + n + most).min(len)];
            if !follow.is_empty() {
                return follow.to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_match_of_the_longest_suffix() {
        let speculation = Speculation { draft: 3, ngram: 2 };
        // "7 8" occurred at 1 (followed by 9 1) and at 4 (followed by 5 7 8): the latest wins
        let history = [6, 7, 8, 9, 7, 8, 5, 7, 8];
        assert_eq!(propose(&history, &speculation, 10), vec![5, 7, 8]);
        assert_eq!(propose(&history, &speculation, 2), vec![5, 7]);
        // no bigram match: fall back to the last unigram
        assert_eq!(propose(&[1, 2, 3, 2], &speculation, 10), vec![3, 2]);
        assert!(propose(&[1, 2, 3], &speculation, 10).is_empty());
    }
}
