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

use crate::andes_runner::{Andes, latest_checkpoint, stdout_of};
use crate::{flag, fresh_bench, root};

const HELD_OUT: &str = "datasets/images/digits/chat-eval.jsonl";
const IMAGE_CALIBRATION: &str = "datasets/images/digits/chat-train.jsonl";
const TEXT_CALIBRATION: &str = "datasets/gcide/gcide-sample.txt";
/// Budgets of the planned packages (dimensity9500, GPTQ, Hessian sensitivity).
const BUDGETS: [&str; 3] = ["3", "2", "1.5"];

pub fn bench_vlm_quant(rest: &[&str]) -> anyhow::Result<()> {
    let steps = flag(rest, "--steps", "400");
    let (out, andes) = fresh_bench("vlm-quant")?;
    let sft = out.join("sft-vision");
    andes.train(
        &root().join("configs/recipes/tiny/sft-vision.toml"),
        &sft,
        &[&format!("train.steps={steps}")],
    )?;
    let model = latest_checkpoint(&sft)?;
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
            let mut command = andes.command();
            command.arg("quantize").arg("--model").arg(&model).args([
                "--target",
                "dimensity9500",
                "--bpw",
                budget,
                "--calib",
                TEXT_CALIBRATION,
                "--seq-len",
                "64",
                "--sensitivity",
                "hessian",
                "--init",
                "gptq",
                "--json",
            ]);
            command
                .arg("--cache")
                .arg(out.join("cache"))
                .arg("--out")
                .arg(&package);
            if images {
                command.args(["--calib-images", IMAGE_CALIBRATION]);
            }
            let summary: serde_json::Value = serde_json::from_slice(&stdout_of(&mut command)?)?;
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
