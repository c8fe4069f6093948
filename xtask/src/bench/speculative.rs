//! `cargo xtask bench speculative`: acceptance rate and speed-up of speculative decoding on a
//! trained model. The tiny Qwen3 pretrained here (the regression recipe's 120 steps on GCIDE)
//! is packaged at int4-g32 (the target) and at int2-g64 (a draft of the same model, 1.8× fewer
//! bytes); both continue held-out GCIDE prompts greedily on the CPU runtime, without drafting,
//! with prompt lookup and with the int2 draft, each proposing `SPECULATE` tokens a step. Every
//! drafted run must give the undrafted run's tokens (greedy speculative decoding is exact);
//! the table gives the share of drafted tokens accepted and decode tokens/s.

use std::fmt::Write as _;
use std::path::Path;

use super::{fresh_bench, train_tiny, uniform_plan};
use crate::andes_runner::{Andes, stdout_of};
use crate::data::GCIDE_EVAL;
use crate::workspace::root;

/// Held-out lines continued, and the words of each that make its prompt.
const PROMPTS: usize = 8;
const PROMPT_WORDS: usize = 12;
/// Tokens generated a prompt, and tokens proposed a step.
const NEW_TOKENS: &str = "48";
const SPECULATE: &str = "4";

/// Trains, packages, measures and writes `target/bench/speculative/table.md`.
pub(crate) fn speculative() -> anyhow::Result<()> {
    let (out, andes) = fresh_bench("speculative")?;
    let model = train_tiny(&andes, &out, "pretrain", 120)?;
    let package = |format: &str| -> anyhow::Result<std::path::PathBuf> {
        let plan = out.join(format!("plan-{format}.json"));
        uniform_plan(&model, format, &plan)?;
        let dir = out.join(format!("package-{format}"));
        stdout_of(
            andes
                .command()
                .args(["quantize", "--init", "rtn", "--target", "generic-cpu"])
                .arg("--model")
                .arg(&model)
                .arg("--plan")
                .arg(&plan)
                .arg("--out")
                .arg(&dir),
        )?;
        Ok(dir)
    };
    let (target, draft) = (package("int4-g32-asym")?, package("int2-g64-asym")?);
    let text = std::fs::read_to_string(root().join(GCIDE_EVAL))?;
    let prompts: Vec<String> = text
        .lines()
        .filter(|line| line.split_whitespace().count() > PROMPT_WORDS)
        .take(PROMPTS)
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().take(PROMPT_WORDS).collect();
            words.join(" ")
        })
        .collect();
    let draft_args = ["--draft", draft.to_str().unwrap(), "--speculate", SPECULATE];
    let drafters: [(&str, &[&str]); 3] = [
        ("none", &[]),
        ("prompt lookup", &["--speculate", SPECULATE]),
        ("int2-g64 package of the same model", &draft_args),
    ];
    let mut rows = Vec::new();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "The tiny Qwen3 (pretrained 120 steps) as an int4-g32 package, {} held-out GCIDE \
         prompts of {PROMPT_WORDS} words, {NEW_TOKENS} greedy tokens each, {SPECULATE} drafted \
         a step, 1 thread.\n",
        prompts.len()
    );
    let _ = writeln!(
        table,
        "| drafter | drafted | accepted | acceptance | decode tok/s (median over prompts) | speed-up |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|");
    let mut undrafted_speed = f64::NAN;
    let mut undrafted_tokens: Vec<serde_json::Value> = Vec::new();
    for (label, extra) in drafters {
        let runs: Vec<serde_json::Value> = prompts
            .iter()
            .map(|prompt| generate(&andes, &target, prompt, extra))
            .collect::<anyhow::Result<_>>()?;
        let tokens: Vec<serde_json::Value> = runs.iter().map(|r| r["token_ids"].clone()).collect();
        if undrafted_tokens.is_empty() {
            undrafted_tokens = tokens;
        } else {
            anyhow::ensure!(
                tokens == undrafted_tokens,
                "drafting by {label} changed the greedy tokens"
            );
        }
        let count = |key: &str| {
            runs.iter()
                .map(|r| r[key].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let (drafted, accepted) = (count("drafted"), count("accepted"));
        let mut speeds: Vec<f64> = runs
            .iter()
            .map(|r| r["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN))
            .collect();
        speeds.sort_by(f64::total_cmp);
        let speed = speeds[speeds.len() / 2];
        if extra.is_empty() {
            undrafted_speed = speed;
        }
        let acceptance = match drafted {
            0 => "—".to_string(),
            d => format!("{:.1}%", 100.0 * accepted as f64 / d as f64),
        };
        let _ = writeln!(
            table,
            "| {label} | {drafted} | {accepted} | {acceptance} | {speed:.1} | {:.2}× |",
            speed / undrafted_speed
        );
        rows.extend(runs.into_iter().map(|mut r| {
            r["drafter"] = label.into();
            r
        }));
    }
    print!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    let raw: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    std::fs::write(out.join("rows.jsonl"), raw.join("\n") + "\n")?;
    Ok(())
}

/// `andes generate`'s JSON report of `model` continuing `prompt` greedily on one thread.
fn generate(
    andes: &Andes,
    model: &Path,
    prompt: &str,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let stdout = stdout_of(
        andes
            .command()
            .args(["generate", "--greedy", "--json", "--threads", "1"])
            .args(["--max-new-tokens", NEW_TOKENS, "--prompt", prompt])
            .arg("--model")
            .arg(model)
            .args(extra),
    )?;
    Ok(serde_json::from_slice(&stdout)?)
}
