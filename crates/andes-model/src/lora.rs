//! LoRA: N named low-rank adapters on one frozen Qwen3 base, one of them active per forward
//! pass, with PEFT's maths, initialisation and (in [`peft`]) file layout.
//!
//! An adapter adds `(alpha / rank) · B·A·dropout(x)` to a projection's `W·x`, with A `[rank, in]`
//! kaiming-uniform and B `[out, rank]` zero at creation, so a new adapter changes nothing until
//! it trains. Adapters live inside the projections they adapt: each of the seven Qwen3
//! projections is an [`AdaptedLinear`] (base `Linear` + its adapters), as PEFT wraps an
//! `nn.Linear`. The model code calls `self.q_proj.forward(x)` as before; choosing the active
//! adapter, merging and freezing are methods of [`Qwen3ForCausalLM`] here.
//!
//! Burn's own `module::Lora` (burn-core `module/lora.rs`) reparameterizes a weight as
//! `W + scale·A·B` inside the `Param`; it is not used: it holds one adapter per weight (not N
//! named ones), has no input dropout (it acts on the weight, not the activation), initialises A
//! from a normal distribution rather than PEFT's kaiming-uniform, and materialises a dense
//! weight per forward (training then keeps a weight-sized gradient).

mod adapted;
mod config;
pub mod peft;
mod quantization_residual;

pub use adapted::{AdaptedLinear, LoraLinear};
pub use config::{LoraConfig, LoraTarget};

use std::path::PathBuf;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::checkpoint::{ParamPath, stable_param_id};
use crate::error::ModelError;
use crate::qwen3::Qwen3ForCausalLM;

/// What can go wrong when adding, switching, merging, importing or exporting adapters.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A [`LoraConfig`] value is out of range.
    #[error("LoRA config key `{key}`: {message}")]
    InvalidConfig {
        /// PEFT name of the key.
        key: String,
        /// What was found and what was expected.
        message: String,
    },
    /// A PEFT `adapter_config.json` is malformed or asks for something andes does not do.
    #[error("{path}: key `{key}`: {message}")]
    AdapterConfig {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What was found and what was expected.
        message: String,
    },
    /// An adapter name that is empty or unfit for a directory name.
    #[error("adapter name {0:?}: expected letters, digits, `_` or `-`")]
    InvalidName(String),
    /// An adapter of this name is already attached.
    #[error("an adapter named `{0}` is already attached")]
    DuplicateAdapter(String),
    /// No adapter of this name is attached.
    #[error("no adapter named `{name}` (attached: {attached})")]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// Comma-separated names of the attached adapters.
        attached: String,
    },
    /// The request needs an active adapter and none is.
    #[error("no adapter is active; call set_active_adapter first")]
    NoActiveAdapter,
    /// An adapter is merged into the base weights, which blocks switching and re-merging.
    #[error("adapter `{0}` is merged into the base weights; unmerge it first")]
    Merged(String),
    /// Merging into a quantized base: its weights are codes on a grid, and a 1+N bundle keeps
    /// each adapter apart from the shared base.
    #[error("the base is quantized; adapters stay separate from it (1+N) and cannot be merged")]
    QuantizedBase,
    /// `unmerge` with nothing merged.
    #[error("no adapter is merged into the base weights")]
    NotMerged,
    /// A PEFT adapter file lacks a tensor its configuration implies.
    #[error("{path}: tensor `{tensor}` is missing (expected shape {expected:?} for {reason})")]
    MissingTensor {
        /// The adapter weights file.
        path: PathBuf,
        /// PEFT tensor name.
        tensor: String,
        /// Shape the configuration and the model imply.
        expected: Vec<usize>,
        /// Where the expectation comes from.
        reason: String,
    },
    /// A PEFT adapter tensor has the wrong shape.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?} ({reason})")]
    ShapeMismatch {
        /// The adapter weights file.
        path: PathBuf,
        /// PEFT tensor name.
        tensor: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the configuration and the model imply.
        expected: Vec<usize>,
        /// Where the expectation comes from.
        reason: String,
    },
    /// Reading or writing a file failed, or a safetensors file is malformed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Which factor of an adapter: A (down) or B (up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// A, `lora_A`: `[rank, in]` in PEFT.
    A,
    /// B, `lora_B`: `[out, rank]` in PEFT.
    B,
}

