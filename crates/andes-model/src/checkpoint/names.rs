//! The one place where Burn parameter paths meet Hugging Face tensor names.
//!
//! Module fields carry the Hugging Face names (`model.layers.3.self_attn.q_proj`), so a
//! parameter's name is its module path with two conventions translated: Burn's `RmsNorm`
//! calls its scale `gamma` (Hugging Face: `weight`), and Burn's `Linear` stores its weight
//! as `[in, out]` where PyTorch stores `[out, in]`.

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
        let mut names = self.names.clone();
        if self.parent_is("RmsNorm") && names.last().is_some_and(|n| n == "gamma") {
            *names.last_mut().expect("checked non-empty") = "weight".into();
        }
        names.join(".")
    }

    /// Whether the parameter is a Burn `Linear` weight, stored transposed in the checkpoint.
    pub fn is_transposed_in_checkpoint(&self) -> bool {
        self.parent_is("Linear") && self.names.last().is_some_and(|n| n == "weight")
    }

    /// Whether the parameter is the scale of an RMSNorm (exempt from weight decay).
    pub fn is_norm_scale(&self) -> bool {
        self.parent_is("RmsNorm")
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
