//! Speculative decoding: a drafter proposes a block of tokens and the model verifies the whole
//! block in one pass ([`crate::generate`]), exactly for greedy decoding and by the standard
//! rejection rule for sampling, so that the output distribution is the model's own.
//!
//! Two drafters. **Prompt lookup** (self-speculative, the default): the last `n` tokens are
//! searched for earlier in the context, prompt and output alike, and the tokens that followed
//! their latest earlier occurrence are proposed (repeated with the occurrence's period where
//! they run into the present). On a phone it costs no memory and no training,
//! and the tasks AndesVL serves on device repeat their context a great deal (reading text out
//! of an image, rewriting a message, answering about a screen): there the block is often
//! accepted whole; where the context does not repeat nothing is proposed and a step costs
//! what it did. **A draft model** (`--draft PKG`): a smaller package with the same vocabulary
//! decodes the block ahead with its own cache, as in Leviathan et al. (2023) and Chen et al.
//! (2023); it proposes everywhere, at the cost of its weights' memory and its own steps.

use andes_model::generate::{TokenSampler, argmax};

use crate::decoder::{Decoder, Logits};
use crate::kv::KvCache;

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

/// `min(draft, limit)` tokens continuing `history` as it went on after the latest earlier
/// occurrence of its longest matching suffix. That occurrence lies `p` tokens back, so the
/// continuation repeats with period `p`: token `k` of the draft is the `k mod p`-th that
/// followed the occurrence. Where the history repeats a short run (a model caught in a loop, a
/// list, a table's rows), the draft is then the whole block and not only the tokens between
/// the occurrence and the end.
pub fn propose(history: &[u32], speculation: &Speculation, limit: usize) -> Vec<u32> {
    let len = history.len();
    let most = speculation.draft.min(limit);
    for n in (1..=speculation.ngram.min(len.saturating_sub(1))).rev() {
        let tail = &history[len - n..];
        // latest start i < len - n with history[i..i+n] == tail
        if let Some(i) = (0..len - n).rev().find(|&i| &history[i..i + n] == tail) {
            let period = len - n - i;
            return (0..most).map(|k| history[i + n + k % period]).collect();
        }
    }
    Vec::new()
}

/// Draft tokens with, for a draft model's, the distribution each was drawn from (none: the
/// token is proposed with certainty, as prompt lookup proposes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposal {
    /// The drafted tokens, in order.
    pub tokens: Vec<u32>,
    /// The draft distribution of each token (sampled decoding with a draft model only).
    pub distributions: Option<Vec<Vec<(u32, f32)>>>,
}

/// Where a generation's drafts come from.
pub enum Drafter<'a> {
    /// No speculation: one token a step.
    None,
    /// Prompt lookup.
    Lookup(Speculation),
    /// A draft model decoding ahead.
    Model(DraftModel<'a>),
}

impl Drafter<'_> {
    /// Up to `limit` tokens to verify after `history` (the prompt and every token so far, the
    /// pending one last).
    pub(crate) fn propose(
        &mut self,
        history: &[u32],
        limit: usize,
        sampler: &mut TokenSampler,
    ) -> Proposal {
        match self {
            Drafter::None => Proposal::default(),
            Drafter::Lookup(speculation) => Proposal {
                tokens: propose(history, speculation, limit),
                distributions: None,
            },
            Drafter::Model(model) => model.propose(history, limit, sampler),
        }
    }

    /// `accepted` of the last proposal's tokens were kept.
    pub(crate) fn accepted(&mut self, accepted: usize) {
        if let Drafter::Model(model) = self {
            model.accepted(accepted);
        }
    }
}

/// A draft model and its own KV cache, which holds the first `fed` tokens of the history.
pub struct DraftModel<'a> {
    decoder: &'a Decoder,
    cache: KvCache,
    /// Tokens of the history in the cache.
    fed: usize,
    /// Most tokens proposed a step.
    block: usize,
    /// The history's length when the last block was proposed, and that block's length.
    last: (usize, usize),
}

impl<'a> DraftModel<'a> {
    /// `decoder` proposing up to `block` tokens a step.
    pub fn new(decoder: &'a Decoder, block: usize) -> Self {
        Self {
            decoder,
            cache: decoder.cache(None),
            fed: 0,
            block,
            last: (0, 0),
        }
    }