impl Factor {
    /// PEFT's module name, `lora_A` or `lora_B`.
    pub fn peft_name(self) -> &'static str {
        match self {
            Self::A => "lora_A",
            Self::B => "lora_B",
        }
    }
}

/// The parameter ids of adapter `adapter`'s factors on `target` of layer `layer`, derived from
/// PEFT's in-memory names (`model.layers.0.self_attn.q_proj.lora_A.ocr.weight`) so that
/// optimizer state saved by one process finds the same parameters in the next.
pub fn factor_param_ids(layer: usize, target: LoraTarget, adapter: &str) -> [ParamId; 2] {
    [Factor::A, Factor::B].map(|factor| {
        stable_param_id(&format!(
            "model.layers.{layer}.{}.{}.{adapter}.weight",
            target.module_path(),
            factor.peft_name()
        ))
    })
}

impl Qwen3ForCausalLM {
    /// Attaches a new adapter `name` shaped by `config`, initialised as PEFT does (so the model's
    /// output is unchanged), and freezes every base parameter (`require_grad` false); adapters
    /// stay trainable. The new adapter is not made active.
    pub fn add_adapter(&mut self, name: &str, config: &LoraConfig) -> Result<(), LoraError> {
        self.attach_adapter(name, config, |layer, target, base| {
            let ids = factor_param_ids(layer, target, name);
            Ok(LoraLinear::init(name, base, config, ids))
        })
    }

