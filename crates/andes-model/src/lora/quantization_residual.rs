//! An adapter that starts as the best low-rank repair of its quantized base instead of as zero
//! (CLoQ, arXiv:2501.18475): on a 1+N base quantized to ~2 bits, a new adapter's first job is
//! otherwise to relearn what quantization took, from task data alone. The factors are
//! `andes_quant::calibrated_low_rank` of each targeted linear's quantization error, weighted by
//! the float model's inputs; the base is untouched, so every adapter still shares it.

use std::collections::{BTreeMap, HashMap};

use andes_quant::{Hessian, QuantError, calibrated_low_rank};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{LoraConfig, LoraError, LoraLinear, factor_param_ids};
use crate::error::ModelError;
use crate::quantize::{linear_name, matrix_rows, weight_rows};
use crate::qwen3::Qwen3ForCausalLM;

/// The Hessian's damping, as a fraction of its mean diagonal: GPTQ's default, so the inputs
/// the calibration never excited still count a little.
const DAMP_PERCENT: f64 = 0.01;

impl Qwen3ForCausalLM {
    /// Attaches adapter `name` as [`Qwen3ForCausalLM::add_adapter`] does, its factors set so
    /// that `B·A` is, on each targeted linear, the rank-r correction of the quantization error
    /// `W − Q` that the linear's outputs see least of on the calibration inputs: `W` the same
    /// linear's weight in `float` (the model this base was quantized from), `Q` this model's
    /// base as it computes (the fake-quant grid's weights, or a package's dequantized ones),
    /// and `hessians` the float model's inputs by linear ([`crate::quantize::calibrate`]). The
    /// model with the adapter active then starts nearer to `float` than its base alone.
    pub fn add_adapter_at_quantization_residual(
        &mut self,
        name: &str,
        config: &LoraConfig,
        float: &Qwen3ForCausalLM,
        hessians: &BTreeMap<String, Hessian>,
    ) -> Result<(), LoraError> {
        config.validate()?;
        let mut jobs = Vec::new();
        for (layer, target, linear) in self.adapted_linears() {
            if !config.target_modules.contains(&target) {
                continue;
            }
            let module = linear_name(layer, target);
            let (weights, shape) = weight_rows(target.of(&float.model.layers[layer]));
            let (quantized, _) = matrix_rows(linear.effective_weight().transpose());
            let residual: Vec<f32> = weights.iter().zip(&quantized).map(|(w, q)| w - q).collect();
            jobs.push(((layer, target), module, residual, shape));
        }
        let factors: HashMap<_, _> = jobs
            .into_par_iter()
            .map(|(key, module, residual, shape)| {
                let fail = |source| ModelError::Quantization {
                    layer: module.clone(),
                    source,
                };
                let hessian = hessians.get(&module).ok_or_else(|| {
                    fail(QuantError::NoCalibrationTokens {
                        in_features: shape.in_features,
                    })
                })?;
                calibrated_low_rank(
                    &residual,
                    shape.out_features,
                    hessian,
                    config.rank,
                    DAMP_PERCENT,
                )
                .map(|factors| (key, factors))
                .map_err(fail)
            })
            .collect::<Result<_, ModelError>>()?;
        // The update is `scaling · B·A`: each factor carries `1/√scaling` of it.
        let root = config.scaling().sqrt();
        self.attach_adapter(name, config, |layer, target, base| {
            let low_rank = &factors[&(layer, target)];
            let device = base.weight.lazy_device();
            let dtype = base.weight.val().dtype();
            let [d_in, d_out] = base.weight.lazy_shape().dims();
            // PEFT's `[rank, in]` and `[out, rank]` to Burn's `[in, rank]` and `[rank, out]`.
            let burn_layout = |values: &[f32], shape: [usize; 2]| {
                Tensor::<2>::from_data(TensorData::new(values.to_vec(), shape), &device)
                    .transpose()
                    .div_scalar(root)
                    .cast(dtype)
            };
            let a = burn_layout(&low_rank.a, [low_rank.rank, d_in]);
            let b = burn_layout(&low_rank.b, [d_out, low_rank.rank]);
            let ids = factor_param_ids(layer, target, name);
            Ok(LoraLinear::from_factors(
                name,
                [a, b],
                config.alpha,
                config.dropout,
                ids,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use andes_quant::{BitPlan, QuantFormat};
    use burn::tensor::{DType, Device, Int};

    use super::*;
    use crate::checkpoint::load_qwen3;
    use crate::lora::LoraTarget;
    use crate::quantize::{PtqMethod, calibrate, linear_names, quantize_base, token_inputs};

    fn tokens(device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = (0..64).map(|i| (i * 37 + 11) % 500).collect();
        Tensor::from_data(TensorData::new(ids, [4, 16]), device)
    }

    fn logits(model: &Qwen3ForCausalLM, device: &Device) -> Vec<f32> {
        let out = model
            .forward(tokens(device), &mut model.new_cache())
            .unwrap();
        out.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn distance(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// On a base quantized to int2, the adapter started at the residual brings the model's
    /// logits on the calibration tokens nearer to the float model's than the base alone (where
    /// PEFT's start leaves them), and each targeted linear's `Q + B·A` nearer to `W` than `Q`.
    #[test]
    fn the_adapter_starts_nearer_the_float_model_than_its_quantized_base() {
        let device = Device::flex();
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny-untied-mha-f32");
        let (_, float) = load_qwen3(&path, &device, DType::F32).unwrap();
        let hessians = calibrate(&float, &token_inputs(&[tokens(&device)])).unwrap();
        let mut quantized = float.clone();
        let format: QuantFormat = "int2-g32-asym".parse().unwrap();
        let plan = BitPlan::uniform(&linear_names(&float), format);
        quantize_base(&mut quantized, &plan, "test", PtqMethod::Rtn, None, false).unwrap();
        let config = LoraConfig::new(8, 16.0, &LoraTarget::ALL);
        quantized
            .add_adapter_at_quantization_residual("repair", &config, &float, &hessians)
            .unwrap();
        let target = logits(&float, &device);
        let base = distance(&logits(&quantized, &device), &target);
        quantized.set_active_adapter(Some("repair")).unwrap();
        let repaired = distance(&logits(&quantized, &device), &target);
        eprintln!("logit distance to the float model: base {base}, repaired {repaired}");
        assert!(repaired < 0.9 * base, "repaired {repaired}, base {base}");
        for (layer, target, linear) in quantized.adapted_linears() {
            let w = target
                .of(&float.model.layers[layer])
                .base_layer
                .weight
                .val();
            let q = linear.effective_weight();
            let delta = linear.adapter("repair").unwrap().delta_weight();
            let gap = |m: Tensor<2>| (w.clone() - m).powi_scalar(2).sum().into_scalar::<f32>();
            assert!(
                gap(q.clone() + delta) < gap(q),
                "layer {layer} {}",
                target.name()
            );
        }
    }
}
