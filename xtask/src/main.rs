//! Developer tasks: `cargo xtask fixtures | data | regress | bench forward | bench report |
//! bench qalft | bench quantize | bench vision | bench vlm-quant | pipeline`.
//!
//! Python appears here only where the peer (PyTorch + transformers) runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

mod andes_runner;
mod qalft_bench;
mod quantize_bench;
mod vlm_quant_bench;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["fixtures", rest @ ..] => fixtures(rest),
        ["data"] => data(),
        ["regress", rest @ ..] => regress(rest.contains(&"--record")),
        ["pipeline", rest @ ..] => pipeline(rest),
        ["bench", "forward", rest @ ..] => bench_forward(rest),
        ["bench", "report", dir] => bench_report(Path::new(dir)),
        ["bench", "qalft", rest @ ..] => qalft_bench::bench_qalft(rest),
        ["bench", "vision", rest @ ..] => bench_vision(rest),
        ["bench", "quantize", rest @ ..] => quantize_bench::bench_quantize(rest),
        ["bench", "vlm-quant", rest @ ..] => vlm_quant_bench::bench_vlm_quant(rest),
        _ => bail!(
            "usage: cargo xtask fixtures [--check]\n\
             \x20      cargo xtask data   (SFT, preference and GRPO sets from the GCIDE slices)\n\
             \x20      cargo xtask regress [--record]   (tiny recipes vs recorded baselines)\n\
             \x20      cargo xtask bench forward [--config FILE] [--prompt-len N] [--decode-tokens M] [--threads T]\n\
             \x20      cargo xtask bench report DIR   (ratio table of andes-*.json vs peer-*.json in DIR)\n\
             \x20      cargo xtask bench qalft [--pretrain-steps N] [--adapter-steps M] [--recipes DIR --init-config FILE --device D --window W --jobs J --gpus 0,1 --andes BIN --resume]   (QALFT quality table)\n\
             \x20      cargo xtask bench vlm-quant [--steps N]   (quantized AndesVL digit accuracy: text vs image calibration, CPU)"
        ),
    }
}

/// An empty `target/bench/NAME/` and the release `andes` binary, freshly built: the start of
/// every benchmark that runs the binary.
fn fresh_bench(name: &str) -> anyhow::Result<(PathBuf, andes_runner::Andes)> {
    let out = target_dir().join("bench").join(name);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "andes-cli",
    ]))?;
    Ok((
        out,
        andes_runner::Andes::cpu(target_dir().join("release/andes")),
    ))
}

