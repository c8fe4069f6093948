//! How much each linear suffers in each candidate format, measured on calibration data: the
//! bit-allocation planner spends bits where this is largest.
//!
//! The measure is the layer's output error on the calibration inputs under round-to-nearest
//! quantization, to second order: `Σ_i Σ_j h_j (w_ij − ŵ_ij)²` with `h = diag(H)`,
//! `H = 2/n Σ x xᵀ` the layer's input Hessian (llama.cpp's importance-matrix weighting; the
//! full `ΔW H ΔWᵀ` of GPTQ costs `in²` per row and is left to the quantizer itself).

use std::collections::BTreeMap;

use andes_quant::{BpwReport, Hessian, QuantFormat, WeightShape, dequantize, quantize_rtn};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::quantize::{linear_name, weight_rows};
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

/// The sensitivity of every linear of `model` (model order) in each of `formats`, weighted by
/// the calibration Hessians of [`crate::quantize::calibrate`].
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
            let formats = formats
                .iter()
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
