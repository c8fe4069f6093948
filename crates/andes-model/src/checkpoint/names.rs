//! The one place where Burn parameter paths meet Hugging Face tensor names.
//!
//! Module fields carry the Hugging Face names (`model.layers.3.self_attn.q_proj`), so a
//! parameter's name is its module path with two conventions translated: Burn's `RmsNorm`
//! and `LayerNorm` call their scale `gamma` and shift `beta` (Hugging Face: `weight`,
//! `bias`), and Burn's `Linear` stores its weight as `[in, out]` where PyTorch stores
//! `[out, in]`. A module enum (a vision tower's `LayerNorm`-or-`RmsNorm`) adds its variant
//! as a path segment, which is dropped.
//!
//! A projection that can carry LoRA adapters ([`crate::lora::AdaptedLinear`]) holds its
//! base `Linear` in a field `base_layer`, as PEFT's wrapper does; the segment is dropped, so
//! `model.layers.0.self_attn.q_proj.base_layer.weight` is still `...q_proj.weight`. Its
//! adapters (field `adapters`) are not part of the checkpoint: they live in PEFT adapter
//! directories (`crate::lora::peft`), and the checkpoint reader and writer skip them. Neither
//! is its quantization grid (field `quantizer`, QALFT's fake quant), which a training run
//! rebuilds from its recipe and saves beside the adapters.

/// Tracks the module path during a Burn visit or map.
#[derive(Debug, Default)]
pub struct ParamPath {
    names: Vec<String>,
    containers: Vec<String>,
}

impl ParamPath {
    /// Called on every `enter_module`.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        self.names.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    /// Called on every `exit_module`.
    pub fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }

    /// Hugging Face name of the parameter at the current path.
    pub fn hf_name(&self) -> String {
        let mut names: Vec<&str> = self
            .names
            .iter()
            .zip(&self.containers)
            .filter(|(name, container)| !(*name == "base_layer" && is_adapted(container)))
            .filter(|(_, container)| !container.starts_with("Enum:"))
            .map(|(name, _)| name.as_str())
            .collect();
        let is_norm = self.parent_is("RmsNorm") || self.parent_is("LayerNorm");
        if let Some(last) = names.last_mut().filter(|_| is_norm) {
            match *last {
                "gamma" => *last = "weight",
                "beta" => *last = "bias",
                _ => {}
            }
        }
        names.join(".")
    }

    /// Whether the parameter belongs to a LoRA adapter rather than to the base model.
    pub fn is_adapter(&self) -> bool {
        self.names
            .iter()
            .zip(&self.containers)
            .any(|(name, container)| name == "adapters" && is_adapted(container))
    }

    /// Whether the parameter belongs to the fake-quant grid of a projection's base weight.
    pub fn is_quantizer(&self) -> bool {
        self.names
            .iter()
            .zip(&self.containers)
            .any(|(name, container)| name == "quantizer" && is_adapted(container))
    }

    /// Whether the parameter is attached to the base model rather than part of it (an adapter
    /// or a quantization grid): the base checkpoint neither holds nor expects it.
    pub fn is_attachment(&self) -> bool {
        self.is_adapter() || self.is_quantizer()
    }

    /// Whether the parameter is a Burn `Linear` weight, stored transposed in the checkpoint.
    pub fn is_transposed_in_checkpoint(&self) -> bool {
        self.parent_is("Linear") && self.names.last().is_some_and(|n| n == "weight")
    }

    /// Whether the parameter belongs to an RMSNorm or a LayerNorm (exempt from weight decay).
    pub fn is_norm_scale(&self) -> bool {
        self.parent_is("RmsNorm") || self.parent_is("LayerNorm")
    }

    /// Whether the parameter is a bias vector (exempt from weight decay).
    pub fn is_bias(&self) -> bool {
        self.names.last().is_some_and(|n| n == "bias")
    }

    fn parent_is(&self, module: &str) -> bool {
        self.containers
            .last()
            .is_some_and(|c| c.strip_prefix("Struct:") == Some(module))
    }
}

/// Burn names a struct field's container `Struct:<parent type>`.
fn is_adapted(container: &str) -> bool {
    container == "Struct:AdaptedLinear"
}
