//! `cargo xtask bench quantize`: held-out perplexity against bits per weight on the tiny Qwen3
//! (pretrained here, as in `bench qalft`), for uniform RTN, uniform GPTQ, and the planned mixed
//! allocation of `andes quantize --target dimensity9500 --bpw B` (GPTQ applying the plan),
//! every number from a real run of the `andes` binary on the CPU. Writes a Markdown table and
//! an SVG plot under `target/bench/quantize/`.

use std::fmt::Write as _;

use anyhow::Context;

use super::{fresh_bench, train_tiny};
use crate::data::{GCIDE_EVAL, GCIDE_TRAIN};

/// Uniform formats from ~4 down to ~1.3 bits per weight (on the tiny model's short rows).
const UNIFORM: [&str; 6] = [
    "int4-channel-sym",
    "int3-g64-asym",
    "int2-g64-asym",
    "int2-g128-asym",
    "ternary-channel",
    "int1-g64-sym",
];
/// Budgets of the planned rows.
const BUDGETS: [&str; 6] = ["4", "3", "2.5", "2", "1.8", "1.6"];

/// One measured model of the table and the plot.
struct Point {
    method: &'static str,
    label: String,
    bpw: f64,
    ppl: f64,
}

/// Pretrains the tiny Qwen3 for `pretrain_steps` steps, measures every row (see the module's
/// documentation), and prints and writes the table and the plot.
pub(crate) fn quantize(pretrain_steps: u32) -> anyhow::Result<()> {
    let (out, andes) = fresh_bench("quantize")?;
    let base = train_tiny(&andes, &out, "pretrain", pretrain_steps)?;
    let text = ["--window", "64", "--documents", GCIDE_EVAL];
    let (float_ppl, _) = andes.eval(&base, &text)?;
    let mut points = Vec::new();
    for (method, init) in [("uniform RTN", "rtn"), ("uniform GPTQ", "gptq")] {
        for format in UNIFORM {
            let args = [
                &text[..],
                &["--quant", format, "--init", init, "--calib", GCIDE_TRAIN],
            ];
            let (ppl, bpw) = andes.eval(&base, &args.concat())?;
            points.push(Point {
                method,
                label: format.into(),
                bpw: bpw.context("eval reports bpw")?,
                ppl,
            });
        }
    }
    for budget in BUDGETS {
        let package = out.join(format!("package-{budget}"));
        let quantized = andes.quantize(
            &base,
            "dimensity9500",
            budget,
            &out.join("cache"),
            &package,
            &["--calib", GCIDE_TRAIN, "--json"],
        );
        // A budget the target cannot meet is a row left out, not a failed benchmark.
        if let Err(error) = quantized {
            eprintln!("budget {budget}: {error:#}");
            continue;
        }
        let (ppl, bpw) = andes.eval(&package, &text)?;
        points.push(Point {
            method: "planned (dimensity9500)",
            label: format!("--bpw {budget}"),
            bpw: bpw.context("eval reports a package's bpw")?,
            ppl,
        });
    }
    let mut table = format!(
        "Tiny Qwen3 (hidden 64, 2 layers) pretrained {pretrain_steps} steps on GCIDE prose; \
         held-out prose perplexity (window 64); float: {float_ppl:.3}. bpw over the quantized \
         linears, scales and zeros counted.\n\n| method | format / budget | bpw | perplexity | \
         vs float |\n|---|---|---|---|---|\n"
    );
    for p in &points {
        writeln!(
            table,
            "| {} | {} | {:.3} | {:.3} | {:.3}× |",
            p.method,
            p.label,
            p.bpw,
            p.ppl,
            p.ppl / float_ppl
        )?;
    }
    std::fs::write(out.join("table.md"), &table)?;
    std::fs::write(out.join("ppl_vs_bpw.svg"), plot(&points, float_ppl))?;
    println!("{table}");
    println!("plot: {}", out.join("ppl_vs_bpw.svg").display());
    Ok(())
}

/// Perplexity (log scale) against bpw, one polyline per method.
fn plot(points: &[Point], float_ppl: f64) -> String {
    let (w, h, m) = (720.0, 440.0, 60.0);
    let x = |bpw: f64| m + (bpw - 1.0) / (4.5 - 1.0) * (w - 2.0 * m);
    let max = points.iter().map(|p| p.ppl).fold(float_ppl, f64::max);
    let y = |ppl: f64| {
        h - m
            - (ppl.ln() - float_ppl.ln() * 0.98) / (max.ln() * 1.02 - float_ppl.ln() * 0.98)
                * (h - 2.0 * m)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\"><rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/><text x=\"{m}\" y=\"24\" font-size=\"14\">held-out perplexity (log) vs \
         bits per weight, tiny Qwen3</text><line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" \
         stroke=\"black\"/><line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>",
        h - m,
        w - m,
        h - m,
        h - m
    );
    for b in [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5] {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{b}</text>",
            x(b),
            h - m + 16.0
        );
    }
    svg += &format!(
        "<line x1=\"{m}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"gray\" \
         stroke-dasharray=\"4\"/><text x=\"{1}\" y=\"{0}\" text-anchor=\"end\" dy=\"-4\">float \
         {float_ppl:.2}</text>",
        y(float_ppl),
        w - m
    );
    let colours = ["#d62728", "#1f77b4", "#2ca02c"];
    let methods = ["uniform RTN", "uniform GPTQ", "planned (dimensity9500)"];
    for (i, method) in methods.iter().enumerate() {
        let mut series: Vec<&Point> = points.iter().filter(|p| p.method == *method).collect();
        series.sort_by(|a, b| a.bpw.total_cmp(&b.bpw));
        let path: Vec<String> = series
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.bpw), y(p.ppl)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            colours[i],
            path.join(" ")
        );
        for p in &series {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                x(p.bpw),
                y(p.ppl),
                colours[i]
            );
        }
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{}\">{method}</text>",
            w - m - 150.0,
            m + 16.0 * i as f64,
            colours[i]
        );
    }
    svg + "</svg>\n"
}
