//! `andes eval --task`: accuracy on a task file's questions, as lm-evaluation-harness
//! measures it.

use std::path::Path;

use andes_data::TextTokenizer;
use andes_data::dataset::load_task;
use andes_model::task::{Score, TaskOptions, evaluate_task};
use anyhow::Context;
use clap::Args;

use super::EvalArgs;
use crate::model_args::LoadedModel;

/// How `--task` puts its questions.
#[derive(Args, Debug)]
pub struct TaskArgs {
    /// Put each question as a user turn of the model's chat template (its default generation
    /// prompt, as lm-evaluation-harness's --apply_chat_template), options and completions as
    /// the reply (a thinking block dropped); otherwise the prompt as it stands, options after
    /// a space, completions cut at their first newline.
    #[arg(long, requires = "task")]
    apply_chat_template: bool,
    /// Longest completion of a generation question, in tokens.
    #[arg(long, default_value_t = 32, requires = "task")]
    max_new_tokens: usize,
}

/// `--task`: the model's accuracy on the task file's questions.
pub(super) fn run_task(
    args: &EvalArgs,
    path: &Path,
    loaded: &LoadedModel,
    tokenizer: &TextTokenizer,
) -> anyhow::Result<()> {
    let records = load_task(path)?;
    let options = TaskOptions {
        chat: args.task_options.apply_chat_template,
        max_new_tokens: args.task_options.max_new_tokens,
    };
    let report = evaluate_task(
        (&loaded.model, &loaded.config, &loaded.files_dir),
        tokenizer,
        &records,
        options,
        &loaded.device,
    )
    .with_context(|| format!("scoring {}", path.display()))?;
    if args.json {
        let out = serde_json::json!({
            "questions": records.len(),
            "accuracy": report.accuracy,
            "accuracy_norm": report.accuracy_norm,
            "bpw_linears": loaded.package_bpw,
            "answers": report.answers,
        });
        println!("{out}");
    } else {
        let show = |score: &Score| match score.stderr {
            Some(stderr) => format!("{:.4} ± {stderr:.4}", score.mean),
            None => format!("{:.4}", score.mean),
        };
        let norm = report
            .accuracy_norm
            .map(|score| format!(", per-character {}", show(&score)))
            .unwrap_or_default();
        println!(
            "{}: {} questions, accuracy {}{norm}",
            path.display(),
            records.len(),
            show(&report.accuracy)
        );
    }
    Ok(())
}
