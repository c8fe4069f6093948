//! `cargo xtask bench runtime`: decode speed and peak memory of the CPU runtime on a model the
//! size of Qwen3-0.6B (random weights from `andes init`, seed 0) in float, at ~4 bpw
//! (int4-g128 everywhere) and at the dimensity9500 plan of 1.8 bpw, against llama.cpp on the
//! same checkpoint (GGUF f16, Q4_K_M, Q2_K, IQ2_XXS, IQ1_M; `scripts/bench/runtime_llamacpp.py`,
//! run with `$PYTHON`, default python3, where llama-cpp-python is installed) with equal threads,
//! the IQ types quantized with an importance matrix of the calibration text andes' plan reads,
//! and against the bandwidth bound: bytes a step reads over the read bandwidth measured here
//! before each round (this VM's moves from one minute to the next: 31 to 52 GB/s in one
//! session), each run against its own round's. Each package row also stands beside the cost
//! model's estimate for this CPU: `andes bench cpu` measures the round's bandwidth and the
//! kernels of every format the packages hold into a profile, and `andes inspect --target`
//! estimates the package's decoding on it.
//! The int4 package also runs with prompt-lookup speculative decoding, 3 tokens drafted so
//! that a verifying pass takes four vectors (the integer kernels' widest tile): its random
//! weights soon repeat one token, which prompt lookup then drafts right every time. Each
//! package is also made with the other table format (generic-cpu quantizes the embedding and
//! head tables to int8, dimensity9500 keeps them f16), the same linears, to show what the
//! tables cost a step.
//! Writes every raw row and a Markdown table under `target/bench/runtime/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{fresh_bench, uniform_plan};
use crate::andes_runner::stdout_of;
use crate::workspace::{python, root};

const PROMPT: &str = "The meaning of the word is the meaning";

