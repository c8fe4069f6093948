//! AdamW over the trainable parameters: decay on weight matrices only, frozen modules
//! excluded, the update driven by a global-norm-clipped gradient.

use andes_model::checkpoint::ParamPath;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use crate::recipe::OptimizerSection;

/// AdamW (Burn's) with a second group, weight decay 0, for norm scales and biases, the
/// usual exclusion in GPT training.
pub fn adamw<M: Module>(module: &M, section: &OptimizerSection) -> ModuleOptimizer {
    let config = |weight_decay: f64| {
        AdamWConfig::new()
            .with_beta_1(section.beta1 as f32)
            .with_beta_2(section.beta2 as f32)
            .with_epsilon(section.eps as f32)
            .with_weight_decay(weight_decay as f32)
    };
    let no_decay = parameters_where(module, |path| path.is_norm_scale() || path.is_bias());
    config(section.weight_decay).init().with_group(
        ParamGroup::from_ids(no_decay),
        config(0.0).build(),
        None,
    )
}

/// Ids of the parameters whose path satisfies `predicate`.
pub fn parameters_where<M: Module>(
    module: &M,
    predicate: impl Fn(&ParamPath) -> bool,
) -> Vec<ParamId> {
    struct Select<F> {
        path: ParamPath,
        predicate: F,
        ids: Vec<ParamId>,
    }
    impl<F: Fn(&ParamPath) -> bool> ModuleVisitor for Select<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if (self.predicate)(&self.path) {
                self.ids.push(param.id);
            }
        }
    }
    let mut select = Select {
        path: ParamPath::default(),
        predicate,
        ids: Vec::new(),
    };
    module.visit(&mut select);
    select.ids
}

/// Stops gradients for every base parameter whose Hugging Face name starts with one of
/// `prefixes` (e.g. `model.embed_tokens`, `model.layers.0.`); LoRA adapters are never frozen
/// by a prefix. Returns how many were frozen.
pub fn freeze<M: Module>(module: M, prefixes: &[String]) -> (M, usize) {
    struct Freeze<'a> {
        path: ParamPath,
        prefixes: &'a [String],
        frozen: usize,
    }
    impl ModuleMapper for Freeze<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            // Prefixes name base modules; LoRA adapters under them keep training.
            let name = self.path.hf_name();
            if !self.path.is_adapter() && self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            {
                self.frozen += 1;
                param.set_require_grad(false)
            } else {
                param
            }
        }
    }
    let mut mapper = Freeze {
        path: ParamPath::default(),
        prefixes,
        frozen: 0,
    };
    let module = module.map(&mut mapper);
    (module, mapper.frozen)
}

/// Global L2 norm of all gradients of `module`'s parameters; when `max_norm` is given and
/// exceeded, every gradient is scaled by `max_norm / norm` (torch's `clip_grad_norm_`).
/// Returns the norm before clipping.
pub fn clip_global_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f64>,
) -> f64 {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        total: f64,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                self.total += grad.square().sum().into_scalar::<f64>();
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, grad.mul_scalar(self.factor));
            }
        }
    }
    let mut norm = SquaredNorm { grads, total: 0.0 };
    module.visit(&mut norm);
    let norm = norm.total.sqrt();
    if let Some(max_norm) = max_norm
        && norm > max_norm
    {
        module.visit(&mut Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use andes_model::checkpoint::load_qwen3;
    use andes_model::lora::LoraConfig;
    use burn::tensor::{DType, Device};

    #[test]
    fn freezing_a_layer_prefix_keeps_its_lora_adapters_trainable() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/qwen3-tiny-untied-mha-f32");
        let device = Device::flex().autodiff();
        let (_, mut model) = load_qwen3(&dir, &device, DType::F32).unwrap();
        let config: LoraConfig = serde_json::from_str(
            r#"{"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"]}"#,
        )
        .unwrap();
        model.add_adapter("task", &config).unwrap();
        let (model, frozen) = freeze(model, &["model.layers.0.".to_string()]);
        assert!(frozen > 0);
        struct Trainable(ParamPath, Vec<String>);
        impl ModuleVisitor for Trainable {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.0.enter(name, container_type);
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.exit();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.is_require_grad() && self.0.hf_name().starts_with("model.layers.0.") {
                    self.1.push(self.0.hf_name());
                }
            }
        }
        let mut trainable = Trainable(ParamPath::default(), Vec::new());
        model.visit(&mut trainable);
        // Only layer 0's q_proj adapter (lora A and B) still trains inside the frozen layer.
        assert_eq!(trainable.1.len(), 2, "{:?}", trainable.1);
    }
}
