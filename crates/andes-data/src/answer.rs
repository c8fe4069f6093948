//! Whether a generated answer is the reference answer: the rules GRPO's rewards and the
//! evaluation harness's generation tasks share, so a reward and an accuracy never disagree
//! on the same completion.

use serde::{Deserialize, Serialize};

/// How a completion is compared with its reference answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMatch {
    /// The completion equals the answer, ignoring case, surrounding space, runs of space and
    /// a final full stop.
    Exact,
    /// The first number in the completion equals the first number in the answer.
    Numeric,
}

impl AnswerMatch {
    /// Whether `completion` (decoded, stop token removed) matches `answer`.
    pub fn matches(self, completion: &str, answer: &str) -> bool {
        match self {
            AnswerMatch::Exact => normalized(completion) == normalized(answer),
            AnswerMatch::Numeric => match (first_number(completion), first_number(answer)) {
                (Some(got), Some(want)) => (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                _ => false,
            },
        }
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

#[cfg(test)]
mod tests {
    use super::AnswerMatch::*;

    #[test]
    fn exact_match_ignores_case_space_and_a_final_stop() {
        assert!(Exact.matches("  The  Cat. ", "the cat"));
        assert!(!Exact.matches("the cats", "the cat"));
    }

    #[test]
    fn numeric_match_reads_the_first_number() {
        assert!(Numeric.matches("It has 7 letters, not 8.", "7"));
        assert!(Numeric.matches("-2.50 degrees", "-2.5"));
        assert!(!Numeric.matches("8 letters", "7"));
        assert!(!Numeric.matches("seven", "7"));
        assert!(Numeric.matches("x 3.", "3"));
    }
}
