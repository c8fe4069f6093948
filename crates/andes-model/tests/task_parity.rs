//! The evaluation harness against lm-evaluation-harness's rules run on transformers
//! (`fixtures/tasks`, made by scripts/fixtures/make_task_fixture.py): every option's
//! log-likelihood, every greedy completion and every right/wrong call of a GCIDE task on the
//! tiny Qwen3 checkpoint.

use std::path::Path;

use andes_data::TextTokenizer;
use andes_data::dataset::load_task;
use andes_model::Model;
use andes_model::task::{Answered, Score, TaskOptions, evaluate_task};
use burn::tensor::{DType, Device};

#[test]
fn task_scores_match_the_transformers_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tasks/reference.json")).unwrap())
            .unwrap();
    let dir = root.join(reference["model"].as_str().unwrap());
    let device = Device::flex();
    let (config, model) = Model::load(&dir, &device, DType::F32).unwrap();
    let tokenizer = TextTokenizer::from_model_dir(&dir).unwrap();
    let records = load_task(&root.join("tasks/gcide-task.jsonl")).unwrap();
    let options = TaskOptions {
        chat: false,
        max_new_tokens: reference["max_new_tokens"].as_u64().unwrap() as usize,
    };
    let report = evaluate_task(
        (&model, &config, &dir),
        &tokenizer,
        &records,
        options,
        &device,
    )
    .unwrap();
    let expected = reference["answers"].as_array().unwrap();
    assert_eq!(report.answers.len(), expected.len());
    let mut choices = 0;
    for (got, want) in report.answers.iter().zip(expected) {
        match got {
            Answered::Choice {
                log_likelihoods,
                right,
                right_norm,
            } => {
                choices += 1;
                for (ll, reference) in log_likelihoods
                    .iter()
                    .zip(want["log_likelihoods"].as_array().unwrap())
                {
                    let reference = reference.as_f64().unwrap();
                    assert!(
                        (ll - reference).abs() <= 1e-5 * reference.abs(),
                        "log-likelihood {ll} against transformers' {reference}"
                    );
                }
                assert_eq!(*right, want["right"].as_bool().unwrap());
                assert_eq!(*right_norm, want["right_norm"].as_bool().unwrap());
            }
            Answered::Generation { completion, right } => {
                assert_eq!(completion, want["completion"].as_str().unwrap());
                assert_eq!(*right, want["right"].as_bool().unwrap());
            }
        }
    }
    assert!(
        choices > 0 && choices < expected.len(),
        "both kinds of question are checked"
    );
    let rights = expected.iter().map(|a| a["right"].as_bool().unwrap());
    assert_eq!(report.accuracy, Score::of(rights));
}
