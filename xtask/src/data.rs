//! `cargo xtask data`: the training sets derived from the GCIDE dictionary slices and the
//! digit captions, and the image sets made from Debian packages (all described in
//! datasets/README.md), and where the slices are.

mod debian;
mod emoji;
mod icons;
mod image_set;
mod ocr;
mod seeded;

use anyhow::Context;

use self::image_set::{Task, multiple_choice};
use self::seeded::SeededRng;
use crate::workspace::root;

/// The GCIDE slice models train on, and quantizers calibrate on: the train split.
pub(crate) const GCIDE_TRAIN: &str = "datasets/gcide/gcide-sample.txt";
/// The GCIDE slice no run trains on: the held-out split that perplexities are measured on.
pub(crate) const GCIDE_EVAL: &str = "datasets/gcide/gcide-eval.txt";
/// The GCIDE slices the derived sets are made from, with the split each one becomes.
const GCIDE_SPLITS: [(&str, &str); 2] = [(GCIDE_TRAIN, "train"), (GCIDE_EVAL, "eval")];
/// Definitions longer than this (bytes; the slices are ASCII) are left out of the sets that
/// answer with a definition, so that an exchange fits a tiny model's window.
const MAX_DEFINITION_LEN: usize = 240;

/// One line of a GCIDE slice, `Headword: definition.`
struct Sense {
    headword: String,
    definition: String,
}

/// Makes the training sets derived from the GCIDE dictionary slices, one pair of files
/// (train from `gcide-sample.txt`, eval from `gcide-eval.txt`) per set:
/// SFT conversations, preference pairs and GRPO prompts with answers, and the digit
/// conversations of the vision-language recipes. Then the image sets of the vision-language
/// recipes made from Debian packages (fetched into a cache when missing): OCR, icons and
/// emoji. They are files in the repository, so that a recipe trains on the same records
/// whoever runs it; this remakes them after a slice or a generator changes, byte for byte the
/// same when nothing did.
pub(crate) fn write_derived_sets() -> anyhow::Result<()> {
    for (source, split) in GCIDE_SPLITS {
        let senses = gcide_senses(source)?;
        let short: Vec<&Sense> = senses
            .iter()
            .filter(|s| s.definition.len() <= MAX_DEFINITION_LEN)
            .collect();
        write_jsonl(
            &format!("datasets/sft/gcide-define-{split}.jsonl"),
            sft_records(&short),
        )?;
        write_jsonl(
            &format!("datasets/preferences/gcide-define-{split}.jsonl"),
            preference_records(&short),
        )?;
        write_jsonl(
            &format!("datasets/grpo/gcide-letters-{split}.jsonl"),
            letter_count_records(&senses),
        )?;
        write_jsonl(
            &format!("datasets/images/digits/chat-{split}.jsonl"),
            digit_chat_records(split)?,
        )?;
    }
    let eval_senses = gcide_senses(GCIDE_EVAL)?;
    write_jsonl(
        "datasets/tasks/gcide-define.jsonl",
        define_task(&eval_senses),
    )?;
    write_jsonl(
        "datasets/tasks/gcide-letters.jsonl",
        letters_task(&eval_senses),
    )?;
    write_jsonl("datasets/images/digits/task-eval.jsonl", digit_task()?)?;
    ocr::ocr_set()?.write()?;
    icons::icon_set()?.write()?;
    emoji::emoji_set()?.write()
}

/// Held-out multiple-choice questions for `andes eval --task` (`--apply-chat-template`):
/// "Define X." with four definitions of the held-out slice to choose from (X's and three
/// others', seeded), for the senses the SFT set keeps.
fn define_task(senses: &[Sense]) -> Vec<serde_json::Value> {
    let short: Vec<&Sense> = senses
        .iter()
        .filter(|s| s.definition.len() <= MAX_DEFINITION_LEN)
        .collect();
    let pool: Vec<String> = short.iter().map(|s| s.definition.clone()).collect();
    let mut rng = SeededRng::new(fnv1a(b"gcide-define"));
    short
        .iter()
        .map(|sense| {
            let Task::Choice { choices, answer } =
                multiple_choice(&mut rng, &sense.definition, &pool)
            else {
                unreachable!("multiple_choice makes choices")
            };
            serde_json::json!({
                "prompt": format!("Define {}.", sense.headword),
                "choices": choices,
                "answer": answer,
            })
        })
        .collect()
}

/// Held-out generation questions: the letters of each held-out headword, as GRPO's eval
/// prompts, scored by numeric match.
fn letters_task(senses: &[Sense]) -> Vec<serde_json::Value> {
    letter_count_records(senses)
        .into_iter()
        .map(|mut record| {
            let answer: u64 = record["answer"]
                .as_str()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            record["answer"] = answer.into();
            record
        })
        .collect()
}

