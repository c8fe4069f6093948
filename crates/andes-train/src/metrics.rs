//! `metrics.jsonl`: one JSON object per optimizer step, plus evaluation lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step (1-based: the step just completed).
    pub step: usize,
    /// The stage's loss on this step's batch (mean NLL per target token for the next-token
    /// stages).
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens (reply tokens for MPO and GRPO) of this step.
    pub tokens: usize,
    /// Those tokens per second of wall time for this step (GRPO: sampling included).
    pub tokens_per_s: f64,
    /// Mean reward of the step's sampled completions (GRPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
    /// Fraction of the step's pairs whose chosen reply has the higher implicit reward (MPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference_accuracy: Option<f64>,
    /// Each source's loss on this step's examples from it, by source name (mixtures only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_losses: BTreeMap<String, f64>,
    /// Held-out loss, at evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// `exp(eval_loss)`, for the next-token stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
    /// Each source's held-out loss, by source name, at evaluation steps (mixtures only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval_source_losses: BTreeMap<String, f64>,
    /// Mean reward of greedy completions of the held-out prompts (GRPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_reward: Option<f64>,
    /// Preference accuracy on the held-out pairs (MPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_preference_accuracy: Option<f64>,
}

/// Appends step lines to `run_dir/metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Opens the log, dropping lines after `resume_step` (written by an interrupted run past
    /// its last checkpoint) so the file matches the steps that will be replayed.
    pub fn open(run_dir: &Path, resume_step: usize) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let kept: Vec<StepMetrics> = read(&path)?
            .into_iter()
            .filter(|m| m.step <= resume_step)
            .collect();
        let text: String = kept
            .iter()
            .map(|m| serde_json::to_string(m).expect("serializes") + "\n")
            .collect();
        andes_model::checkpoint::write_atomically(&path, text.as_bytes())?;
        Ok(Self { path })
    }

    /// Appends one step.
    pub fn append(&self, metrics: &StepMetrics) -> Result<(), TrainError> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| TrainError::io(&self.path, e))?;
        let line = serde_json::to_string(metrics).expect("serializes");
        writeln!(file, "{line}").map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Every step line of a metrics file (empty when the file does not exist yet).
pub fn read(path: &Path) -> Result<Vec<StepMetrics>, TrainError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| TrainError::io(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}
