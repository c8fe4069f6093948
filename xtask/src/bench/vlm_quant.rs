//! `cargo xtask bench vlm-quant`: a quantized vision-language model's task accuracy against
//! bits per weight, with the language model calibrated on text only or on text plus
//! image-text records (`andes quantize --calib-images`). The tiny AndesVL is first trained by
//! the `sft-vision` recipe to name handwritten digits; each package is then asked, greedily,
//! which digit each of the 100 held-out images shows. Every number comes from a real run of
//! the `andes` binary on the CPU; the table is printed and written under
//! `target/bench/vlm-quant/`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::{fresh_bench, train_tiny};
use crate::andes_runner::{Andes, stdout_of};
use crate::data::GCIDE_TRAIN;
use crate::workspace::root;

/// The 100 held-out digit conversations every model is asked.
const HELD_OUT: &str = "datasets/images/digits/chat-eval.jsonl";
/// The digit conversations the image-calibrated packages calibrate on (training records).
const IMAGE_CALIBRATION: &str = "datasets/images/digits/chat-train.jsonl";
/// Budgets of the planned packages (dimensity9500, GPTQ, Hessian sensitivity).
const BUDGETS: [&str; 3] = ["3", "2", "1.5"];

/// Trains the tiny AndesVL `steps` steps on the digits, quantizes it at every budget with
/// either calibration, and prints and writes the accuracy table.
pub(crate) fn vlm_quant(steps: u32) -> anyhow::Result<()> {
    let (out, andes) = fresh_bench("vlm-quant")?;
    let model = train_tiny(&andes, &out, "sft-vision", steps)?;
    let mut table = String::from(
        "| model | calibration | bpw (linears) | held-out digits named |\n|---|---|---|---|\n",
    );
    let (right, total) = digit_accuracy(&andes, &model)?;
    writeln!(table, "| float | — | 32 | {right} / {total} |")?;
    for budget in BUDGETS {
        for images in [false, true] {
            let package = out.join(format!(
                "package-{budget}-{}",
                if images { "images" } else { "text" }
            ));
            let mut args = vec![
                "--calib",
                GCIDE_TRAIN,
                "--seq-len",
                "64",
                "--sensitivity",
                "hessian",
                "--init",
                "gptq",
                "--json",
            ];
            if images {
                args.extend(["--calib-images", IMAGE_CALIBRATION]);
            }
            let summary = andes.quantize(
                &model,
                "dimensity9500",
                budget,
                &out.join("cache"),
                &package,
                &args,
            )?;
            let summary: serde_json::Value = serde_json::from_slice(&summary)?;
            let bpw = summary["bpw"].as_f64().context("bpw in the summary")?;
            let (right, total) = digit_accuracy(&andes, &package)?;
            let calibration = if images {
                "text + 32 image conversations"
            } else {
                "text"
            };
            writeln!(
                table,
                "| package, budget {budget} | {calibration} | {bpw:.3} | {right} / {total} |"
            )?;
        }
    }
    print!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    Ok(())
}

/// How many held-out images `model` names the digit of (greedy, the answer's digit word
/// anywhere in the reply), of how many.
fn digit_accuracy(andes: &Andes, model: &Path) -> anyhow::Result<(usize, usize)> {
    let records = std::fs::read_to_string(root().join(HELD_OUT))?;
    let folder = root()
        .join(HELD_OUT)
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let (mut right, mut total) = (0, 0);
    for line in records.lines().filter(|l| !l.trim().is_empty()) {
        let record: serde_json::Value = serde_json::from_str(line)?;
        let image = folder.join(record["images"][0].as_str().context("an image")?);
        let messages = record["messages"].as_array().context("messages")?;
        let question = messages[0]["content"].as_str().context("a question")?;
        let answer = messages[1]["content"].as_str().context("an answer")?;
        let digit = answer
            .trim_end_matches('.')
            .rsplit(' ')
            .next()
            .unwrap_or_default();
        let stdout = stdout_of(
            andes
                .command()
                .args([
                    "generate",
                    "--chat",
                    "--greedy",
                    "--max-new-tokens",
                    "10",
                    "--json",
                ])
                .arg("--model")
                .arg(model)
                .arg("--image")
                .arg(&image)
                .args(["--prompt", question]),
        )?;
        let reply: serde_json::Value = serde_json::from_slice(&stdout)?;
        total += 1;
        if reply["text"].as_str().unwrap_or_default().contains(digit) {
            right += 1;
        }
    }
    Ok((right, total))
}