fn root() -> PathBuf {
    // A prebuilt xtask carried to another machine (scripts/gpu/) runs from that checkout.
    match std::env::current_dir() {
        Ok(dir) if dir.join("xtask/Cargo.toml").is_file() => dir,
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (CI may put it outside the clone).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Regenerates the parity fixtures: Qwen3 checkpoints with transformers references, and the
/// GPTQ reference, the LoRA adapter and the vision towers, projector and preprocessing
/// (needs `pip install -r scripts/fixtures/requirements.txt`). The GPTQ real-layer
/// fixture is taken from the tiny pretrain run of `cargo xtask regress` when it exists. Last,
/// the tiny AndesVL is assembled from the new fixtures.
fn fixtures(rest: &[&str]) -> anyhow::Result<()> {
    run(Command::new("python3")
        .current_dir(root())
        .arg("scripts/fixtures/make_qwen3_fixtures.py")
        .args(["--out", "fixtures"])
        .args(rest))?;
    let mut gptq = Command::new("python3");
    gptq.current_dir(root())
        .arg("scripts/fixtures/make_gptq_fixture.py")
        .args(["--out", "fixtures/gptq", "--data", "datasets/gcide"]);
    let trained = target_dir().join("regress/pretrain/checkpoints/step-000120");
    if trained.exists() {
        gptq.arg("--checkpoint").arg(trained);
    }
    run(&mut gptq)?;
    run(Command::new("python3")
        .current_dir(root())
        .arg("scripts/fixtures/make_lora_fixtures.py")
        .args(["--fixtures", "fixtures"]))?;
    run(Command::new("python3")
        .current_dir(root())
        .arg("scripts/fixtures/make_vision_fixtures.py")
        .args([
            "--images",
            "fixtures/vision/images",
            "--out",
            "fixtures/vision",
        ]))?;
    assemble_tiny_andesvl()
}

/// `fixtures/andesvl-tiny`: the tiny AndesVL the alignment recipe starts from, assembled by
/// `andes assemble` from the tiny Qwen3 and SigLIP2 fixtures (projector seeded).
fn assemble_tiny_andesvl() -> anyhow::Result<()> {
    let out = root().join("fixtures/andesvl-tiny");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    run(Command::new("cargo")
        .current_dir(root())
        .args(["run", "--quiet", "-p", "andes-cli", "--", "assemble"])
        .args(["--preset", "configs/models/andesvl-tiny"])
        .args(["--text", "fixtures/qwen3-tiny-untied-mha-f32"])
        .args(["--vision", "fixtures/vision/siglip2-tiny"])
        .args(["--seed", "0", "--out", "fixtures/andesvl-tiny"]))
}

/// The tiny recipes that regression training runs, in `configs/recipes/tiny/`.
const REGRESS_RECIPES: [&str; 8] = [
    "pretrain",
    "align",
    "sft",
    "sft-vision",
    "mpo",
    "grpo",
    "lora",
    "qalft",
];
/// Allowed relative rise of a final loss above its baseline.
const LOSS_TOLERANCE: f64 = 0.02;
/// Allowed absolute rise of a final loss (nats), whatever its size: a loss near 0 (a task
/// learned) moves by more than 2% with the last bits of another CPU's arithmetic.
const LOSS_FLOOR: f64 = 0.01;
/// Allowed absolute fall of a final mean reward (a fraction of prompts) below its baseline:
/// sampled completions are discrete, so a last-bit difference between CPUs can change a
/// run's path; a fall this large means learning broke (the tiny GRPO run starts near 0).
const REWARD_TOLERANCE: f64 = 0.05;

/// Trains every tiny recipe on the CPU and compares its final figures with
/// `configs/recipes/tiny/baselines.json`: a training or held-out loss above its baseline by
/// more than [`LOSS_TOLERANCE`] (relative) and [`LOSS_FLOOR`] (absolute), or a mean reward
/// below its baseline by more than [`REWARD_TOLERANCE`] (absolute), fails. `--record` rewrites the baselines instead.
fn regress(record: bool) -> anyhow::Result<()> {
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--quiet", "-p", "andes-cli"]))?;
    let baselines_path = root().join("configs/recipes/tiny/baselines.json");
    let mut baselines: serde_json::Map<String, serde_json::Value> = if record {
        serde_json::Map::new()
    } else {
        serde_json::from_str(&std::fs::read_to_string(&baselines_path)?)
            .with_context(|| format!("{}: not JSON", baselines_path.display()))?
    };
    let mut failures = Vec::new();
    for name in REGRESS_RECIPES {
        let out_dir = target_dir().join("regress").join(name);
        let output = Command::new(target_dir().join("debug/andes"))
            .current_dir(root())
            .args(["train", "--quiet", "--config"])
            .arg(format!("configs/recipes/tiny/{name}.toml"))
            .arg("--out")
            .arg(&out_dir)
            .output()?;
        if !output.status.success() {
            bail!(
                "{name}: andes train failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut outcome: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        if record {
            if let Some(fields) = outcome.as_object_mut() {
                fields.remove("checkpoint");
                // A policy-gradient surrogate is no measure of quality; rewards are.
                if fields["final_reward"].is_number() {
                    fields.remove("final_loss");
                }
            }
            baselines.insert(name.into(), outcome);
            continue;
        }
        let keys = [
            "final_loss",
            "final_eval_loss",
            "final_reward",
            "final_eval_reward",
        ];
        for key in keys {
            let Some(then) = baselines[name][key].as_f64() else {
                continue;
            };
            let Some(now) = outcome[key].as_f64() else {
                bail!("{name}: `{key}` is in the baseline but missing from the run");
            };
            let worse = if key.ends_with("reward") {
                println!(
                    "{name:10} {key:17} {now:.5} (baseline {then:.5}, {:+.4})",
                    now - then
                );
                then - now > REWARD_TOLERANCE
            } else {
                let drift = (now - then) / then;
                println!(
                    "{name:10} {key:17} {now:.5} (baseline {then:.5}, {:+.2}%)",
                    drift * 100.0
                );
                now - then > (LOSS_TOLERANCE * then).max(LOSS_FLOOR)
            };
            if worse {
                failures.push(format!("{name} {key}: {now:.5} vs baseline {then:.5}"));
            }
        }
    }
    if record {
        std::fs::write(
            &baselines_path,
            serde_json::to_string_pretty(&baselines)? + "\n",
        )?;
        println!("recorded {}", baselines_path.display());
    }
    if !failures.is_empty() {
        bail!("regression beyond tolerance: {}", failures.join("; "));
    }
    Ok(())
}

/// The GCIDE slices the derived sets are made from, with the split each one becomes.
const GCIDE_SPLITS: [(&str, &str); 2] = [("gcide-sample.txt", "train"), ("gcide-eval.txt", "eval")];
/// Definitions longer than this (bytes; the slices are ASCII) are left out of the sets that
/// answer with a definition, so that an exchange fits a tiny model's window.
const MAX_DEFINITION_LEN: usize = 240;

/// One line of a GCIDE slice, `Headword: definition.`
struct Sense {
    headword: String,
    definition: String,
}

/// Makes the training sets derived from the GCIDE dictionary slices, one pair of files
/// (train from `gcide-sample.txt`, eval from `gcide-eval.txt`) per set:
/// SFT conversations, preference pairs and GRPO prompts with answers.
fn data() -> anyhow::Result<()> {
    for (source, split) in GCIDE_SPLITS {
        let senses = gcide_senses(source)?;
        let short: Vec<&Sense> = senses
            .iter()
            .filter(|s| s.definition.len() <= MAX_DEFINITION_LEN)
            .collect();
        write_jsonl(
            &format!("datasets/sft/gcide-define-{split}.jsonl"),
            sft_records(&short),
        )?;
        write_jsonl(
            &format!("datasets/preferences/gcide-define-{split}.jsonl"),
            preference_records(&short),
        )?;
        write_jsonl(
            &format!("datasets/grpo/gcide-letters-{split}.jsonl"),
            letter_count_records(&senses),
        )?;
        write_jsonl(
            &format!("datasets/images/digits/chat-{split}.jsonl"),
            digit_chat_records(split)?,
        )?;
    }
    Ok(())
}

/// Conversations that show an image (SFT of a vision-language model), one per captioned
/// handwritten digit of `datasets/images/digits/captions-<split>.jsonl`: the user asks which
/// digit the image shows, the assistant names it as the caption does.
fn digit_chat_records(split: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let path = root().join(format!("datasets/images/digits/captions-{split}.jsonl"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line)?;
            let caption = record["caption"].as_str().context("a caption")?;
            let digit = caption
                .strip_prefix("A handwritten digit ")
                .and_then(|rest| rest.strip_suffix('.'))
                .with_context(|| format!("{}: unexpected caption {caption:?}", path.display()))?;
            Ok(serde_json::json!({
                "messages": [
                    {"role": "user", "content": "<image>\nWhich digit is this?"},
                    {"role": "assistant", "content": format!("The digit {digit}.")},
                ],
                "images": [record["image"]],
            }))
        })
        .collect()
}

/// The senses of `datasets/gcide/<source>`, in file order; lines without a headword are
/// skipped.
fn gcide_senses(source: &str) -> anyhow::Result<Vec<Sense>> {
    let path = root().join("datasets/gcide").join(source);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(headword, _)| !headword.is_empty())
        .map(|(headword, definition)| Sense {
            headword: headword.into(),
            definition: definition.into(),
        })
        .collect())
}

