//! How much each linear suffers in each candidate format, measured on calibration data: the
//! bit-allocation planner spends bits where this is largest. Three measures, all under
//! round-to-nearest quantization of one linear at a time:
//!
//! * [`forward_sensitivities`] with [`SensitivityMeasure::Loss`]: the increase of the model's
//!   mean next-token loss on the calibration windows (HAWQ-style, summed across layers by the
//!   planner); one forward pass over the calibration set per linear and format. A change that
//!   is noise on a few thousand tokens can come out negative, and the planner then hands its
//!   fewest bits to the linears whose measured change was that noise.
//! * the same with [`SensitivityMeasure::Divergence`]: the mean KL divergence of the
//!   quantized model's next-token distributions from the float model's, at every calibration
//!   position. Never negative, and it sees every change of the distribution, not only the
//!   change of the target token's probability (llama.cpp's `--kl-divergence` statistic).
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
    /// The mean KL divergence of the next-token distributions from the float model's with
    /// that linear alone quantized: one forward pass per linear and format, and the float
    /// model's log-probabilities of the calibration set kept (windows · tokens · vocabulary
    /// floats: 16 MB for 32 windows of 256 tokens over 512, 2.5 GB for 32 of 128 over
    /// Qwen3's 151,936) up to [`MAX_REFERENCE_BYTES`], recomputed beyond.
    Divergence,
    /// The importance-weighted weight error (diagonal input Hessians): no forward passes,
    /// for large models.
    Hessian,
}

impl SensitivityMeasure {
    /// Every measure, as flags spell them.
    pub const ALL: [Self; 3] = [Self::Loss, Self::Divergence, Self::Hessian];