/// Held-out image questions: each held-out digit with the ten digit names to choose from.
fn digit_task() -> anyhow::Result<Vec<serde_json::Value>> {
    const NAMES: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    digit_chat_records("eval")?
        .into_iter()
        .map(|record| {
            let reply = record["messages"][1]["content"]
                .as_str()
                .unwrap_or_default();
            let name = reply
                .strip_prefix("The digit ")
                .and_then(|rest| rest.strip_suffix('.'))
                .context("a digit reply")?;
            let answer = NAMES
                .iter()
                .position(|n| *n == name)
                .with_context(|| format!("{name}: not a digit name"))?;
            Ok(serde_json::json!({
                "prompt": "<image>\nWhich digit is this?",
                "choices": NAMES.map(|n| format!("The digit {n}.")),
                "answer": answer,
                "images": record["images"],
            }))
        })
        .collect()
}

/// Conversations that show an image (SFT of a vision-language model), one per captioned
/// handwritten digit of `datasets/images/digits/captions-<split>.jsonl`: the user asks which
/// digit the image shows, the assistant names it as the caption does.
fn digit_chat_records(split: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let path = root().join(format!("datasets/images/digits/captions-{split}.jsonl"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line)?;
            let caption = record["caption"].as_str().context("a caption")?;
            let digit = caption
                .strip_prefix("A handwritten digit ")
                .and_then(|rest| rest.strip_suffix('.'))
                .with_context(|| format!("{}: unexpected caption {caption:?}", path.display()))?;
            Ok(serde_json::json!({
                "messages": [
                    {"role": "user", "content": "<image>\nWhich digit is this?"},
                    {"role": "assistant", "content": format!("The digit {digit}.")},
                ],
                "images": [record["image"]],
            }))
        })
        .collect()
}

/// The senses of the GCIDE slice `source` (repo-relative), in file order; lines without a
/// headword are skipped.
fn gcide_senses(source: &str) -> anyhow::Result<Vec<Sense>> {
    let path = root().join(source);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(headword, _)| !headword.is_empty())
        .map(|(headword, definition)| Sense {
            headword: headword.into(),
            definition: definition.into(),
        })
        .collect())
}

/// Writes one JSON record a line to `relative` (from the repository root).
fn write_jsonl(relative: &str, records: Vec<serde_json::Value>) -> anyhow::Result<()> {
    let path = root().join(relative);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut lines = String::new();
    for record in &records {
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    std::fs::write(&path, &lines).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{relative}: {} records, {} bytes",
        records.len(),
        lines.len()
    );
    Ok(())
}

/// SFT conversations: the user asks for a headword's definition, the assistant answers with
/// the dictionary's text.
fn sft_records(senses: &[&Sense]) -> Vec<serde_json::Value> {
    senses
        .iter()
        .map(|sense| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Define {}.", sense.headword)},
                {"role": "assistant", "content": sense.definition},
            ]})
        })
        .collect()
}

/// Preference pairs (DPO, MPO): the prompt asks for a headword's definition, `chosen` is its
/// definition and `rejected` the definition of another headword of the same slice. The
/// rejected sense is `k` lines further on (wrapping), `k` in `1..=n` from a hash of the
/// headword, moving on past senses of the same headword or with the same text.
fn preference_records(senses: &[&Sense]) -> Vec<serde_json::Value> {
    let n = senses.len();
    senses
        .iter()
        .enumerate()
        .filter_map(|(i, sense)| {
            let k = 1 + (fnv1a(sense.headword.as_bytes()) % n as u64) as usize;
            let rejected = (0..n)
                .map(|step| senses[(i + k + step) % n])
                .find(|other| {
                    !other.headword.eq_ignore_ascii_case(&sense.headword)
                        && other.definition != sense.definition
                })?;
            Some(serde_json::json!({
                "prompt": format!("Define {}.", sense.headword),
                "chosen": sense.definition,
                "rejected": rejected.definition,
            }))
        })
        .collect()
}

/// GRPO prompts with reference answers: how many letters a headword has. Only single words
/// of ASCII letters, lowercased and kept once each, in file order; the answer is a number
/// (rewarded by numeric match).
fn letter_count_records(senses: &[Sense]) -> Vec<serde_json::Value> {
    let mut seen = std::collections::HashSet::new();
    senses
        .iter()
        .map(|sense| sense.headword.to_ascii_lowercase())
        .filter(|word| word.bytes().all(|b| b.is_ascii_alphabetic()))
        .filter(|word| seen.insert(word.clone()))
        .map(|word| {
            serde_json::json!({
                "prompt": format!("How many letters are in the word \"{word}\"?"),
                "answer": word.len().to_string(),
            })
        })
        .collect()
}

/// 64-bit FNV-1a: a small fixed hash, the same on every platform and Rust version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