/// Writes one JSON record a line to `relative` (from the repository root).
fn write_jsonl(relative: &str, records: Vec<serde_json::Value>) -> anyhow::Result<()> {
    let path = root().join(relative);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut lines = String::new();
    for record in &records {
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    std::fs::write(&path, &lines).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{relative}: {} records, {} bytes",
        records.len(),
        lines.len()
    );
    Ok(())
}

/// SFT conversations: the user asks for a headword's definition, the assistant answers with
/// the dictionary's text.
fn sft_records(senses: &[&Sense]) -> Vec<serde_json::Value> {
    senses
        .iter()
        .map(|sense| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("Define {}.", sense.headword)},
                {"role": "assistant", "content": sense.definition},
            ]})
        })
        .collect()
}

/// Preference pairs (DPO, MPO): the prompt asks for a headword's definition, `chosen` is its
/// definition and `rejected` the definition of another headword of the same slice. The
/// rejected sense is `k` lines further on (wrapping), `k` in `1..=n` from a hash of the
/// headword, moving on past senses of the same headword or with the same text.
fn preference_records(senses: &[&Sense]) -> Vec<serde_json::Value> {
    let n = senses.len();
    senses
        .iter()
        .enumerate()
        .filter_map(|(i, sense)| {
            let k = 1 + (fnv1a(sense.headword.as_bytes()) % n as u64) as usize;
            let rejected = (0..n)
                .map(|step| senses[(i + k + step) % n])
                .find(|other| {
                    !other.headword.eq_ignore_ascii_case(&sense.headword)
                        && other.definition != sense.definition
                })?;
            Some(serde_json::json!({
                "prompt": format!("Define {}.", sense.headword),
                "chosen": sense.definition,
                "rejected": rejected.definition,
            }))
        })
        .collect()
}

