//! The evaluation harness: a model's accuracy on a task file, scored as
//! lm-evaluation-harness scores it. A multiple-choice question is right when the answer's
//! continuation has the highest log-likelihood after the prompt (`acc`; `acc_norm` divides
//! each by its option's length in characters); a generation question when the greedy
//! completion matches the reference. Questions may show images (an AndesVL model).

use std::path::Path;

use andes_data::TextTokenizer;
use andes_data::dataset::{TaskRecord, TaskTarget};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::andesvl::ImagePlacement;
use crate::andesvl::rows::image_prompt;
use crate::completion::{Prompt, Thinking, chat_prompt, complete};
use crate::error::ModelError;
use crate::generate::{Decoding, GenerationRequest, eos_token_ids};
use crate::loss::head_log_probs;
use crate::model::{Model, ModelConfig};

/// How the questions are put to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOptions {
    /// Put each prompt as one user turn of the model's chat template with its generation
    /// prompt as the template renders it by default (as lm-evaluation-harness's
    /// `--apply_chat_template` does), the options and completions being the assistant's
    /// reply, a completion's thinking block dropped; otherwise the prompt is read as it
    /// stands, options follow it after a space, and a completion ends at its first newline
    /// (lm-evaluation-harness's defaults).
    pub chat: bool,
    /// Upper bound on a generation question's completion.
    pub max_new_tokens: usize,
}

/// A mean over questions with its standard error, as lm-evaluation-harness reports it
/// (sample standard deviation over √n).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// Fraction right.
    pub mean: f64,
    /// Its standard error; none for a single question.
    pub stderr: Option<f64>,
}

impl Score {
    /// The mean and standard error of `outcomes`.
    pub fn of(outcomes: impl Iterator<Item = bool>) -> Self {
        let outcomes: Vec<f64> = outcomes.map(|right| f64::from(u8::from(right))).collect();
        let n = outcomes.len() as f64;
        let mean = outcomes.iter().sum::<f64>() / n;
        let stderr = (outcomes.len() > 1).then(|| {
            let variance = outcomes.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (variance / n).sqrt()
        });
        Self { mean, stderr }
    }
}

/// What the model did with one question.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answered {
    /// A multiple-choice question.
    Choice {
        /// Summed log-probability of each option's tokens.
        log_likelihoods: Vec<f64>,
        /// Whether the answer's is the highest.
        right: bool,
        /// Whether the answer's is the highest per character of option.
        right_norm: bool,
    },
    /// A generation question.
    Generation {
        /// The greedy completion, stop token removed.
        completion: String,
        /// Whether it matches the reference.
        right: bool,
    },
}

impl Answered {
    /// Whether the question was answered right.
    pub fn right(&self) -> bool {
        match self {
            Answered::Choice { right, .. } | Answered::Generation { right, .. } => *right,
        }
    }
}

/// A task's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// Every question's answer, in file order.
    pub answers: Vec<Answered>,
    /// Accuracy over all questions.
    pub accuracy: Score,
    /// Accuracy with multiple-choice options compared per character (generation questions
    /// count as they are); none when the task has no multiple-choice question.
    pub accuracy_norm: Option<Score>,
}

/// Scores `model` (of `config`, loaded from `dir`, whose `preprocessor_config.json` prepares
/// images) on every question of `records`.
pub fn evaluate_task(
    (model, config, dir): (&Model, &ModelConfig, &Path),
    tokenizer: &TextTokenizer,
    records: &[TaskRecord],
    options: TaskOptions,
    device: &Device,
) -> Result<TaskReport, ModelError> {
    let stop_tokens = eos_token_ids(dir, config.text_config())?;
    let mut answers = Vec::with_capacity(records.len());
    for record in records {
        let context = match options.chat {
            true => chat_prompt(config, &record.prompt, Thinking::Default)?,
            false => record.prompt.clone(),
        };
        let answered = match &record.target {
            TaskTarget::Choice { choices, answer } => {
                let delimiter = if options.chat { "" } else { " " };
                let continuations: Vec<String> =
                    choices.iter().map(|c| format!("{delimiter}{c}")).collect();
                let scorer = ChoiceScorer {
                    model: (model, config, dir),
                    tokenizer,
                    device,
                };
                let log_likelihoods = scorer.log_likelihoods(&context, record, &continuations)?;
                let lengths: Vec<f64> = choices.iter().map(|c| c.chars().count() as f64).collect();
                let per_char: Vec<f64> = log_likelihoods
                    .iter()
                    .zip(&lengths)
                    .map(|(ll, len)| ll / len.max(1.0))
                    .collect();
                Answered::Choice {
                    right: first_argmax(&log_likelihoods) == *answer,
                    right_norm: first_argmax(&per_char) == *answer,
                    log_likelihoods,
                }
            }
            TaskTarget::Generation { answer, rule } => {
                let request = GenerationRequest {
                    max_new_tokens: options.max_new_tokens,
                    decoding: Decoding::Greedy,
                    stop_tokens: stop_tokens.clone(),
                    replay: false,
                };
                let prompt = Prompt {
                    text: context,
                    images: record.images.clone(),
                };
                let mut ids =
                    complete((model, config, dir), tokenizer, &prompt, &request, device)?.token_ids;
                ids.retain(|id| !stop_tokens.contains(id));
                let text = tokenizer.decode(&ids)?;
                let completion = match options.chat {
                    true => text
                        .rsplit_once("</think>")
                        .map_or(text.as_str(), |(_, answer)| answer)
                        .trim()
                        .to_string(),
                    false => text.split('\n').next().unwrap_or("").trim().to_string(),
                };
                Answered::Generation {
                    right: rule.matches(&completion, answer),
                    completion,
                }
            }
        };
        answers.push(answered);
    }
    let accuracy = Score::of(answers.iter().map(Answered::right));
    let accuracy_norm = answers
        .iter()
        .any(|a| matches!(a, Answered::Choice { .. }))
        .then(|| {
            Score::of(answers.iter().map(|a| match a {
                Answered::Choice { right_norm, .. } => *right_norm,
                other => other.right(),
            }))
        });
    Ok(TaskReport {
        answers,
        accuracy,
        accuracy_norm,
    })
}

