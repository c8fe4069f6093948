//! How much each linear suffers in each candidate format, measured on calibration data: the
//! bit-allocation planner spends bits where this is largest. Two measures, both under
//! round-to-nearest quantization of one linear at a time:
//!
//! * [`loss_sensitivities`]: the increase of the model's mean next-token loss on the
//!   calibration windows (HAWQ-style, summed across layers by the planner). Exact for what it
//!   measures; one forward pass over the calibration set per linear and format.
//! * [`sensitivities`]: the layer's own output error to second order, `Σ_i Σ_j h_j (w_ij −
//!   ŵ_ij)²` with `h = diag(H)`, `H = 2/n Σ x xᵀ` the layer's input Hessian (llama.cpp's
//!   importance-matrix weighting). No forward passes, so it scales to large models, but it
//!   ignores how much the rest of the network amplifies each layer's error.

use std::collections::BTreeMap;

use andes_quant::{
    BpwReport, Choice, Hessian, LayerChoices, QuantFormat, WeightShape, dequantize, quantize_rtn,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::error::ModelError;
use crate::lora::LoraTarget;
use crate::quantize::{linear_name, set_weight_rows, weight_rows};
use crate::qwen3::Qwen3ForCausalLM;

/// One candidate format of one linear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatCost {
    /// The format.
    pub format: QuantFormat,
    /// Exact bits it stores the layer in (codes, scales, zeros).
    pub bits: u64,
    /// Importance-weighted squared error of the layer's weights in it.
    pub sensitivity: f64,
}

/// A linear's shape and the cost of each candidate format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSensitivity {
    /// Hugging Face module name.
    pub name: String,
    /// `out_features`.
    pub out_features: usize,
    /// `in_features`.
    pub in_features: usize,
    /// One entry per candidate format, in the order given.
    pub formats: Vec<FormatCost>,
}

impl LayerSensitivity {
    /// The linear as the allocation solver sees it: its weights and, per format, its cost
    /// in bits and its sensitivity.
    pub fn choices(&self) -> LayerChoices {
        LayerChoices {
            name: self.name.clone(),
            weights: (self.out_features * self.in_features) as u64,
            options: self
                .formats
                .iter()
                .map(|f| Choice {
                    format: f.format,
                    bits: f.bits,
                    sensitivity: f.sensitivity,
                })
                .collect(),
        }
    }
}

/// How a linear's sensitivity to a format is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitivityMeasure {
    /// The increase of the calibration loss with that linear alone quantized: one forward
    /// pass per linear and format.
    Loss,
    /// The importance-weighted weight error (diagonal input Hessians): no forward passes,
    /// for large models.
    Hessian,
}

impl SensitivityMeasure {
    /// Every measure, as flags spell them.
    pub const ALL: [Self; 2] = [Self::Loss, Self::Hessian];

    /// The name flags and manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Hessian => "hessian",
        }
    }
}

impl std::fmt::Display for SensitivityMeasure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SensitivityMeasure {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|measure| measure.name() == value)
            .ok_or_else(|| format!("found {value:?}, expected loss or hessian"))
    }
}

/// The sensitivity of every linear of `model` (model order) in each of `formats`, weighted by
/// the calibration Hessians of [`crate::quantize::calibrate`]; a linear's formats are
/// measured on every core, with the same results as one at a time.
pub fn sensitivities(
    model: &Qwen3ForCausalLM,
    hessians: &BTreeMap<String, Hessian>,
    formats: &[QuantFormat],
) -> Result<Vec<LayerSensitivity>, ModelError> {
    model
        .adapted_linears()
        .map(|(layer, target, linear)| {
            let name = linear_name(layer, target);
            let (weights, shape) = weight_rows(linear);
            let importance = hessians.get(&name).map(Hessian::diagonal).ok_or_else(|| {
                ModelError::InvalidInput(format!("no calibration statistics for `{name}`"))
            })?;
            // The formats of one linear are independent: one per core.
            let formats = formats
                .par_iter()
                .map(|&format| {
                    let quantized = quantize_rtn(&weights, shape, format).map_err(|source| {
                        ModelError::Quantization {
                            layer: name.clone(),
                            source,
                        }
                    })?;
                    let report: BpwReport = quantized.bits_per_weight();
                    Ok(FormatCost {
                        format,
                        bits: report.total_bits(),
                        sensitivity: weighted_error(
                            &weights,
                            &dequantize(&quantized),
                            shape,
                            &importance,
                        ),
                    })
                })
                .collect::<Result<Vec<_>, ModelError>>()?;
            Ok(LayerSensitivity {
                name,
                out_features: shape.out_features,
                in_features: shape.in_features,
                formats,
            })
        })
        .collect()
}

