//! Evaluation tasks: held-out questions with a known answer, scored the way
//! lm-evaluation-harness scores them: multiple choice by the log-likelihood of each option,
//! or a generated answer compared with the reference.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::caption::resolve_image;
use super::records::{RecordError, read_records};
use crate::answer::AnswerMatch;

/// One question of a task file.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The question as the model reads it, `<image>` marking where each image goes.
    pub prompt: String,
    /// The images it shows, resolved against the task file's folder.
    pub images: Vec<PathBuf>,
    /// What counts as right.
    pub target: TaskTarget,
}

/// What a task record's answer is.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskTarget {
    /// Options scored by their log-likelihood after the prompt; right when the answer's is
    /// the highest.
    Choice {
        /// The options' texts.
        choices: Vec<String>,
        /// Index of the right option.
        answer: usize,
    },
    /// A greedy completion compared with the answer.
    Generation {
        /// The reference answer.
        answer: String,
        /// How the completion is compared.
        rule: AnswerMatch,
    },
}

/// A task file's line: `{"prompt", "choices", "answer": index}` or `{"prompt", "answer":
/// text or number, "match": "exact" | "numeric"}`, either with `"images": [paths]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    prompt: String,
    #[serde(default)]
    choices: Option<Vec<String>>,
    answer: serde_json::Value,
    #[serde(default, rename = "match")]
    rule: Option<AnswerMatch>,
    #[serde(default)]
    images: Vec<String>,
}

/// The keys of a task record (a Parquet task file's columns).
const TASK_COLUMNS: [&str; 5] = ["prompt", "choices", "answer", "match", "images"];

/// What a task record looks like, for error messages.
const TASK_SHAPE: &str = "{\"prompt\", \"choices\": [text, ...], \"answer\": index} or \
                          {\"prompt\", \"answer\": text, \"match\": \"exact\"|\"numeric\"}, \
                          with \"images\": [path, ...] optional";

/// Reads the questions of `path`, every record checked (answer in range, images present):
/// a bad record stops the read, named by its line.
pub fn load_task(path: &Path) -> Result<Vec<TaskRecord>, RecordError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let (records, _) = read_records(path, &TASK_COLUMNS, false, |line| {
        Ok(match serde_json::from_str::<TaskLine>(line) {
            Ok(line) => task_record(line, folder),
            Err(e) => Err(format!("expected {TASK_SHAPE}: {e}")),
        })
    })?;
    if records.is_empty() {
        return Err(RecordError::BadRecord {
            path: path.to_owned(),
            line: 0,
            message: "the task file holds no questions".into(),
        });
    }
    Ok(records)
}

fn task_record(line: TaskLine, folder: &Path) -> Result<TaskRecord, String> {
    if line.prompt.trim().is_empty() {
        return Err("prompt: empty; a question needs a prompt to score its answer after".into());
    }
    let images = line
        .images
        .iter()
        .map(|image| resolve_image(folder, image))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| format!("images: {message}"))?;
    let target = match (line.choices, &line.answer) {
        (Some(_), _) if line.rule.is_some() => {
            return Err("match: a multiple-choice record is scored by likelihood; \
                        `match` is for generation records (no `choices`)"
                .into());
        }
        (Some(choices), answer) => {
            if choices.len() < 2 {
                return Err(format!(
                    "choices: {} option(s); expected at least 2",
                    choices.len()
                ));
            }
            let answer = answer
                .as_u64()
                .map(|index| index as usize)
                .filter(|&index| index < choices.len())
                .ok_or_else(|| {
                    format!(
                        "answer: found {answer}, expected the index of the right choice \
                         (0 to {})",
                        choices.len() - 1
                    )
                })?;
            TaskTarget::Choice { choices, answer }
        }
        (None, serde_json::Value::String(answer)) => TaskTarget::Generation {
            answer: answer.clone(),
            rule: line.rule.unwrap_or(AnswerMatch::Exact),
        },
        (None, serde_json::Value::Number(number)) => TaskTarget::Generation {
            answer: number.to_string(),
            rule: line.rule.unwrap_or(AnswerMatch::Numeric),
        },
        (None, other) => {
            return Err(format!(
                "answer: found {other}, expected the reference answer (a string or a number) \
                 for a generation record"
            ));
        }
    };
    Ok(TaskRecord {
        prompt: line.prompt,
        images,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(lines: &str) -> Result<Vec<TaskRecord>, RecordError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"checked to exist only").unwrap();
        let path = dir.path().join("task.jsonl");
        std::fs::write(&path, lines).unwrap();
        load_task(&path)
    }

    #[test]
    fn choice_and_generation_records_are_read_with_their_images() {
        let records = load(concat!(
            r#"{"prompt": "<image>\nWhich?", "choices": ["a", "b"], "answer": 1, "images": ["a.png"]}"#,
            "\n",
            r#"{"prompt": "How many?", "answer": 7}"#,
            "\n",
            r#"{"prompt": "Say it.", "answer": "it"}"#,
        ))
        .unwrap();
        assert_eq!(
            records[0].target,
            TaskTarget::Choice {
                choices: vec!["a".into(), "b".into()],
                answer: 1
            }
        );
        assert!(records[0].images[0].ends_with("a.png"));
        assert_eq!(
            records[1].target,
            TaskTarget::Generation {
                answer: "7".into(),
                rule: AnswerMatch::Numeric
            }
        );
        assert_eq!(
            records[2].target,
            TaskTarget::Generation {
                answer: "it".into(),
                rule: AnswerMatch::Exact
            }
        );
    }

    #[test]
    fn bad_records_name_their_line_and_field() {
        let error = |lines: &str| load(lines).unwrap_err().to_string();
        let out_of_range = error(concat!(
            r#"{"prompt": "p", "answer": "x"}"#,
            "\n",
            r#"{"prompt": "p", "choices": ["a", "b"], "answer": 2}"#
        ));
        assert!(
            out_of_range.contains("task.jsonl:2: answer: found 2"),
            "{out_of_range}"
        );
        let missing = error(r#"{"prompt": "p", "answer": "x", "images": ["b.png"]}"#);
        assert!(
            missing.contains(":1: images: image") && missing.contains("b.png not found"),
            "{missing}"
        );
        let one = error(r#"{"prompt": "p", "choices": ["a"], "answer": 0}"#);
        assert!(one.contains("choices: 1 option(s)"), "{one}");
        let rule =
            error(r#"{"prompt": "p", "choices": ["a", "b"], "answer": 0, "match": "exact"}"#);
        assert!(rule.contains("match: a multiple-choice record"), "{rule}");
        assert!(error("").contains("holds no questions"));
    }
}