    /// Attaches adapter `name`, its piece on each targeted projection built by
    /// `make(layer, target, base)`; nothing is attached if any piece fails.
    pub(crate) fn attach_adapter(
        &mut self,
        name: &str,
        config: &LoraConfig,
        mut make: impl FnMut(usize, LoraTarget, &Linear) -> Result<LoraLinear, LoraError>,
    ) -> Result<(), LoraError> {
        config.validate()?;
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || !name.chars().all(valid_char) {
            return Err(LoraError::InvalidName(name.into()));
        }
        if self.adapter_names().iter().any(|n| n == name) {
            return Err(LoraError::DuplicateAdapter(name.into()));
        }
        let mut pieces = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            for &target in &config.target_modules {
                let base = &target.of(layer).base_layer;
                let [d_in, d_out] = base.weight.lazy_shape().dims();
                if config.rank > d_in.min(d_out) {
                    return Err(LoraError::InvalidConfig {
                        key: "r".into(),
                        message: format!(
                            "rank {} exceeds {} of layer {i} ({d_in} in, {d_out} out): a \
                             low-rank update must have rank at most min(in, out)",
                            config.rank,
                            target.name()
                        ),
                    });
                }
                pieces.push((i, target, make(i, target, base)?));
            }
        }
        for (i, target, piece) in pieces {
            target.of_mut(&mut self.model.layers[i]).attach(piece);
        }
        self.freeze_base();
        Ok(())
    }

    /// Names of the attached adapters, in the order they were added.
    pub fn adapter_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for linear in self.adapted_linears().map(|(_, _, linear)| linear) {
            for adapter in linear.adapters() {
                if !names.contains(&adapter.name) {
                    names.push(adapter.name.clone());
                }
            }
        }
        names
    }

    /// The configuration of adapter `name` (targets in [`LoraTarget::ALL`] order).
    pub fn adapter_config(&self, name: &str) -> Option<LoraConfig> {
        let layer = self.model.layers.first()?;
        let pieces: Vec<(LoraTarget, &LoraLinear)> = LoraTarget::ALL
            .into_iter()
            .filter_map(|t| t.of(layer).adapter(name).map(|a| (t, a)))
            .collect();
        let (_, first) = pieces.first()?;
        Some(LoraConfig {
            rank: first.rank(),
            alpha: first.alpha,
            dropout: first.dropout.prob,
            target_modules: pieces.iter().map(|(t, _)| *t).collect(),
        })
    }

    /// Makes adapter `name` the one every forward pass applies, or none (`None`: the base model
    /// exactly). Fails for an unknown name, or while another adapter is merged.
    pub fn set_active_adapter(&mut self, name: Option<&str>) -> Result<(), LoraError> {
        if let Some(merged) = self.merged_adapter()
            && name != Some(merged.as_str())
        {
            return Err(LoraError::Merged(merged));
        }
        if let Some(name) = name {
            self.ensure_attached(name)?;
        }
        for layer in &mut self.model.layers {
            for target in LoraTarget::ALL {
                target.of_mut(layer).activate(name);
            }
        }
        Ok(())
    }

    /// The adapter the forward pass applies.
    pub fn active_adapter(&self) -> Option<String> {
        self.adapted_linears()
            .find_map(|(_, _, linear)| linear.active().map(str::to_string))
    }

    /// The adapter merged into the base weights.
    pub fn merged_adapter(&self) -> Option<String> {
        self.adapted_linears()
            .find_map(|(_, _, linear)| linear.merged().map(str::to_string))
    }

    /// Adds the active adapter's update into the base weights (`W += (alpha/rank)·B·A`), so the
    /// forward pass costs what the base costs; the adapter stays attached for [`Self::unmerge_adapter`].
    pub fn merge_adapter(&mut self) -> Result<(), LoraError> {
        if let Some(merged) = self.merged_adapter() {
            return Err(LoraError::Merged(merged));
        }
        if self
            .adapted_linears()
            .any(|(_, _, l)| l.quantizer.is_some())
        {
            return Err(LoraError::QuantizedBase);
        }
        if self.active_adapter().is_none() {
            return Err(LoraError::NoActiveAdapter);
        }
        for layer in &mut self.model.layers {
            for target in LoraTarget::ALL {
                target.of_mut(layer).merge_active();
            }
        }
        Ok(())
    }

    /// Subtracts the merged adapter's update from the base weights again (the base comes back
    /// within float rounding); the adapter stays active.
    pub fn unmerge_adapter(&mut self) -> Result<(), LoraError> {
        if self.merged_adapter().is_none() {
            return Err(LoraError::NotMerged);
        }
        for layer in &mut self.model.layers {
            for target in LoraTarget::ALL {
                target.of_mut(layer).unmerge();
            }
        }
        Ok(())
    }

    /// Every adaptable projection as `(layer, target, projection)`.
    pub fn adapted_linears(&self) -> impl Iterator<Item = (usize, LoraTarget, &AdaptedLinear)> {
        self.model
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, layer)| LoraTarget::ALL.map(move |target| (i, target, target.of(layer))))
    }

    pub(crate) fn ensure_attached(&self, name: &str) -> Result<(), LoraError> {
        let names = self.adapter_names();
        if names.iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(LoraError::UnknownAdapter {
                name: name.into(),
                attached: names.join(", "),
            })
        }
    }

    /// Stops gradients for every base parameter (not adapter factors, not quantization grids).
    fn freeze_base(&mut self) {
        struct FreezeBase(ParamPath);
        impl ModuleMapper for FreezeBase {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.0.enter(name, container_type);
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.exit();
            }
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                // Adapters train; a quantization grid keeps the setting QALFT gave it.
                if self.0.is_attachment() {
                    param
                } else {
                    param.set_require_grad(false)
                }
            }
        }
        *self = self.clone().map(&mut FreezeBase(ParamPath::default()));
    }
}
