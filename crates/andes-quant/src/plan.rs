//! The bit plan: which format every quantized linear of a model gets. `andes quantize` writes one
//! (`bit_plan.json`), a person may edit it, and QALFT and the package read it.
//!
//! ```json
//! {
//!   "version": 1,
//!   "layers": [
//!     { "name": "model.layers.0.self_attn.q_proj", "format": "int4-g128-asym" },
//!     { "name": "model.layers.0.mlp.down_proj", "format": "ternary-g64", "sensitivity": 0.013 }
//!   ]
//! }
//! ```
//!
//! Names are the Hugging Face module names of the linears (without `.weight`). A plan must name
//! every linear the model quantizes, once, and nothing else: a missing, unknown or repeated name
//! is an error that names it, since a silent fallback would ship a model other than the plan.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::allocate::{LayerChoices, allocate};
use crate::error::QuantError;
use crate::format::QuantFormat;

/// The plan format this crate reads and writes.
pub const PLAN_VERSION: u32 = 1;

/// One linear's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanEntry {
    /// Hugging Face module name, e.g. `model.layers.3.mlp.up_proj`.
    pub name: String,
    /// Its format.
    pub format: QuantFormat,
    /// The sensitivity the planner measured for this choice, when a planner made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
}

/// A whole plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitPlan {
    /// [`PLAN_VERSION`].
    pub version: u32,
    /// The target profile the plan was fitted to, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The average-bpw budget the plan was fitted to, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_bpw: Option<f64>,
    /// One entry per quantized linear.
    pub layers: Vec<PlanEntry>,
}

impl BitPlan {
    /// The allocation solver's plan for an average of `bpw` bits per weight over `layers`
    /// (each with the formats `target` runs and their sensitivities).
    pub fn for_budget(layers: &[LayerChoices], target: &str, bpw: f64) -> Result<Self, QuantError> {
        if !(bpw.is_finite() && bpw > 0.0) {
            return Err(QuantError::Budget(format!(
                "the budget must be a positive number of bits per weight, got {bpw}"
            )));
        }
        let weights: u64 = layers.iter().map(|c| c.weights).sum();
        let budget_bits = (bpw * weights as f64).floor() as u64;
        let allocation = allocate(layers, budget_bits)
            .map_err(|e| QuantError::Budget(format!("target {target}: {e}")))?;
        Ok(BitPlan {
            version: PLAN_VERSION,
            target: Some(target.into()),
            budget_bpw: Some(bpw),
            layers: layers
                .iter()
                .zip(&allocation.choices)
                .map(|(layer, &c)| PlanEntry {
                    name: layer.name.clone(),
                    format: layer.options[c].format,
                    sensitivity: Some(layer.options[c].sensitivity),
                })
                .collect(),
        })
    }

    /// The same `format` for every linear of `names`.
    pub fn uniform(names: &[String], format: QuantFormat) -> Self {
        BitPlan {
            version: PLAN_VERSION,
            target: None,
            budget_bpw: None,
            layers: names
                .iter()
                .map(|name| PlanEntry {
                    name: name.clone(),
                    format,
                    sensitivity: None,
                })
                .collect(),
        }
    }

    /// Reads a plan file; a malformed file, a wrong version or a bad format string is an error
    /// naming the file and the key.
    pub fn read(path: &Path) -> Result<Self, QuantError> {
        let fail = |key: String, message: String| QuantError::PlanFile {
            path: path.display().to_string(),
            key,
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(String::new(), e.to_string()))?;
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let plan: BitPlan = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| fail(e.path().to_string(), e.inner().to_string()))?;
        if plan.version != PLAN_VERSION {
            return Err(fail(
                "version".into(),
                format!(
                    "found {}, this andes reads version {PLAN_VERSION}",
                    plan.version
                ),
            ));
        }
        Ok(plan)
    }

    /// The plan as pretty JSON, the form [`BitPlan::read`] reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan serializes")
    }

    /// The format of every linear in `names` (a model's quantizable linears). `source` labels
    /// errors (the plan file, or the recipe key that gave a uniform format).
    pub fn formats_for(
        &self,
        names: &[String],
        source: &str,
    ) -> Result<BTreeMap<String, QuantFormat>, QuantError> {
        let mut formats = BTreeMap::new();
        for entry in &self.layers {
            if !names.contains(&entry.name) {
                let hint = names
                    .first()
                    .map_or(String::new(), |n| format!(" (e.g. `{n}`)"));
                return Err(QuantError::PlanLayer {
                    origin: source.into(),
                    layer: entry.name.clone(),
                    message: format!(
                        "the model has no linear of this name; names are Hugging Face module names{hint}"
                    ),
                });
            }
            if formats.insert(entry.name.clone(), entry.format).is_some() {
                return Err(QuantError::PlanLayer {
                    origin: source.into(),
                    layer: entry.name.clone(),
                    message: "named twice".into(),
                });
            }
        }
        if let Some(missing) = names.iter().find(|n| !formats.contains_key(*n)) {
            return Err(QuantError::PlanLayer {
                origin: source.into(),
                layer: missing.clone(),
                message: "the model has this linear but the plan gives it no format".into(),
            });
        }
        Ok(formats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.mlp.up_proj",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_plan_round_trips_through_json() {
        let mut plan = BitPlan::uniform(&names(), "int2-g64-asym".parse().unwrap());
        plan.layers[1].format = "ternary-g128".parse().unwrap();
        plan.layers[1].sensitivity = Some(0.5);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bit_plan.json");
        std::fs::write(&path, plan.to_json()).unwrap();
        let read = BitPlan::read(&path).unwrap();
        assert_eq!(read, plan);
        let formats = read.formats_for(&names(), "plan").unwrap();
        assert_eq!(
            formats["model.layers.0.mlp.up_proj"].to_string(),
            "ternary-g128"
        );
    }

    #[test]
    fn unknown_missing_and_repeated_layers_are_named() {
        let format = "int4-g128-sym".parse().unwrap();
        let mut plan = BitPlan::uniform(&names(), format);
        plan.layers[0].name = "model.layers.9.self_attn.q_proj".into();
        let err = plan
            .formats_for(&names(), "p.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.9.self_attn.q_proj") && err.contains("no linear"),
            "{err}"
        );
        let plan = BitPlan::uniform(&names()[..1], format);
        let err = plan
            .formats_for(&names(), "p.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.0.mlp.up_proj") && err.contains("no format"),
            "{err}"
        );
        let mut plan = BitPlan::uniform(&names(), format);
        plan.layers[1].name = plan.layers[0].name.clone();
        let err = plan
            .formats_for(&names(), "p.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("named twice"), "{err}");
    }

    #[test]
    fn a_bad_format_or_version_names_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bit_plan.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "layers": [{"name": "a", "format": "int5-g64-sym"}]}"#,
        )
        .unwrap();
        let err = BitPlan::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("bit_plan.json") && err.contains("layers[0].format"),
            "{err}"
        );
        std::fs::write(&path, r#"{"version": 2, "layers": []}"#).unwrap();
        let err = BitPlan::read(&path).unwrap_err().to_string();
        assert!(err.contains("version") && err.contains("found 2"), "{err}");
    }
}