/// The increase of the mean next-token loss over `windows` (token ids `[batch, seq]`) when
/// one linear at a time is quantized by RTN to each of `formats`, every other weight float.
pub fn loss_sensitivities(
    model: &Qwen3ForCausalLM,
    windows: &[Tensor<2, Int>],
    formats: &[QuantFormat],
) -> Result<Vec<LayerSensitivity>, ModelError> {
    let mut probe = model.clone();
    let baseline = mean_next_token_loss(&probe, windows)?;
    let layers: Vec<(usize, LoraTarget)> = model
        .adapted_linears()
        .map(|(layer, target, _)| (layer, target))
        .collect();
    let mut out = Vec::with_capacity(layers.len());
    for (layer, target) in layers {
        let name = linear_name(layer, target);
        let (weights, shape) = weight_rows(target.of(&probe.model.layers[layer]));
        let mut costs = Vec::with_capacity(formats.len());
        for &format in formats {
            let quantized = quantize_rtn(&weights, shape, format).map_err(|source| {
                ModelError::Quantization {
                    layer: name.clone(),
                    source,
                }
            })?;
            let linear = target.of_mut(&mut probe.model.layers[layer]);
            set_weight_rows(linear, &dequantize(&quantized), shape);
            let loss = mean_next_token_loss(&probe, windows)?;
            costs.push(FormatCost {
                format,
                bits: quantized.bits_per_weight().total_bits(),
                sensitivity: loss - baseline,
            });
        }
        set_weight_rows(
            target.of_mut(&mut probe.model.layers[layer]),
            &weights,
            shape,
        );
        out.push(LayerSensitivity {
            name,
            out_features: shape.out_features,
            in_features: shape.in_features,
            formats: costs,
        });
    }
    Ok(out)
}

/// Mean next-token negative log-likelihood over `windows`, each predicting its own tokens
/// 1..L from 0..L-1, accumulated in f64.
fn mean_next_token_loss(
    model: &Qwen3ForCausalLM,
    windows: &[Tensor<2, Int>],
) -> Result<f64, ModelError> {
    let (mut total, mut count) = (0.0f64, 0usize);
    for tokens in windows {
        let [batch, seq] = tokens.dims();
        if seq < 2 {
            continue;
        }
        let logits = model.forward(tokens.clone(), &mut model.new_cache())?;
        let [_, _, vocab] = logits.dims();
        let logits = logits.slice([0..batch, 0..seq - 1, 0..vocab]);
        let targets = tokens
            .clone()
            .slice([0..batch, 1..seq])
            .unsqueeze_dim::<3>(2);
        let picked = log_softmax(logits, 2).gather(2, targets);
        total -= picked
            .cast(burn::tensor::DType::F64)
            .sum()
            .into_scalar::<f64>();
        count += batch * (seq - 1);
    }
    if count == 0 {
        return Err(ModelError::InvalidInput(
            "calibration needs windows of at least two tokens".into(),
        ));
    }
    Ok(total / count as f64)
}

/// `Σ_i Σ_j h_j (w_ij − ŵ_ij)²` over a row-major `[out, in]` matrix.
fn weighted_error(weights: &[f32], approx: &[f32], shape: WeightShape, importance: &[f64]) -> f64 {
    weights
        .chunks_exact(shape.in_features)
        .zip(approx.chunks_exact(shape.in_features))
        .map(|(row, row_hat)| {
            row.iter()
                .zip(row_hat)
                .zip(importance)
                .map(|((w, w_hat), h)| h * f64::from(w - w_hat).powi(2))
                .sum::<f64>()
        })
        .sum()
}