/// GRPO prompts with reference answers: how many letters a headword has. Only single words
/// of ASCII letters, lowercased and kept once each, in file order; the answer is a number
/// (rewarded by numeric match).
fn letter_count_records(senses: &[Sense]) -> Vec<serde_json::Value> {
    let mut seen = std::collections::HashSet::new();
    senses
        .iter()
        .map(|sense| sense.headword.to_ascii_lowercase())
        .filter(|word| word.bytes().all(|b| b.is_ascii_alphabetic()))
        .filter(|word| seen.insert(word.clone()))
        .map(|word| {
            serde_json::json!({
                "prompt": format!("How many letters are in the word \"{word}\"?"),
                "answer": word.len().to_string(),
            })
        })
        .collect()
}

/// 64-bit FNV-1a: a small fixed hash, the same on every platform and Rust version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn flag<'a>(rest: &[&'a str], name: &str, default: &'a str) -> &'a str {
    rest.iter()
        .position(|a| *a == name)
        .and_then(|i| rest.get(i + 1).copied())
        .unwrap_or(default)
}

/// Runs `andes bench forward` and the transformers-eager peer on this machine's CPU, same
/// shape and threads, and prints the ratio.
fn bench_forward(rest: &[&str]) -> anyhow::Result<()> {
    let config = flag(
        rest,
        "--config",
        "fixtures/qwen3-tiny-tied-gqa-f32/config.json",
    );
    let prompt_len = flag(rest, "--prompt-len", "128");
    let decode = flag(rest, "--decode-tokens", "32");
    let threads = flag(rest, "--threads", "2");
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "-p", "andes-cli"]))?;
    let andes = std::process::Command::new(target_dir().join("release/andes"))
        .current_dir(root())
        .args(["bench", "forward", "--config", config, "--device", "cpu"])
        .args(["--prompt-len", prompt_len, "--decode-tokens", decode])
        .env("RAYON_NUM_THREADS", threads)
        .output()?;
    if !andes.status.success() {
        bail!(
            "andes bench failed: {}",
            String::from_utf8_lossy(&andes.stderr)
        );
    }
    std::fs::write(out.join("andes-cpu.json"), &andes.stdout)?;
    run(Command::new("python3")
        .current_dir(root())
        .arg("scripts/bench/forward_peer.py")
        .args(["--config", config, "--device", "cpu", "--dtype", "float32"])
        .args(["--prompt-len", prompt_len, "--decode-tokens", decode])
        .args(["--threads", threads])
        .arg("--out")
        .arg(out.join("peer-cpu.json")))?;
    bench_report(&out)
}

