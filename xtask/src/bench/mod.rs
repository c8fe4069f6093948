//! `cargo xtask bench ...`: every benchmark's numbers come from real runs of the `andes` binary,
//! against a transformers peer on the same machine where there is one.

pub(crate) mod forward;
pub(crate) mod okv;
pub(crate) mod qalft;
pub(crate) mod quantize;
pub(crate) mod report;
pub(crate) mod runtime;
pub(crate) mod speculative;
pub(crate) mod vision;
pub(crate) mod vlm_quant;

use std::path::{Path, PathBuf};

use crate::andes_runner::{Andes, Profile, build, latest_checkpoint, stdout_of};
use crate::workspace::{python, root, run, target_dir};

/// An empty `target/bench/NAME/` and the release `andes` binary on the CPU, freshly built: the
/// start of a benchmark whose every figure comes from this call, none left from an earlier one.
fn fresh_bench(name: &str) -> anyhow::Result<(PathBuf, Andes)> {
    let out = target_dir().join("bench").join(name);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    Ok((out, Andes::cpu(build(Profile::Release)?)))
}

/// Trains the tiny recipe `recipe` (`configs/recipes/tiny/RECIPE.toml`) for `steps` steps into
/// `out/RECIPE` and returns its newest checkpoint: the model a CPU benchmark then quantizes.
fn train_tiny(andes: &Andes, out: &Path, recipe: &str, steps: u32) -> anyhow::Result<PathBuf> {
    let run_dir = out.join(recipe);
    andes.train(
        &root().join(format!("configs/recipes/tiny/{recipe}.toml")),
        &run_dir,
        &[&format!("train.steps={steps}")],
    )?;
    latest_checkpoint(&run_dir)
}

/// Writes to `plan` a bit plan giving every projection of the Qwen3 checkpoint `model` the
/// format `format`, for `andes quantize --plan`.
fn uniform_plan(model: &Path, format: &str, plan: &Path) -> anyhow::Result<()> {
    const PROJECTIONS: [&str; 7] = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json"))?)?;
    let layers = config["num_hidden_layers"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("{}: no num_hidden_layers", model.display()))?;
    let entries: Vec<serde_json::Value> = (0..layers)
        .flat_map(|layer| {
            PROJECTIONS.map(|p| {
                serde_json::json!({"name": format!("model.layers.{layer}.{p}"), "format": format})
            })
        })
        .collect();
    let text = serde_json::json!({"version": 1, "layers": entries}).to_string();
    Ok(std::fs::write(plan, text)?)
}

/// A throughput comparison on this machine's CPU of `andes bench KIND` with its transformers
/// peer, `scripts/bench/KIND_peer.py`, both given the same threads: results land in `out` as
/// the `andes-TAG.json` and `peer-TAG.json` pairs that [`report::print_ratio_table`] reads.
struct PeerComparison {
    andes: Andes,
    kind: &'static str,
    threads: usize,
    out: PathBuf,
}

impl PeerComparison {
    /// Builds the release `andes` and makes `out` (earlier results in it stay, to be reported
    /// with the new ones).
    fn start(kind: &'static str, threads: usize, out: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&out)?;
        Ok(Self {
            andes: Andes::cpu(build(Profile::Release)?),
            kind,
            threads,
            out,
        })
    }

    /// Measures both sides on the `shape` arguments they share (the peer gets `peer_only`
    /// too: its dtype or attention kernel) and writes the pair tagged `tag`.
    fn measure(&self, tag: &str, shape: &[&str], peer_only: &[&str]) -> anyhow::Result<()> {
        let threads = self.threads.to_string();
        let ours = stdout_of(
            self.andes
                .command()
                .args(["bench", self.kind, "--device", "cpu"])
                .args(shape)
                .env("RAYON_NUM_THREADS", &threads),
        )?;
        std::fs::write(self.out.join(format!("andes-{tag}.json")), ours)?;
        run(python(&format!("scripts/bench/{}_peer.py", self.kind))
            .args(["--device", "cpu", "--threads", &threads])
            .args(shape)
            .args(peer_only)
            .arg("--out")
            .arg(self.out.join(format!("peer-{tag}.json"))))
    }

    /// The ratio table of every pair in `out`.
    fn report(&self) -> anyhow::Result<()> {
        report::print_ratio_table(&self.out)
    }
}