/// Builds, packages and measures everything of the module's docs with `threads` threads and
/// `new_tokens` generated tokens a run, every row `rounds` times, round by round.
pub(crate) fn runtime(threads: usize, new_tokens: usize, rounds: usize) -> anyhow::Result<()> {
    let (out, andes) = fresh_bench("runtime")?;
    let model = out.join("qwen3-0.6b");
    stdout_of(
        andes.command().args(["init", "--seed", "0"]).args([
            "--config",
            root()
                .join("configs/models/qwen3-0.6b.json")
                .to_str()
                .unwrap(),
            "--tokenizer",
            root().join("fixtures/tokenizer").to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
        ]),
    )?;
    let plan = out.join("plan-int4-g128-sym.json");
    uniform_plan(&model, "int4-g128-sym", &plan)?;
    let int4 = out.join("package-int4");
    let d9500 = out.join("package-d9500-1.8");
    let cache = out.join("cache");
    let with_plan = |target: &str, plan: &Path, package: &Path| {
        stdout_of(
            andes
                .command()
                .args(["quantize", "--init", "rtn", "--target", target])
                .args(["--model", model.to_str().unwrap()])
                .args(["--plan", plan.to_str().unwrap()])
                .args(["--out", package.to_str().unwrap()]),
        )
    };
    with_plan("generic-cpu", &plan, &int4)?;
    andes.quantize(
        &model,
        "dimensity9500",
        "1.8",
        &cache,
        &d9500,
        &[
            "--calib",
            root()
                .join("datasets/gcide/gcide-sample.txt")
                .to_str()
                .unwrap(),
            "--calib-windows",
            "8",
            "--sensitivity",
            "hessian",
            "--init",
            "rtn",
        ],
    )?;
    let int4_f16_tables = out.join("package-int4-f16-tables");
    let cpu_f16_tables = profile_with_tables(&out, "generic-cpu", None)?;
    with_plan(cpu_f16_tables.to_str().unwrap(), &plan, &int4_f16_tables)?;
    let d9500_int8_tables = out.join("package-d9500-1.8-int8-tables");
    let d9500_int8 = profile_with_tables(&out, "dimensity9500", Some("int8-channel-sym"))?;
    with_plan(
        d9500_int8.to_str().unwrap(),
        &d9500.join("bit_plan.json"),
        &d9500_int8_tables,
    )?;
    let imatrix = importance_matrix(&model, &out)?;
    // f16: the head of the packages whose tables stay float (dimensity9500's, and the int4
    // variant's)
    let kinds = [plan_formats(&andes, &d9500)?, vec!["f16".into()]].concat();
    let andes_rows = [
        ("andes float (f32)", &model, &["--runtime"][..]),
        ("andes int4-g128 (4.1 bpw), int8 tables", &int4, &[][..]),
        (
            "andes int4-g128, int8 tables, int8 activations",
            &int4,
            &["--int8-activations"][..],
        ),
        (
            "andes int4-g128 (4.1 bpw), f16 tables",
            &int4_f16_tables,
            &[][..],
        ),
        (
            "andes int4-g128, int8 activations, prompt lookup drafting 3",
            &int4,
            &["--int8-activations", "--speculate", "3"][..],
        ),
        (
            "andes dimensity9500 plan (1.8 bpw), f16 tables",
            &d9500,
            &[][..],
        ),
        (
            "andes dimensity9500 plan (1.8 bpw), int8 tables",
            &d9500_int8_tables,
            &[][..],
        ),
        (
            "andes dimensity9500 plan, int8 tables, int8 activations",
            &d9500_int8_tables,
            &["--int8-activations"][..],
        ),
    ];
    let (mut rows, mut peers) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // this round's bandwidth and kernels, with f32 and with int8 inputs
        let measure = |int8: bool| -> anyhow::Result<(PathBuf, serde_json::Value)> {
            let path = out.join(format!(
                "cpu-round-{round}{}.toml",
                if int8 { "-int8" } else { "" }
            ));
            let mut command = andes.command();
            command
                .args(["bench", "cpu", "--threads", &threads.to_string()])
                .args(["--formats", &kinds.join(",")])
                .arg("--profile-out")
                .arg(&path);
            if int8 {
                command.arg("--int8-activations");
            }
            Ok((path, serde_json::from_slice(&stdout_of(&mut command)?)?))
        };
        let (f32_profile, measured) = measure(false)?;
        let (int8_profile, _) = measure(true)?;
        let bandwidth = measured["read_bandwidth_gb_s"].as_f64().unwrap_or(0.0) * 1e9;
        for (label, path, extra) in andes_rows {
            let stdout = stdout_of(
                andes
                    .command()
                    .args(["generate", "--greedy", "--json", "--prompt", PROMPT])
                    .args(["--threads", &threads.to_string()])
                    .args(["--max-new-tokens", &new_tokens.to_string(), "--model"])
                    .arg(path)
                    .args(extra),
            )?;
            let mut row: serde_json::Value = serde_json::from_slice(&stdout)?;
            row["label"] = label.into();
            row["round"] = round.into();
            row["read_bandwidth"] = bandwidth.into();
            // a package decoded a token a step (drafting is past what the model estimates)
            if path.join("manifest.json").exists() && !extra.contains(&"--speculate") {
                let profile = if extra.contains(&"--int8-activations") {
                    &int8_profile
                } else {
                    &f32_profile
                };
                let context = row["prompt_tokens"].as_u64().unwrap_or(0) + new_tokens as u64;
                let report = stdout_of(
                    andes
                        .command()
                        .args(["inspect", "--json", "--context", &context.to_string()])
                        .arg("--target")
                        .arg(profile)
                        .arg(path),
                )?;
                let report: serde_json::Value = serde_json::from_slice(&report)?;
                row["estimate"] = report["cost_estimate"].clone();
            }
            rows.push(row);
        }
        // the first round converts and quantizes the GGUFs, later ones reuse them
        let peer = stdout_of(
            python("scripts/bench/runtime_llamacpp.py")
                .args(["--model", model.to_str().unwrap()])
                .args(["--work", out.join("gguf").to_str().unwrap()])
                .args(["--threads", &threads.to_string(), "--prompt", PROMPT])
                .args(["--new-tokens", &new_tokens.to_string()])
                .args(["--imatrix", imatrix.to_str().unwrap()]),
        )?;
        for line in String::from_utf8(peer)?
            .lines()
            .filter(|l| l.starts_with('{'))
        {
            let mut row: serde_json::Value = serde_json::from_str(line)?;
            row["label"] = format!("llama.cpp {}", row["type"].as_str().unwrap_or("?")).into();
            row["round"] = round.into();
            peers.push(row);
        }
    }
    let table = table(
        &median_runs(&rows),
        &median_runs(&peers),
        threads,
        new_tokens,
        rounds,
    );
    print!("{table}");
    std::fs::write(out.join("table.md"), &table)?;
    let raw: Vec<String> = rows.iter().chain(&peers).map(|r| r.to_string()).collect();
    std::fs::write(out.join("rows.jsonl"), raw.join("\n") + "\n")?;
    Ok(())
}

/// The formats of `package`'s plan (`andes inspect`), for `andes bench cpu` to measure.
fn plan_formats(andes: &crate::andes_runner::Andes, package: &Path) -> anyhow::Result<Vec<String>> {
    let report = stdout_of(andes.command().args(["inspect", "--json"]).arg(package))?;
    let report: serde_json::Value = serde_json::from_slice(&report)?;
    Ok(report["plan"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|share| share["format"].as_str().map(String::from))
        .collect())
}

