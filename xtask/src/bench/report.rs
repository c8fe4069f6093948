//! `cargo xtask bench report DIR`: the ratio table of benchmark results, wherever they were
//! measured (this machine, or a GPU box whose results were copied back).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Prints andes vs peer throughput for every `andes-X.json` with a `peer-X.json` beside it.
pub(crate) fn print_ratio_table(dir: &Path) -> anyhow::Result<()> {
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
