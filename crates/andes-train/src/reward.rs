//! Named reward functions that score a sampled completion against a reference answer
//! (GRPO): 1.0 when it passes, 0.0 otherwise, as in DeepSeekMath's rule-based rewards.

use andes_data::answer::AnswerMatch;
use serde::{Deserialize, Serialize};

/// How a completion is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardFunction {
    /// The completion equals the answer, ignoring case, surrounding space, runs of space and
    /// a final full stop.
    ExactMatch,
    /// The first number in the completion equals the first number in the answer.
    NumericMatch,
    /// The completion is `<think>…</think>` then `<answer>…</answer>` and nothing else
    /// (DeepSeek-R1's format reward); the answer is not consulted.
    Format,
}

impl RewardFunction {
    /// The reward of `completion` (decoded, stop token removed) for reference `answer`.
    pub fn score(self, completion: &str, answer: &str) -> f64 {
        let passed = match self {
            RewardFunction::ExactMatch => AnswerMatch::Exact.matches(completion, answer),
            RewardFunction::NumericMatch => AnswerMatch::Numeric.matches(completion, answer),
            RewardFunction::Format => is_think_then_answer(completion),
        };
        if passed { 1.0 } else { 0.0 }
    }
}

fn is_think_then_answer(text: &str) -> bool {
    let Some(rest) = text.trim().strip_prefix("<think>") else {
        return false;
    };
    let Some((_, rest)) = rest.split_once("</think>") else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix("<answer>") else {
        return false;
    };
    rest.strip_suffix("</answer>")
        .is_some_and(|inner| !inner.contains("</answer>") && !inner.contains("<think>"))
}

#[cfg(test)]
mod tests {
    use super::RewardFunction::*;

    #[test]
    fn format_wants_think_then_answer_only() {
        assert_eq!(
            Format.score("<think>4+3</think> <answer>7</answer>", ""),
            1.0
        );
        assert_eq!(Format.score("<answer>7</answer>", ""), 0.0);
        assert_eq!(
            Format.score("<think>a</think><answer>7</answer> more", ""),
            0.0
        );
    }
}