/// llama.cpp's importance matrix for its IQ types (what `llama-imatrix` collects: each linear's
/// mean squared input column), from the first 8 KB of the calibration text the 1.8-bpw plan
/// reads, in windows of 64 tokens: `llamacpp_peer/qwen3_numpy.py`'s float64 forward takes
/// seconds a window at this size, and the matrix only shapes llama.cpp's codes, not its speed.
fn importance_matrix(model: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(root().join("datasets/gcide/gcide-sample.txt"))?;
    let mut end = 8192.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let slice = out.join("imatrix-text.txt");
    std::fs::write(&slice, &text[..end])?;
    let imatrix = out.join("imatrix.safetensors");
    stdout_of(
        python("scripts/bench/llamacpp_peer/qwen3_numpy.py")
            .args(["imatrix", "--window", "64", "--model"])
            .arg(model)
            .arg("--text")
            .arg(&slice)
            .arg("--out")
            .arg(&imatrix),
    )?;
    Ok(imatrix)
}

/// Built-in profile `name` as a file under `out`, its `tables` line replaced by one naming
/// `tables` (none: the tables stay at the profile's float precision).
fn profile_with_tables(out: &Path, name: &str, tables: Option<&str>) -> anyhow::Result<PathBuf> {
    let profile = std::fs::read_to_string(root().join(format!("configs/targets/{name}.toml")))?;
    let mut text: String = profile
        .lines()
        .filter(|line| !line.starts_with("tables"))
        .map(|line| format!("{line}\n"))
        .collect();
    if let Some(format) = tables {
        text += &format!("tables = {{ format = \"{format}\", source = \"benchmark variant\" }}\n");
    }
    let path = out.join(format!("{name}-tables-{}.toml", tables.unwrap_or("float")));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Each label's run of median decode speed (the lower middle of an even count), in first-seen
/// label order: one whole run, so its columns come from the same process.
fn median_runs(runs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut labels: Vec<&str> = Vec::new();
    for run in runs {
        let label = run["label"].as_str().unwrap_or("?");
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    let speed = |run: &serde_json::Value| run["decode_tokens_per_s"].as_f64().unwrap_or(0.0);
    labels
        .into_iter()
        .map(|label| {
            let mut same: Vec<&serde_json::Value> =
                runs.iter().filter(|r| r["label"] == label).collect();
            same.sort_by(|a, b| speed(a).total_cmp(&speed(b)));
            same[(same.len() - 1) / 2].clone()
        })
        .collect()
}

/// The Markdown table: every andes row and every llama.cpp type, with the bandwidth bound of
/// each andes row (at its run's round's read bandwidth).
fn table(
    rows: &[serde_json::Value],
    peers: &[serde_json::Value],
    threads: usize,
    new_tokens: usize,
    rounds: usize,
) -> String {
    let bandwidth = |row: &serde_json::Value| row["read_bandwidth"].as_f64().unwrap_or(0.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Decode of a Qwen3-0.6B-shape model (random weights), {threads} threads, greedy, \
         {new_tokens} tokens; each row the median-speed run of {rounds}, rounds interleaved; \
         read bandwidth measured before each round, each row's bound at its run's; the \
         estimate is `andes inspect --target` on the profile `andes bench cpu` measured in the \
         run's round: from reading and unpacking one after the other (serial) to overlapped \
         (the lower of the bandwidth and kernel bounds).\n"
    );
    let _ = writeln!(
        out,
        "| engine, weights | decode tok/s | prefill tok/s | peak memory MiB | bytes a step reads (MB) | read bandwidth GB/s | bandwidth bound tok/s | share of the bound | estimate tok/s: serial – overlapped | measured ÷ serial |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let bytes = row["weight_bytes"].as_f64().unwrap_or(0.0);
        let decode = row["decode_tokens_per_s"].as_f64().unwrap_or(0.0);
        let bound = bandwidth(row) / bytes;
        let estimate = &row["estimate"];
        let bounds = (
            estimate["decode_serial_tokens_per_s"].as_f64(),
            estimate["decode_tokens_per_s"].as_f64(),
        );
        let (estimated, against) = match bounds {
            (Some(serial), Some(overlapped)) => (
                format!("{serial:.1} – {overlapped:.1}"),
                format!("{:.2}", decode / serial),
            ),
            _ => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {decode:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {bound:.1} | {:.0}% | {estimated} | {against} |",
            row["label"].as_str().unwrap_or("?"),
            row["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
            row["peak_memory_mib"].as_f64().unwrap_or(0.0),
            bytes / 1e6,
            bandwidth(row) / 1e9,
            100.0 * decode / bound
        );
    }
    for peer in peers {
        let kind = peer["type"].as_str().unwrap_or("?");
        match peer.get("error") {
            Some(error) => {
                let _ = writeln!(
                    out,
                    "| llama.cpp {kind} | not measured: {error} | | | | | | | | |"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| llama.cpp {kind} | {:.2} | {:.2} | {:.0} | {:.0} (file) | | | | | |",
                    peer["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
                    peer["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
                    peer["peak_memory_mib"].as_f64().unwrap_or(0.0),
                    peer["file_bytes"].as_f64().unwrap_or(0.0) / 1e6
                );
            }
        }
    }
    out
}
