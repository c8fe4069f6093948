//! `andes eval --task`: accuracy on a task file, on a float checkpoint, a package and a
//! bundle's adapter, and on image questions with an AndesVL model.

mod common;

use common::{andes, fixture, json_stdout, path, reference, repo, two_adapter_bundle};
use std::path::Path;

fn task(model: &Path, adapter: Option<&str>, task: &Path) -> serde_json::Value {
    let mut args = vec![
        "eval",
        "--model",
        path(model),
        "--task",
        path(task),
        "--max-new-tokens",
        "8",
        "--json",
    ];
    args.extend(adapter.map(|a| ["--adapter", a]).into_iter().flatten());
    json_stdout(andes(&args))
}

fn log_likelihoods(report: &serde_json::Value) -> Vec<f64> {
    report["answers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["log_likelihoods"].as_array())
        .flatten()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The float checkpoint scores as the transformers reference does; the package scores its
/// own (dequantized) weights; a bundle's adapter by name scores exactly as the package plus
/// the run's adapter directory.
#[test]
fn a_task_runs_on_a_checkpoint_a_package_and_a_bundles_adapter() {
    let gcide = repo("fixtures/tasks/gcide-task.jsonl");
    let expected = reference("tasks");
    let float = task(&fixture("qwen3-tiny-untied-mha-f32"), None, &gcide);
    let rights = expected["answers"].as_array().unwrap();
    let right = rights.iter().filter(|a| a["right"] == true).count();
    assert_eq!(float["questions"], 12);
    assert_eq!(
        float["accuracy"]["mean"].as_f64().unwrap(),
        right as f64 / rights.len() as f64
    );
    assert!(float["accuracy"]["stderr"].as_f64().unwrap() > 0.0);

    let dir = tempfile::tempdir().unwrap();
    let (package, a, bundle, _) = two_adapter_bundle(dir.path());
    let quantized = task(&package, None, &gcide);
    assert_ne!(log_likelihoods(&quantized), log_likelihoods(&float));
    assert!(quantized["bpw_linears"].as_f64().unwrap() < 2.0);
    let run_adapter = a.join("checkpoints/step-000004");
    let adapted = task(&package, Some(path(&run_adapter)), &gcide);
    assert_ne!(log_likelihoods(&adapted), log_likelihoods(&quantized));
    assert_eq!(task(&bundle, Some("define"), &gcide), adapted);
}

/// Image questions on the tiny AndesVL: every option scored in one padded batch gives each
/// option the log-likelihood it has in any order (padding and the images' placement in each
/// row change nothing), and a missing image is refused naming the file, line and field.
#[test]
fn image_questions_score_every_option_alike_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let digits = repo("datasets/images/digits/png");
    for image in ["0000.png", "0001.png"] {
        std::fs::copy(digits.join(image), dir.path().join(image)).unwrap();
    }
    let choices = ["zero", "one", "seven", "a handwritten digit three"];
    let line = |order: &[usize], image: &str| {
        serde_json::json!({
            "prompt": "<image>\nWhich digit is this?",
            "choices": order.iter().map(|&i| choices[i]).collect::<Vec<_>>(),
            "answer": order.iter().position(|&i| i == 0).unwrap(),
            "images": [image],
        })
        .to_string()
    };
    let forward = [0, 1, 2, 3];
    let backward = [3, 2, 1, 0];
    let file = dir.path().join("digits.jsonl");
    std::fs::write(
        &file,
        [
            line(&forward, "0000.png"),
            line(&backward, "0000.png"),
            line(&forward, "0001.png"),
        ]
        .join("\n"),
    )
    .unwrap();
    let model = fixture("andesvl-tiny");
    let report = task(&model, None, &file);
    let answers = report["answers"].as_array().unwrap();
    let lls = |i: usize| -> Vec<f64> {
        answers[i]["log_likelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (first, reversed, other_image) = (lls(0), lls(1), lls(2));
    for choice in forward {
        let (a, b) = (first[choice], reversed[3 - choice]);
        assert!(
            (a - b).abs() < 1e-4 * a.abs(),
            "option {choice}: {a} and {b}"
        );
    }
    assert_ne!(first, other_image, "the image is part of the context");
    assert_eq!(answers[0]["right"], answers[1]["right"]);

    std::fs::write(&file, line(&forward, "missing.png")).unwrap();
    let out = andes(&["eval", "--model", path(&model), "--task", path(&file)]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("digits.jsonl:1: images: image") && error.contains("missing.png not found"),
        "{error}"
    );
}