/// The whole path on the bundled tiny model, one command: pretrain it (the tiny recipe), then
/// `andes quantize --target dimensity9500 --bpw 1.8`, `andes verify`, and `andes eval` of the
/// float checkpoint and of the package on held-out text; prints the comparison.
fn pipeline(rest: &[&str]) -> anyhow::Result<()> {
    let target = flag(rest, "--target", "dimensity9500");
    let bpw = flag(rest, "--bpw", "1.8");
    let out = root().join(flag(rest, "--out", "runs/tiny-pipeline"));
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "-p", "andes-cli"]))?;
    let andes = |args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new(target_dir().join("release/andes"))
            .current_dir(root())
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running andes")?;
        if !output.status.success() {
            bail!("andes {} failed", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let train_dir = out.join("train");
    println!("== 1/4 train the tiny Qwen3 (configs/recipes/tiny/pretrain.toml)");
    run(Command::new(target_dir().join("release/andes"))
        .current_dir(root())
        .args([
            "train",
            "--config",
            "configs/recipes/tiny/pretrain.toml",
            "--out",
        ])
        .arg(&train_dir))?;
    let mut checkpoints: Vec<PathBuf> = std::fs::read_dir(train_dir.join("checkpoints"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    checkpoints.sort();
    let model = checkpoints.last().context("the run wrote no checkpoint")?;
    let model_str = model.to_string_lossy().into_owned();
    let package = out.join("package");
    let package_str = package.to_string_lossy().into_owned();
    let calib = "datasets/gcide/gcide-sample.txt";
    let held_out = "datasets/gcide/gcide-eval.txt";
    println!("== 2/4 andes quantize --target {target} --bpw {bpw}");
    let cache = out.join("cache").to_string_lossy().into_owned();
    print!(
        "{}",
        andes(&[
            "quantize",
            "--model",
            &model_str,
            "--target",
            target,
            "--bpw",
            bpw,
            "--calib",
            calib,
            "--cache",
            &cache,
            "--out",
            &package_str,
        ])?
    );
    println!("== 3/4 andes verify");
    print!("{}", andes(&["verify", &package_str])?);
    println!("== 4/4 andes eval: float checkpoint vs package on {held_out}");
    let eval = |model: &str| -> anyhow::Result<serde_json::Value> {
        let text = andes(&["eval", "--model", model, "--documents", held_out, "--json"])?;
        serde_json::from_str(text.trim()).context("eval printed no JSON")
    };
    let (float, packed) = (eval(&model_str)?, eval(&package_str)?);
    let ppl = |v: &serde_json::Value| v["perplexity"].as_f64().unwrap_or(f64::NAN);
    println!("| model | bpw (linears) | held-out perplexity |");
    println!("|---|---|---|");
    println!("| float ({model_str}) | 32 | {:.3} |", ppl(&float));
    println!(
        "| package ({package_str}, {target}) | {:.4} | {:.3} |",
        packed["bpw_linears"].as_f64().unwrap_or(f64::NAN),
        ppl(&packed)
    );
    println!(
        "package / float perplexity: {:.3}× (post-training quantization alone; QALFT recovers \
         quality at low bpw: cargo xtask bench qalft)",
        ppl(&packed) / ppl(&float)
    );
    Ok(())
}

/// Vision-tower images/s of andes and transformers on this machine's CPU, for the towers of
/// the AndesVL-0.6B (SigLIP2-base) and AndesVL-1B (AIMv2-large) presets at 512×512 and at a
/// 1024×768 image, then the ratio table. The H100 run of the same comparison is
/// `scripts/gpu/vision_run.sh` (one device call).
fn bench_vision(rest: &[&str]) -> anyhow::Result<()> {
    let threads = flag(rest, "--threads", "2");
    let out = target_dir().join("bench/vision");
    std::fs::create_dir_all(&out)?;
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "-p", "andes-cli"]))?;
    for (preset, patch) in [("0.6b", 16), ("1b", 14)] {
        let config = format!("configs/models/andesvl-{preset}/config.json");
        for (height, width) in [(512, 512), (768, 1024)] {
            let (h, w) = (
                (height / patch * patch).to_string(),
                (width / patch * patch).to_string(),
            );
            let tag = format!("cpu-{preset}-{h}x{w}");
            let andes = Command::new(target_dir().join("release/andes"))
                .current_dir(root())
                .args(["bench", "vision", "--config", &config, "--device", "cpu"])
                .args(["--height", &h, "--width", &w, "--batch", "1"])
                .args(["--warmup", "1", "--repeats", "3"])
                .env("RAYON_NUM_THREADS", threads)
                .output()?;
            if !andes.status.success() {
                bail!(
                    "andes bench vision failed: {}",
                    String::from_utf8_lossy(&andes.stderr)
                );
            }
            std::fs::write(out.join(format!("andes-{tag}.json")), &andes.stdout)?;
            run(Command::new("python3")
                .current_dir(root())
                .arg("scripts/bench/vision_peer.py")
                .args(["--config", &config, "--device", "cpu", "--attn", "sdpa"])
                .args(["--height", &h, "--width", &w, "--batch", "1"])
                .args(["--warmup", "1", "--repeats", "3", "--threads", threads])
                .arg("--out")
                .arg(out.join(format!("peer-{tag}.json"))))?;
        }
    }
    bench_report(&out)
}

