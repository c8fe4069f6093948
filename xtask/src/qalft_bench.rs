//! `cargo xtask bench qalft`: the QALFT quality table on the tiny Qwen3, every number from a
//! real run of the `andes` binary on the CPU.
//!
//! 1. Pretrain the tiny model on GCIDE prose (the base).
//! 2. float: held-out prose perplexity of the base; task perplexity (assistant tokens of
//!    held-out definition conversations) of the base + a LoRA adapter trained on the float base.
//! 3. PTQ rows (RTN, GPTQ calibrated on the training prose): the base quantized, prose
//!    perplexity without adapter, task perplexity with the float-trained adapter on top (what
//!    shipping a float adapter on a PTQ base gives).
//! 4. QALFT rows: the adapter (and the grid's scales) trained against the quantized base; prose
//!    perplexity of the trained quantized base, task perplexity with its adapter.
//!
//! Prints a Markdown table and writes it, with the raw numbers, under `target/bench/qalft/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{flag, root, run, target_dir};

const PROSE_TRAIN: &str = "datasets/gcide/gcide-sample.txt";
const PROSE_EVAL: &str = "datasets/gcide/gcide-eval.txt";
const TASK_EVAL: &str = "datasets/sft/gcide-define-eval.jsonl";
const QALFT_RECIPE: &str = "configs/recipes/tiny/qalft.toml";
/// The line of the qalft recipe that each QALFT row replaces with its format or plan.
const QALFT_FORMAT_LINE: &str = "format = \"int2-g64-asym\"";
/// The formats of the PTQ and QALFT rows.
const FORMATS: [&str; 4] = [
    "int4-g128-asym",
    "int3-g128-asym",
    "int2-g64-asym",
    "int2-g128-asym",
];

/// One row of the table.
struct Row {
    method: String,
    bpw: Option<f64>,
    prose_ppl: f64,
    task_ppl: f64,
}

