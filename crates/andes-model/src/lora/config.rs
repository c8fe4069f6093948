//! Which projections an adapter adapts, and how: rank, alpha, dropout, with PEFT's key names.

use serde::{Deserialize, Serialize};

use super::{AdaptedLinear, LoraError};
use crate::qwen3::DecoderLayer;

/// A Qwen3 projection that LoRA can adapt; serialized with PEFT's module names (`q_proj`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// `self_attn.q_proj`
    QProj,
    /// `self_attn.k_proj`
    KProj,
    /// `self_attn.v_proj`
    VProj,
    /// `self_attn.o_proj`
    OProj,
    /// `mlp.gate_proj`
    GateProj,
    /// `mlp.up_proj`
    UpProj,
    /// `mlp.down_proj`
    DownProj,
}

impl LoraTarget {
    /// Every adaptable projection, in the order of a decoder block.
    pub const ALL: [Self; 7] = [
        Self::QProj,
        Self::KProj,
        Self::VProj,
        Self::OProj,
        Self::GateProj,
        Self::UpProj,
        Self::DownProj,
    ];

    /// PEFT's `target_modules` name (`"q_proj"`).
    pub fn name(self) -> &'static str {
        let path = self.module_path();
        path.rsplit_once('.').map_or(path, |(_, name)| name)
    }

    /// Path inside a decoder block (`"self_attn.q_proj"`), as in the Hugging Face names.
    pub fn module_path(self) -> &'static str {
        match self {
            Self::QProj => "self_attn.q_proj",
            Self::KProj => "self_attn.k_proj",
            Self::VProj => "self_attn.v_proj",
            Self::OProj => "self_attn.o_proj",
            Self::GateProj => "mlp.gate_proj",
            Self::UpProj => "mlp.up_proj",
            Self::DownProj => "mlp.down_proj",
        }
    }

    /// The target called `name` in PEFT's `target_modules`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// This projection of `layer`.
    pub fn of(self, layer: &DecoderLayer) -> &AdaptedLinear {
        let (attn, mlp) = (&layer.self_attn, &layer.mlp);
        match self {
            Self::QProj => &attn.q_proj,
            Self::KProj => &attn.k_proj,
            Self::VProj => &attn.v_proj,
            Self::OProj => &attn.o_proj,
            Self::GateProj => &mlp.gate_proj,
            Self::UpProj => &mlp.up_proj,
            Self::DownProj => &mlp.down_proj,
        }
    }

    /// This projection of `layer`, mutably.
    pub fn of_mut(self, layer: &mut DecoderLayer) -> &mut AdaptedLinear {
        let (attn, mlp) = (&mut layer.self_attn, &mut layer.mlp);
        match self {
            Self::QProj => &mut attn.q_proj,
            Self::KProj => &mut attn.k_proj,
            Self::VProj => &mut attn.v_proj,
            Self::OProj => &mut attn.o_proj,
            Self::GateProj => &mut mlp.gate_proj,
            Self::UpProj => &mut mlp.up_proj,
            Self::DownProj => &mut mlp.down_proj,
        }
    }
}

/// The shape of one adapter, with PEFT's key names (`r`, `lora_alpha`, `lora_dropout`,
/// `target_modules`) so that a recipe reads like a PEFT `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update `B·A` (A `[r, in]`, B `[out, r]`).
    #[serde(rename = "r")]
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    #[serde(rename = "lora_alpha")]
    pub alpha: f64,
    /// Dropout probability on the adapter's input while training, in `[0, 1)`.
    #[serde(rename = "lora_dropout", default)]
    pub dropout: f64,
    /// The projections adapted in every decoder block.
    pub target_modules: Vec<LoraTarget>,
}

impl LoraConfig {
    /// Rank `rank`, scale `alpha / rank`, no dropout, on `targets`.
    pub fn new(rank: usize, alpha: f64, targets: &[LoraTarget]) -> Self {
        Self {
            rank,
            alpha,
            dropout: 0.0,
            target_modules: targets.to_vec(),
        }
    }

    /// `alpha / rank`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks every key; the error names the key, what was found and what is expected.
    pub fn validate(&self) -> Result<(), LoraError> {
        let fail = |key: &str, message: String| {
            Err(LoraError::InvalidConfig {
                key: key.into(),
                message,
            })
        };
        if self.rank == 0 {
            return fail("r", "found 0, expected a positive integer".into());
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return fail(
                "lora_alpha",
                format!("found {}, expected a positive number", self.alpha),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(
                "lora_dropout",
                format!("found {}, expected a probability in [0, 1)", self.dropout),
            );
        }
        if self.target_modules.is_empty() {
            return fail(
                "target_modules",
                "found an empty list, expected at least one of q_proj, k_proj, v_proj, o_proj, \
                 gate_proj, up_proj, down_proj"
                    .into(),
            );
        }
        for (i, target) in self.target_modules.iter().enumerate() {
            if self.target_modules[..i].contains(target) {
                return fail(
                    "target_modules",
                    format!("`{}` is listed twice", target.name()),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_config_uses_peft_key_names() {
        let config: LoraConfig = serde_json::from_str(
            r#"{"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "down_proj"]}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.05,
                target_modules: vec![LoraTarget::QProj, LoraTarget::DownProj],
            }
        );
        assert_eq!(config.scaling(), 2.0);
        let bad = LoraConfig {
            dropout: 1.0,
            ..config
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("lora_dropout")
        );
    }
}
