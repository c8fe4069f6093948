//! Random weights as transformers initialises a Qwen3 model (`_init_weights`): every matrix
//! (linear weights and the embedding) drawn from N(0, initializer_range²), RMSNorm scales 1.
//! Burn's own defaults (Kaiming-uniform linears, N(0, 1) embeddings) give a 28-layer model
//! with tied embeddings a first loss near 800 instead of ln(vocab).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor};

use super::{Qwen3Config, Qwen3ForCausalLM};

/// transformers' `PretrainedConfig.initializer_range` default.
const DEFAULT_INITIALIZER_RANGE: f64 = 0.02;

impl Qwen3ForCausalLM {
    /// Redraws every matrix from N(0, σ²), σ = `config.json`'s `initializer_range` (0.02 when
    /// absent), from the device's generator; norm scales (vectors) keep their ones. Qwen3 has
    /// no biases unless `attention_bias`, and those start at 0 in Burn as in transformers.
    pub fn init_like_transformers(self, config: &Qwen3Config) -> Self {
        struct Normal(f64);
        impl ModuleMapper for Normal {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                if D < 2 {
                    return param;
                }
                let std = self.0;
                param.map(|t| t.random_like(Distribution::Normal(0.0, std)))
            }
        }
        let std = config
            .extra
            .get("initializer_range")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(DEFAULT_INITIALIZER_RANGE);
        self.map(&mut Normal(std))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::checkpoint::ParamPath;

    #[test]
    fn matrices_follow_the_initializer_range_and_norms_stay_one() {
        let config = Qwen3Config::from_json(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../fixtures/qwen3-tiny-untied-mha-f32/config.json"),
            )
            .unwrap(),
            std::path::Path::new("config.json"),
        )
        .unwrap();
        let device = Device::flex();
        device.seed(3);
        let model = Qwen3ForCausalLM::new(&config, &device)
            .unwrap()
            .init_like_transformers(&config);
        struct Stats(ParamPath, Vec<(String, f64, f64)>);
        impl burn::module::ModuleVisitor for Stats {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.0.enter(name, container_type);
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.exit();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let values: Vec<f32> = param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec()
                    .unwrap();
                let n = values.len() as f64;
                let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = values
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / n;
                self.1.push((self.0.hf_name(), mean, var.sqrt()));
            }
        }
        let mut stats = Stats(ParamPath::default(), Vec::new());
        model.visit(&mut stats);
        for (name, mean, std) in stats.1 {
            if name.ends_with("norm.weight") {
                assert_eq!((mean, std), (1.0, 0.0), "{name}");
            } else {
                assert!(
                    mean.abs() < 0.004 && (std - 0.02).abs() < 0.002,
                    "{name}: {mean} {std}"
                );
            }
        }
    }
}