    /// The name flags and manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::Divergence => "divergence",
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
            .ok_or_else(|| format!("found {value:?}, expected loss, divergence or hessian"))
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

/// What a forward pass over `windows` (token ids `[batch, seq]`) with one linear at a time
/// quantized by RTN to each of `formats`, every other weight float, costs by `measure`
/// (`Loss` or `Divergence`; [`sensitivities`] measures `Hessian`).
pub fn forward_sensitivities(
    model: &Qwen3ForCausalLM,
    windows: &[Tensor<2, Int>],
    formats: &[QuantFormat],
    measure: SensitivityMeasure,
) -> Result<Vec<LayerSensitivity>, ModelError> {
    let reference = Reference::of(model, windows, measure, MAX_REFERENCE_BYTES)?;
    measure_each_linear(model, windows, formats, &reference)
}

/// The most bytes the divergence keeps the float model's log-probabilities in; beyond, it
/// computes them again a window at a time for every linear and format (a second forward pass
/// each) rather than run out of memory.
pub const MAX_REFERENCE_BYTES: usize = 4 << 30;

/// [`forward_sensitivities`] against `reference`.
fn measure_each_linear(
    model: &Qwen3ForCausalLM,
    windows: &[Tensor<2, Int>],
    formats: &[QuantFormat],
    reference: &Reference,
) -> Result<Vec<LayerSensitivity>, ModelError> {
    let mut probe = model.clone();
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
            costs.push(FormatCost {
                format,
                bits: quantized.bits_per_weight().total_bits(),
                sensitivity: reference.cost(&probe, windows)?,
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

/// What the float model gave on the calibration windows, for a forward measure to compare
/// against.
enum Reference {
    /// Its mean next-token loss.
    Loss(f64),
    /// Its next-token log-probabilities.
    LogProbs(FloatLogProbs),
}

/// The float model's next-token log-probabilities on the calibration windows.
enum FloatLogProbs {
    /// Kept, `[batch, seq, vocab]` a window.
    Kept(Vec<Tensor<3>>),
    /// Computed again a window at a time, where keeping them would take more than the bytes
    /// allowed.
    Recomputed(Box<Qwen3ForCausalLM>),
}

impl FloatLogProbs {
    /// Those of window `index`, `tokens`.
    fn of_window(&self, index: usize, tokens: &Tensor<2, Int>) -> Result<Tensor<3>, ModelError> {
        match self {
            Self::Kept(windows) => Ok(windows[index].clone()),
            Self::Recomputed(model) => log_probs(model, tokens),
        }
    }
}

impl Reference {
    /// The reference `measure` compares with, log-probabilities kept up to `max_bytes`.
    fn of(
        model: &Qwen3ForCausalLM,
        windows: &[Tensor<2, Int>],
        measure: SensitivityMeasure,
        max_bytes: usize,
    ) -> Result<Self, ModelError> {
        let [vocab, _] = model.model.embed_tokens.weight.dims();
        let positions: usize = windows
            .iter()
            .map(|w| w.dims().iter().product::<usize>())
            .sum();
        match measure {
            SensitivityMeasure::Loss => Ok(Self::Loss(mean_next_token_loss(model, windows)?)),
            SensitivityMeasure::Divergence if positions * vocab * 4 > max_bytes => Ok(
                Self::LogProbs(FloatLogProbs::Recomputed(Box::new(model.clone()))),
            ),
            SensitivityMeasure::Divergence => Ok(Self::LogProbs(FloatLogProbs::Kept(
                windows
                    .iter()
                    .map(|tokens| log_probs(model, tokens))
                    .collect::<Result<_, _>>()?,
            ))),
            SensitivityMeasure::Hessian => Err(ModelError::InvalidInput(
                "the hessian sensitivity needs no forward passes: use `sensitivities`".into(),
            )),
        }
    }

    /// The loss increase, or the mean divergence, of `probe` from the float model.
    fn cost(
        &self,
        probe: &Qwen3ForCausalLM,
        windows: &[Tensor<2, Int>],
    ) -> Result<f64, ModelError> {
        match self {
            Self::Loss(baseline) => Ok(mean_next_token_loss(probe, windows)? - baseline),
            Self::LogProbs(float) => {
                let (mut total, mut count) = (0.0f64, 0usize);
                for (index, tokens) in windows.iter().enumerate() {
                    let [batch, seq] = tokens.dims();
                    let reference = float.of_window(index, tokens)?;
                    let quantized = log_probs(probe, tokens)?;
                    let divergence = reference.clone().exp() * (reference - quantized);
                    total += divergence
                        .cast(burn::tensor::DType::F64)
                        .sum()
                        .into_scalar::<f64>();
                    count += batch * seq;
                }
                Ok(total / count.max(1) as f64)
            }
        }
    }
}

/// The model's next-token log-probabilities at every position of `tokens`.
fn log_probs(model: &Qwen3ForCausalLM, tokens: &Tensor<2, Int>) -> Result<Tensor<3>, ModelError> {
    let logits = model.forward(tokens.clone(), &mut model.new_cache())?;
    Ok(log_softmax(logits.cast(burn::tensor::DType::F32), 2))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::load_qwen3;
    use crate::generate::token_tensor;
    use burn::tensor::{DType, Device};

    fn logits(model: &Qwen3ForCausalLM, tokens: &Tensor<2, Int>) -> Vec<f64> {
        let logits = model
            .forward(tokens.clone(), &mut model.new_cache())
            .unwrap();
        let values = logits
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        values.into_iter().map(f64::from).collect()
    }

    /// `Σ p·(log p − log q)` a position from raw logits, in f64: the definition, apart from
    /// the tensor code under test.
    fn mean_divergence(p: &[f64], q: &[f64], vocab: usize) -> f64 {
        let log_softmax = |row: &[f64]| {
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
            row.iter().map(move |v| v - log_sum).collect::<Vec<_>>()
        };
        let rows = p.len() / vocab;
        let total: f64 = p
            .chunks_exact(vocab)
            .zip(q.chunks_exact(vocab))
            .map(|(p, q)| {
                let (p, q) = (log_softmax(p), log_softmax(q));
                p.iter()
                    .zip(&q)
                    .map(|(p, q)| p.exp() * (p - q))
                    .sum::<f64>()
            })
            .sum();
        total / rows as f64
    }

    /// On the tiny trained fixture, each linear's divergence is the KL of its one-linear
    /// quantized model from the float one as the definition computes it from the two models'
    /// logits, never negative, and int1 codes diverge more than int8 codes in every linear.
    #[test]
    fn divergence_is_the_mean_kl_from_the_float_model() {
        let device = Device::flex();
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/qwen3-tiny-untied-mha-f32");
        let (config, model) = load_qwen3(&fixture, &device, DType::F32).unwrap();
        let vocab = config.vocab_size;
        let windows: Vec<Tensor<2, Int>> = (0..2u32)
            .map(|w| {
                let ids: Vec<u32> = (0..24u32)
                    .map(|i| (w * 131 + i * 37 + i * i) % vocab as u32)
                    .collect();
                token_tensor(&ids, &device)
            })
            .collect();
        let formats: Vec<QuantFormat> = ["int8-channel-sym", "int1-g64-sym"]
            .iter()
            .map(|f| f.parse().unwrap())
            .collect();
        let layers =
            forward_sensitivities(&model, &windows, &formats, SensitivityMeasure::Divergence)
                .unwrap();
        // Past the bytes allowed, the float model's log-probabilities are computed again for
        // every probe: the same values.
        let recomputed =
            Reference::of(&model, &windows, SensitivityMeasure::Divergence, 0).unwrap();
        assert!(matches!(
            recomputed,
            Reference::LogProbs(FloatLogProbs::Recomputed(_))
        ));
        assert_eq!(
            measure_each_linear(&model, &windows, &formats, &recomputed).unwrap(),
            layers
        );
        for layer in &layers {
            let (int8, int1) = (layer.formats[0].sensitivity, layer.formats[1].sensitivity);
            // f32 log-probabilities: a divergence of nothing rounds to within 1e-6 of zero.
            assert!(
                int8 >= -1e-6 && int1 > int8,
                "{}: {int8} {int1}",
                layer.name
            );
        }
        let reference: Vec<Vec<f64>> = windows.iter().map(|w| logits(&model, w)).collect();
        for (index, (layer, target, _)) in model.adapted_linears().enumerate().step_by(5) {
            let mut probe = model.clone();
            let (weights, shape) = weight_rows(target.of(&probe.model.layers[layer]));
            let quantized = quantize_rtn(&weights, shape, formats[1]).unwrap();
            set_weight_rows(
                target.of_mut(&mut probe.model.layers[layer]),
                &dequantize(&quantized),
                shape,
            );
            let expected = windows
                .iter()
                .zip(&reference)
                .map(|(w, p)| mean_divergence(p, &logits(&probe, w), vocab))
                .sum::<f64>()
                / windows.len() as f64;
            let found = layers[index].formats[1].sensitivity;
            assert!(
                (found - expected).abs() <= 1e-4 * expected + 1e-7,
                "{}: {found} against {expected}",
                layers[index].name
            );
        }
    }
}
