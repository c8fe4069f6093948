//! Named reward functions that score a sampled completion against a reference answer
//! (GRPO): 1.0 when it passes, 0.0 otherwise, as in DeepSeekMath's rule-based rewards.

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
            RewardFunction::ExactMatch => normalized(completion) == normalized(answer),
            RewardFunction::NumericMatch => {
                match (first_number(completion), first_number(answer)) {
                    (Some(got), Some(want)) => (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                    _ => false,
                }
            }
            RewardFunction::Format => is_think_then_answer(completion),
        };
        if passed { 1.0 } else { 0.0 }
    }
}

fn normalized(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let joined = words.join(" ").to_lowercase();
    joined.strip_suffix('.').unwrap_or(&joined).to_string()
}

/// The first `-?digits(.digits)?` in `text`.
fn first_number(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let negative = start > 0 && bytes[start - 1] == b'-';
    let mut end = start;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    let value: f64 = text[start..end].parse().ok()?;
    Some(if negative { -value } else { value })
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
    fn exact_match_ignores_case_space_and_a_final_stop() {
        assert_eq!(ExactMatch.score("  The  Cat. ", "the cat"), 1.0);
        assert_eq!(ExactMatch.score("the cats", "the cat"), 0.0);
    }

    #[test]
    fn numeric_match_reads_the_first_number() {
        assert_eq!(NumericMatch.score("It has 7 letters, not 8.", "7"), 1.0);
        assert_eq!(NumericMatch.score("-2.50 degrees", "-2.5"), 1.0);
        assert_eq!(NumericMatch.score("8 letters", "7"), 0.0);
        assert_eq!(NumericMatch.score("seven", "7"), 0.0);
        assert_eq!(NumericMatch.score("x 3.", "3"), 1.0);
    }

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