    /// Feeds the history the cache lacks, then decodes up to `limit` tokens, each chosen as
    /// the generation chooses (argmax, or drawn after the same warpers) and fed back but the
    /// last.
    fn propose(&mut self, history: &[u32], limit: usize, sampler: &mut TokenSampler) -> Proposal {
        let room = self
            .decoder
            .shape
            .max_positions
            .saturating_sub(history.len());
        let count = self.block.min(limit).min(room);
        self.last = (history.len(), count);
        if count == 0 {
            return Proposal::default();
        }
        let inputs = self.decoder.embed(&history[self.fed..]);
        let mut logits = self.decoder.forward(inputs, &mut self.cache, Logits::Last);
        self.fed = history.len();
        let mut proposal = Proposal {
            tokens: Vec::with_capacity(count),
            distributions: None,
        };
        for i in 0..count {
            let token = match sampler.probabilities(&logits) {
                None => argmax(&logits),
                Some(q) => {
                    let token = sampler.draw(&q);
                    proposal.distributions.get_or_insert_with(Vec::new).push(q);
                    token
                }
            };
            proposal.tokens.push(token);
            if i + 1 < count {
                let inputs = self.decoder.embed(&[token]);
                logits = self.decoder.forward(inputs, &mut self.cache, Logits::Last);
            }
        }
        proposal
    }

    /// Keeps in the cache the history and the accepted drafts it holds (the last draft was
    /// never fed), dropping the rejected ones.
    fn accepted(&mut self, accepted: usize) {
        let (base, count) = self.last;
        if count == 0 {
            return;
        }
        let kept = base + accepted.min(count.saturating_sub(1));
        self.cache.rewind(kept);
        self.fed = kept.min(self.fed + count.saturating_sub(1));
    }
}

/// What verification made of a drafted token.
pub(crate) enum Verdict {
    /// The token stands.
    Accept,
    /// The token is replaced by this one, and the rest of the block is dropped.
    Replace(u32),
}

/// Verifies `guess` against the model's `logits`: greedy, accepted when it is the argmax;
/// sampled, by the standard rejection rule. `drawn_from` is the draft distribution `q` it was
/// drawn from, none when it was proposed with certainty (prompt lookup): it is accepted with
/// probability `min(1, p(x)/q(x))` (`p(x)` with certainty), otherwise a token is drawn from
/// `max(0, p − q)` (`p` without `x`), renormalised. The output distribution is `p` either way.
pub(crate) fn verify(
    sampler: &mut TokenSampler,
    logits: &[f32],
    guess: u32,
    drawn_from: Option<&[(u32, f32)]>,
) -> Verdict {
    let Some(p) = sampler.probabilities(logits) else {
        return match argmax(logits) {
            token if token == guess => Verdict::Accept,
            token => Verdict::Replace(token),
        };
    };
    let of = |dist: &[(u32, f32)], id: u32| dist.iter().find(|e| e.0 == id).map_or(0.0, |e| e.1);
    let q_guess = drawn_from.map_or(1.0, |q| of(q, guess));
    let chance = (of(&p, guess) / q_guess).min(1.0);
    if sampler.uniform() < chance {
        return Verdict::Accept;
    }
    let mut residual: Vec<(u32, f32)> = match drawn_from {
        None => p.iter().copied().filter(|e| e.0 != guess).collect(),
        Some(q) => p
            .iter()
            .map(|&(id, pid)| (id, (pid - of(q, id)).max(0.0)))
            .filter(|e| e.1 > 0.0)
            .collect(),
    };
    let total: f32 = residual.iter().map(|e| e.1).sum();
    if residual.is_empty() || total <= 0.0 {
        return Verdict::Replace(sampler.draw(&p));
    }
    residual.iter_mut().for_each(|e| e.1 /= total);
    Verdict::Replace(sampler.draw(&residual))
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
        // no bigram match: fall back to the last unigram, two back, so "3 2" repeats
        assert_eq!(propose(&[1, 2, 3, 2], &speculation, 10), vec![3, 2, 3]);
        assert!(propose(&[1, 2, 3], &speculation, 10).is_empty());
    }

    /// A repeating run is continued for the whole block, its period kept.
    #[test]
    fn continues_a_repeating_run_with_its_period() {
        let speculation = Speculation { draft: 5, ngram: 3 };
        assert_eq!(propose(&[9, 4, 4, 4], &speculation, 10), vec![4; 5]);
        assert_eq!(
            propose(&[1, 5, 6, 5, 6, 5], &speculation, 10),
            vec![6, 5, 6, 5, 6]
        );
    }
}