/// Prints andes vs peer throughput for every `andes-X.json` with a `peer-X.json` beside it.
fn bench_report(dir: &Path) -> anyhow::Result<()> {
    let read = |path: PathBuf| -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        // A whole JSON document, or JSON on the last line after other output.
        serde_json::from_str(&text)
            .or_else(|_| serde_json::from_str(text.lines().last().unwrap_or_default()))
            .with_context(|| format!("{}: not JSON", path.display()))
    };
    println!("| run | metric | andes | transformers eager | ratio |");
    println!("|---|---|---|---|---|");
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(run_name) = name
            .strip_prefix("andes-")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let peer_path = dir.join(format!("peer-{run_name}.json"));
        if !peer_path.exists() {
            continue;
        }
        let (ours, peer) = match (read(entry.path()), read(peer_path)) {
            (Ok(ours), Ok(peer)) => (ours, peer),
            _ => {
                println!("| {run_name} | — | not measured (no result; see its .err file) | | |");
                continue;
            }
        };
        for metric in [
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "train_tokens_per_s",
            "images_per_s",
        ] {
            let (a, b) = (ours[metric].as_f64(), peer[metric].as_f64());
            if let (Some(a), Some(b)) = (a, b) {
                println!(
                    "| {run_name} | {metric} | {a:.1} | {b:.1} | {:.2}× |",
                    a / b
                );
            }
        }
    }
    Ok(())
}