pub fn bench_qalft(rest: &[&str]) -> anyhow::Result<()> {
    let pretrain_steps = flag(rest, "--pretrain-steps", "400");
    let adapter_steps = flag(rest, "--adapter-steps", "150");
    let out = target_dir().join("bench/qalft");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--quiet", "-p", "andes-cli"]))?;
    let andes = target_dir().join("debug/andes");

    let pretrain = out.join("pretrain");
    train(
        &andes,
        &root().join("configs/recipes/tiny/pretrain.toml"),
        &pretrain,
        &[&format!("train.steps={pretrain_steps}")],
    )?;
    let base = latest_checkpoint(&pretrain)?;
    let base_arg = format!("model.checkpoint=\"{}\"", base.display());
    let adapter_steps_arg = format!("train.steps={adapter_steps}");
    let adapter_overrides = [
        base_arg.as_str(),
        adapter_steps_arg.as_str(),
        "train.checkpoint_every=1000",
        "train.eval_every=1000",
    ];

    let mut rows = Vec::new();
    let lora = out.join("lora");
    train(
        &andes,
        &root().join("configs/recipes/tiny/lora.toml"),
        &lora,
        &adapter_overrides,
    )?;
    let float_adapter = latest_checkpoint(&lora)?;
    rows.push(Row {
        method: "float".into(),
        bpw: None,
        prose_ppl: eval(&andes, &base, &["--text", PROSE_EVAL])?.0,
        task_ppl: eval(&andes, &base, &["--chat", TASK_EVAL])?.0,
    });
    rows.push(Row {
        method: "float + LoRA".into(),
        bpw: None,
        prose_ppl: rows[0].prose_ppl,
        task_ppl: eval(&andes, &base, &strs(&adapter_args(&float_adapter)))?.0,
    });

    let mixed_plan = out.join("mixed_plan.json");
    std::fs::write(&mixed_plan, mixed_plan_json())?;
    let mixed = format!("plan:{}", mixed_plan.display());
    for init in ["rtn", "gptq"] {
        for format in FORMATS.iter().copied().chain([mixed.as_str()]) {
            let mut quant = quant_args(format);
            quant.extend(["--init", init, "--calib", PROSE_TRAIN].map(String::from));
            let with = |extra: Vec<String>| [quant.clone(), extra].concat();
            let (prose_ppl, bpw) = eval(
                &andes,
                &base,
                &strs(&with(vec!["--text".into(), PROSE_EVAL.into()])),
            )?;
            let (task_ppl, _) = eval(&andes, &base, &strs(&with(adapter_args(&float_adapter))))?;
            rows.push(Row {
                method: format!("{} {}", init.to_uppercase(), label(format)),
                bpw,
                prose_ppl,
                task_ppl,
            });
        }
    }

    for format in FORMATS.iter().copied().chain([mixed.as_str()]) {
        let name = if format.starts_with("plan:") {
            "mixed"
        } else {
            format
        };
        let run_dir = out.join(format!("qalft-{name}"));
        let recipe_text = std::fs::read_to_string(root().join(QALFT_RECIPE))?;
        let quant_line = match format.strip_prefix("plan:") {
            Some(plan) => format!("plan = \"{plan}\""),
            None => format!("format = \"{format}\""),
        };
        let recipe = out.join(format!(
            "{}.toml",
            run_dir.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&recipe, recipe_text.replace(QALFT_FORMAT_LINE, &quant_line))?;
        train(&andes, &recipe, &run_dir, &adapter_overrides)?;
        let bundle = run_dir.join("bundle");
        run(Command::new(&andes)
            .args(["export", "--dequantized-base", "--adapters"])
            .arg(&run_dir)
            .arg("--out")
            .arg(&bundle)
            .stdout(std::process::Stdio::null()))?;
        let quantized_base = bundle.join("base-dequantized");
        let adapter = bundle.join("adapters/define");
        let (prose_ppl, _) = eval(&andes, &quantized_base, &["--text", PROSE_EVAL])?;
        let (task_ppl, _) = eval(&andes, &quantized_base, &strs(&adapter_args(&adapter)))?;
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json"))?)?;
        rows.push(Row {
            method: format!("QALFT {}", label(format)),
            bpw: manifest["base"]["bpw_linears"].as_f64(),
            prose_ppl,
            task_ppl,
        });
    }

    let table = markdown(&rows, pretrain_steps, adapter_steps);
    println!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    Ok(())
}

/// The mixed plan of the tiny model at ≤ 1.8 bpw over the linears: ternary per output channel
/// everywhere (1.83–1.88 bpw on 64- and 96-wide rows), binary per channel on `k_proj`
/// (1.25 bpw): 1.794 bpw in all.
fn mixed_plan_json() -> String {
    let targets = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    let layers: Vec<serde_json::Value> = (0..2)
        .flat_map(|layer| {
            targets.map(|target| {
                let format = if target == "self_attn.k_proj" {
                    "int1-channel-sym"
                } else {
                    "ternary-channel"
                };
                serde_json::json!({"name": format!("model.layers.{layer}.{target}"), "format": format})
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({"version": 1, "layers": layers}))
        .expect("serializes")
}

fn label(format: &str) -> String {
    if format.starts_with("plan:") {
        "mixed (ternary + binary)".into()
    } else {
        format.to_string()
    }
}

fn quant_args(format: &str) -> Vec<String> {
    match format.strip_prefix("plan:") {
        Some(plan) => vec!["--plan".into(), plan.into()],
        None => vec!["--quant".into(), format.into()],
    }
}

fn adapter_args(adapter: &Path) -> Vec<String> {
    vec![
        "--chat".into(),
        TASK_EVAL.into(),
        "--adapter".into(),
        adapter.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub(crate) fn train(
    andes: &Path,
    recipe: &Path,
    out: &Path,
    overrides: &[&str],
) -> anyhow::Result<()> {
    let mut command = Command::new(andes);
    command
        .current_dir(root())
        .args(["train", "--quiet", "--config"])
        .arg(recipe)
        .arg("--out")
        .arg(out);
    for o in overrides {
        command.args(["--set", o]);
    }
    let output = command.output()?;
    if !output.status.success() {
        bail!(
            "andes train {}: {}",
            recipe.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

pub(crate) fn latest_checkpoint(run_dir: &Path) -> anyhow::Result<PathBuf> {
    let name = std::fs::read_to_string(run_dir.join("checkpoints/latest"))
        .with_context(|| format!("{}: no checkpoint", run_dir.display()))?;
    Ok(run_dir.join("checkpoints").join(name.trim()))
}

/// Perplexity (and bpw of the quantized linears, when quantized) from `andes eval --json`.
pub(crate) fn eval(
    andes: &Path,
    model: &Path,
    args: &[&str],
) -> anyhow::Result<(f64, Option<f64>)> {
    let output = Command::new(andes)
        .current_dir(root())
        .args(["eval", "--window", "64", "--json", "--model"])
        .arg(model)
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "andes eval {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let bpw = json["bpw_linears"].as_f64();
    Ok((json["perplexity"].as_f64().context("no perplexity")?, bpw))
}

fn markdown(rows: &[Row], pretrain_steps: &str, adapter_steps: &str) -> String {
    let float = &rows[1];
    let mut table = format!(
        "Tiny Qwen3 (2 layers, hidden 64, 69,632 weights in 14 linears), pretrained {pretrain_steps} \
         steps on GCIDE prose; adapters rank 8 trained {adapter_steps} steps on GCIDE definitions.\n\
         prose ppl: held-out GCIDE prose, base only; task ppl: assistant tokens of held-out \
         definition conversations, with the adapter. bpw over the quantized linears, scales and \
         zero points counted.\n\n\
         | method | bpw (linears) | prose ppl | task ppl | task ppl / float+LoRA |\n\
         |---|---|---|---|---|\n"
    );
    for row in rows {
        let bpw = row.bpw.map_or("32 (f32)".into(), |b| format!("{b:.3}"));
        table.push_str(&format!(
            "| {} | {bpw} | {:.2} | {:.2} | {:.3} |\n",
            row.method,
            row.prose_ppl,
            row.task_ppl,
            row.task_ppl / float.task_ppl
        ));
    }
    table
}
