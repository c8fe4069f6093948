//! `cargo xtask bench okv`: what KV-cache eviction costs and saves on held-out text. The tiny
//! Qwen3 pretrained here (the regression recipe's 120 steps) reads the first 512 tokens of
//! the held-out GCIDE text one token at a time on the runtime (`andes eval --runtime`), with
//! no eviction, with the OKV-style rule and with a recent window only, at several budgets;
//! the table gives perplexity, its change and the KV memory saved.

use std::fmt::Write as _;

use super::{fresh_bench, train_tiny};
use crate::andes_runner::stdout_of;
use crate::data::GCIDE_EVAL;

/// Budgets, in entries per layer.
const BUDGETS: [&str; 4] = ["256", "128", "64", "32"];

/// Trains, measures and writes `target/bench/okv/table.md`.
pub(crate) fn okv() -> anyhow::Result<()> {
    let (out, andes) = fresh_bench("okv")?;
    let model = train_tiny(&andes, &out, "pretrain", 120)?;
    let measure = |extra: &[&str]| -> anyhow::Result<serde_json::Value> {
        let stdout = stdout_of(
            andes
                .command()
                .args([
                    "eval",
                    "--runtime",
                    "--max-tokens",
                    "512",
                    "--json",
                    "--text",
                    GCIDE_EVAL,
                ])
                .arg("--model")
                .arg(&model)
                .args(extra),
        )?;
        Ok(serde_json::from_slice(&stdout)?)
    };
    let full = measure(&[])?;
    let base = full["perplexity"].as_f64().unwrap_or(f64::NAN);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "The tiny Qwen3 (pretrained 120 steps), first {} tokens of the held-out GCIDE text read \
         one at a time; perplexity without eviction {base:.3}.\n",
        full["tokens"]
    );
    let _ = writeln!(
        table,
        "| budget (entries/layer) | rule | perplexity | change | KV memory saved |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    let mut rows = vec![full.clone()];
    for budget in BUDGETS {
        for policy in ["attention", "recent"] {
            let row = measure(&["--kv-budget", budget, "--kv-policy", policy])?;
            let ppl = row["perplexity"].as_f64().unwrap_or(f64::NAN);
            let saved = 1.0
                - row["kv_bytes_peak"].as_f64().unwrap_or(0.0)
                    / full["kv_bytes_peak"].as_f64().unwrap_or(1.0);
            let rule = if policy == "attention" {
                "OKV-style (attention, sinks, recent quarter)"
            } else {
                "recent window only"
            };
            let _ = writeln!(
                table,
                "| {budget} | {rule} | {ppl:.3} | {:+.2}% | {:.1}% |",
                100.0 * (ppl / base - 1.0),
                100.0 * saved
            );
            rows.push(row);
        }
    }
    print!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    let raw: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    std::fs::write(out.join("rows.jsonl"), raw.join("\n") + "\n")?;
    Ok(())
}