/// The index of the largest value, the first on ties (as `numpy.argmax`).
fn first_argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
}

/// Log-likelihoods of a question's options, all options in one batch.
struct ChoiceScorer<'a> {
    model: (&'a Model, &'a ModelConfig, &'a Path),
    tokenizer: &'a TextTokenizer,
    device: &'a Device,
}

impl ChoiceScorer<'_> {
    /// Summed log-probability of each of `continuations`' tokens after `context` (with the
    /// record's images). The split into tokens follows lm-evaluation-harness: the context's
    /// trailing whitespace moves to the continuation, and the continuation's tokens are those
    /// of `context + continuation` past the context's, so a merge across the boundary is
    /// tokenized as the whole string would be.
    fn log_likelihoods(
        &self,
        context: &str,
        record: &TaskRecord,
        continuations: &[String],
    ) -> Result<Vec<f64>, ModelError> {
        let (model, config, dir) = self.model;
        let trimmed = context.trim_end();
        let moved = &context[trimmed.len()..];
        let context_text_ids = self.tokenizer.encode(trimmed)?;
        let mut tails = Vec::with_capacity(continuations.len());
        for continuation in continuations {
            let whole = self
                .tokenizer
                .encode(&format!("{trimmed}{moved}{continuation}"))?;
            let shared = context_text_ids.len().min(whole.len());
            let tail = whole[shared..].to_vec();
            if tail.is_empty() {
                return Err(ModelError::InvalidInput(format!(
                    "the option {continuation:?} of the prompt {:?} adds no token",
                    record.prompt
                )));
            }
            tails.push(tail);
        }
        let (context_ids, images) = match config.andesvl() {
            Some(vision) => {
                let (prompt, images) = image_prompt(
                    &record.images,
                    dir,
                    trimmed,
                    self.tokenizer,
                    vision,
                    self.device,
                )?;
                (prompt.ids, images)
            }
            None if !record.images.is_empty() => {
                return Err(ModelError::InvalidInput(format!(
                    "the question {:?} shows images: it needs an AndesVL model, and {} \
                     holds a text-only model",
                    record.prompt,
                    dir.display()
                )));
            }
            None => (context_text_ids, Vec::new()),
        };
        let rows: Vec<Vec<u32>> = tails
            .iter()
            .map(|tail| [context_ids.as_slice(), tail].concat())
            .collect();
        let width = rows.iter().map(Vec::len).max().unwrap_or(0) - 1;
        let padded = |row: &[u32]| {
            let mut row: Vec<i64> = row.iter().map(|&id| id as i64).collect();
            row.resize(width + 1, 0);
            row
        };
        let (inputs, targets): (Vec<i64>, Vec<i64>) = rows
            .iter()
            .flat_map(|row| {
                let row = padded(row);
                row[..width]
                    .iter()
                    .copied()
                    .zip(row[1..].iter().copied())
                    .collect::<Vec<_>>()
            })
            .unzip();
        let shape = [rows.len(), width];
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(inputs, shape), self.device);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, shape), self.device);
        let placements: Vec<ImagePlacement> = (0..rows.len())
            .flat_map(|sequence| {
                images.iter().map(move |image| ImagePlacement {
                    sequence,
                    ..image.clone()
                })
            })
            .collect();
        let embeddings = match model {
            Model::VisionLanguage(model) => model.embed(tokens, &placements)?,
            Model::Text(model) => model.embed(tokens),
        };
        let language_model = model.language_model();
        let hidden =
            language_model.forward_embeddings(embeddings, &mut language_model.new_cache())?;
        let log_probs: Vec<f32> = head_log_probs(language_model, hidden, targets)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("converted to f32");
        let start = context_ids.len() - 1;
        Ok(tails
            .iter()
            .enumerate()
            .map(|(row, tail)| {
                let offset = row * width + start;
                log_probs[offset..offset + tail.len()]
                    .iter()
                    .map(|&lp| f64::from(lp))
                    .sum()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_error_is_the_sample_deviation_over_root_n() {
        let score = Score::of([true, false, true, true].into_iter());
        assert_eq!(score.mean, 0.75);
        // p(1 - p) / (n - 1), the sample variance of 0/1 outcomes over n.
        let expected = (0.75f64 * 0.25 / 3.0).sqrt();
        assert!((score.stderr.unwrap() - expected).abs() < 1e-12);
        assert_eq!(Score::of([true].into_iter()).stderr, None);
    }

    #[test]
    fn ties_go_to_the_first_option() {
        assert_eq!(first_argmax(&[-1.0, -0.5, -0.5]), 1);
        assert_eq!(first_argmax(&[-2.0]), 0);
    }
}
