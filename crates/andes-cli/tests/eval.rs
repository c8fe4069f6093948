//! End-to-end runs of the `andes` binary on the bundled tiny checkpoints.
//!
//! `andes eval`: perplexity against the transformers references in
//! `fixtures/*/reference.json`, and `--documents` scored as `andes train` reads a text file.

mod common;

use common::{FIXTURES, andes, fixture, json_stdout, path, reference};
use std::path::Path;

#[test]
fn eval_perplexity_matches_transformers_within_1e_4() {
    for name in FIXTURES {
        let reference = reference(name);
        let dir = fixture(name);
        let out = json_stdout(andes(&[
            "eval",
            "--model",
            path(&dir),
            "--text",
            path(&dir.join("eval.txt")),
            "--window",
            "128",
            "--stride",
            "64",
            "--json",
        ]));
        assert_eq!(out["tokens"], reference["eval_num_tokens"], "{name}");
        assert_eq!(out["scored_tokens"], reference["eval_tokens"], "{name}");
        let ours = out["perplexity"].as_f64().unwrap();
        let theirs = reference["eval_perplexity"].as_f64().unwrap();
        assert!(
            ((ours - theirs) / theirs).abs() <= 1e-4,
            "{name}: perplexity {ours} vs transformers {theirs}"
        );
    }
}

/// `--documents` scores the stream `andes train` packs from a text file, each line a document
/// ended by <|endoftext|> (blank lines skipped): the same as `--text` of the lines joined by
/// that token, and not the file as it stands, whose newlines are tokens of their own.
#[test]
fn eval_documents_scores_the_lines_as_training_documents() {
    let model = fixture("qwen3-tiny-untied-mha-f32");
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        "Abandon: To give up wholly.",
        "Abase: To lower or depress.",
        "Abate: To lessen.",
    ];
    let documents = dir.path().join("documents.txt");
    std::fs::write(
        &documents,
        format!("{}\n\n{}\n{}\n", lines[0], lines[1], lines[2]),
    )
    .unwrap();
    let joined = dir.path().join("joined.txt");
    std::fs::write(&joined, lines.map(|l| format!("{l}<|endoftext|>")).concat()).unwrap();
    let eval = |flag: &str, file: &Path| {
        json_stdout(andes(&[
            "eval",
            "--model",
            path(&model),
            flag,
            path(file),
            "--window",
            "16",
            "--json",
        ]))
    };
    let (by_documents, by_joined) = (eval("--documents", &documents), eval("--text", &joined));
    assert_eq!(by_documents["tokens"], by_joined["tokens"]);
    assert_eq!(by_documents["mean_nll"], by_joined["mean_nll"]);
    let as_it_stands = eval("--text", &documents);
    assert_ne!(as_it_stands["mean_nll"], by_documents["mean_nll"]);
}
