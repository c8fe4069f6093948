//! Quantizing a Qwen3's linears in place: calibration (the Hessian of each linear's inputs), the
//! PTQ initialiser (RTN or GPTQ) per a [`BitPlan`], and the fake-quant grid QALFT trains against.
//!
//! After [`quantize_base`], every planned projection holds a [`FakeQuantizer`]: its forward
//! pass computes exactly the weights the package will store (bit for bit), and
//! [`quantized_linears`] gives those packed tensors. The latent weight the grid rounds is the
//! float weight for RTN, and GPTQ's dequantized result for GPTQ (its codes are not the nearest
//! levels of the float weight, so the latent weight must carry them).
//! Embeddings, norms and the LM head stay in float, as in every weight-only PTQ method; a
//! package may round the embedding and head tables afterwards ([`quantized_tables`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use andes_quant::{
    BitPlan, BpwReport, FakeQuantizer, GptqOptions, Hessian, QuantError, QuantFormat,
    QuantizedTensor, WeightShape, dequantize, quantize_gptq, quantize_rtn, reconstruction_error,
};
use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use andes_data::dataset::WindowSet;

mod grid;
pub use grid::{
    GRID_FILE, GRID_PLAN_FILE, grid_plan, has_grid, load_grid, load_scales, save_grid, save_scales,
};
mod tables;
pub use tables::{EMBEDDING_TABLE, HEAD_TABLE, quantized_tables, table_shapes};

use crate::batch::calibration_batches;
use crate::checkpoint::stable_param_id;
use crate::error::ModelError;
use crate::lora::{AdaptedLinear, LoraTarget};
use crate::qwen3::Qwen3ForCausalLM;

/// The post-training quantization method that sets the codes and grid: of a package, of
/// `andes eval --quant`, and of QALFT's starting point. Spelled `rtn` or `gptq` in recipes,
/// flags and manifests alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PtqMethod {
    /// Round to nearest on each group's own range.
    Rtn,
    /// GPTQ on the Hessians of calibration activations.
    Gptq,
}

impl PtqMethod {
    /// The name recipes, flags and manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rtn => "rtn",
            Self::Gptq => "gptq",
        }
    }
}

impl std::fmt::Display for PtqMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PtqMethod {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [Self::Rtn, Self::Gptq]
            .into_iter()
            .find(|method| method.name() == value)
            .ok_or_else(|| format!("found {value:?}, expected rtn or gptq"))
    }
}

/// What quantizing one linear gave.
#[derive(Debug, Clone, Serialize)]
pub struct LinearReport {
    /// Hugging Face module name.
    pub name: String,
    /// Its format.
    pub format: QuantFormat,
    /// Exact storage cost, scales and zero points included.
    pub bpw: BpwReport,
    /// Relative Frobenius error of the quantized weight against the float one.
    pub weight_error: f64,
}

/// The Hugging Face module name of `target` in layer `layer`.
pub fn linear_name(layer: usize, target: LoraTarget) -> String {
    format!("model.layers.{layer}.{}", target.module_path())
}

/// The names of every quantizable linear, in model order.
pub fn linear_names(model: &Qwen3ForCausalLM) -> Vec<String> {
    model
        .adapted_linears()
        .map(|(layer, target, _)| linear_name(layer, target))
        .collect()
}

/// Name and `[out, in]` shape of every quantizable linear, in model order, without
/// materialising any weight.
pub fn linear_shapes(model: &Qwen3ForCausalLM) -> Vec<(String, WeightShape)> {
    model
        .adapted_linears()
        .map(|(layer, target, linear)| {
            let [in_features, out_features] = linear.base_layer.weight.lazy_shape().dims::<2>();
            (
                linear_name(layer, target),
                WeightShape::new(out_features, in_features),
            )
        })
        .collect()
}

/// Calls `visit` on every quantizable linear with its name, in model order, stopping at the
/// first error.
fn try_for_each_linear<E>(
    model: &mut Qwen3ForCausalLM,
    mut visit: impl FnMut(String, &mut AdaptedLinear) -> Result<(), E>,
) -> Result<(), E> {
    for (layer, block) in model.model.layers.iter_mut().enumerate() {
        for target in LoraTarget::ALL {
            visit(linear_name(layer, target), target.of_mut(block))?;
        }
    }
    Ok(())
}

/// One calibration batch: token ids `[batch, seq]`, or input embeddings `[batch, seq,
/// hidden]` (an AndesVL sequence: token embeddings with its images' visual embeddings spliced
/// in, so the language model's linears see what they see on images).
#[derive(Debug, Clone)]
pub enum CalibrationInput {
    /// Token ids.
    Tokens(Tensor<2, Int>),
    /// Input embeddings.
    Embeddings(Tensor<3>),
}

/// The Hessian `Σ x xᵀ` of every linear's inputs over `inputs`, from the model as it is
/// (float, or already quantized). `model` itself is left untouched.
pub fn calibrate(
    model: &Qwen3ForCausalLM,
    inputs: &[CalibrationInput],
) -> Result<BTreeMap<String, Hessian>, ModelError> {
    calibrate_with(model, inputs, Hessian::new)
}

/// [`calibrate`] keeping only each Hessian's diagonal (enough for importance-weighted
/// sensitivities, not for GPTQ): `in` instead of `in²` work per token.
pub fn calibrate_diagonal(
    model: &Qwen3ForCausalLM,
    inputs: &[CalibrationInput],
) -> Result<BTreeMap<String, Hessian>, ModelError> {
    calibrate_with(model, inputs, Hessian::diagonal_only)
}

/// Token batches as calibration inputs.
pub fn token_inputs(batches: &[Tensor<2, Int>]) -> Vec<CalibrationInput> {
    batches
        .iter()
        .cloned()
        .map(CalibrationInput::Tokens)
        .collect()
}

fn calibrate_with(
    model: &Qwen3ForCausalLM,
    inputs: &[CalibrationInput],
    accumulator: fn(usize) -> Hessian,
) -> Result<BTreeMap<String, Hessian>, ModelError> {
    let mut probe = model.clone().valid();
    let mut taps = BTreeMap::new();
    try_for_each_linear(&mut probe, |name, linear| {
        let in_features = linear.base_layer.weight.lazy_shape().dims::<2>()[0];
        let tap = Arc::new(Mutex::new(Ok(accumulator(in_features))));
        linear.set_tap(Some(tap.clone()));
        taps.insert(name, tap);
        Ok::<_, ModelError>(())
    })?;
    let device: Device = probe.devices()[0].clone();
    for input in inputs {
        let embeddings = match input {
            CalibrationInput::Tokens(batch) => {
                probe.embed(Tensor::<2, Int>::from_data(batch.to_data(), &device))
            }
            CalibrationInput::Embeddings(embeddings) => {
                Tensor::<3>::from_data(embeddings.to_data(), &device)
            }
        };
        probe.forward_embeddings(embeddings, &mut probe.new_cache())?;
    }
    drop(probe);
    taps.into_iter()
        .map(|(name, tap)| {
            let moments = Arc::try_unwrap(tap)
                .expect("the probe model is gone")
                .into_inner()
                .expect("calibration tap poisoned");
            moments
                .map(|hessian| (name.clone(), hessian))
                .map_err(|source| ModelError::Quantization {
                    layer: name,
                    source,
                })
        })
        .collect()
}

/// Quantizes every linear `plan` names (it must name each exactly once) with `initializer`
/// (`hessians` from [`calibrate`] for GPTQ) and installs the fake-quant grid, its scales
/// trainable when `learn_scales`. Returns one report per linear, in model order.
///
/// Linears are independent, so they are quantized on every core (rayon), a chunk of as many
/// linears as there are threads at a time: only a chunk's weights are copied out at once.
pub fn quantize_base(
    model: &mut Qwen3ForCausalLM,
    plan: &BitPlan,
    plan_source: &str,
    initializer: PtqMethod,
    hessians: Option<&BTreeMap<String, Hessian>>,
    learn_scales: bool,
) -> Result<Vec<LinearReport>, ModelError> {
    let names = linear_names(model);
    let formats = plan
        .formats_for(&names, plan_source)
        .map_err(ModelError::Plan)?;
    let slots: Vec<(usize, LoraTarget)> = model
        .adapted_linears()
        .map(|(layer, target, _)| (layer, target))
        .collect();
    let mut reports = Vec::new();
    for chunk in slots.chunks(rayon::current_num_threads()) {
        let jobs: Vec<(String, Vec<f32>, WeightShape)> = chunk
            .iter()
            .map(|&(layer, target)| {
                let (weights, shape) = weight_rows(target.of_mut(&mut model.model.layers[layer]));
                (linear_name(layer, target), weights, shape)
            })
            .collect();
        let results: Vec<Result<(QuantizedTensor, Vec<f32>), ModelError>> = jobs
            .par_iter()
            .map(|(name, weights, shape)| {
                let fail = |source: QuantError| ModelError::Quantization {
                    layer: name.clone(),
                    source,
                };
                let format = formats[name];
                let quantized = match initializer {
                    PtqMethod::Rtn => quantize_rtn(weights, *shape, format),
                    PtqMethod::Gptq => {
                        let hessian = hessians.and_then(|h| h.get(name)).ok_or_else(|| {
                            fail(QuantError::NoCalibrationTokens {
                                in_features: shape.in_features,
                            })
                        })?;
                        quantize_gptq(weights, *shape, hessian, format, GptqOptions::default())
                    }
                }
                .map_err(fail)?;
                let dequantized = dequantize(&quantized);
                Ok((quantized, dequantized))
            })
            .collect();
        for (((layer, target), (name, weights, shape)), result) in
            chunk.iter().zip(jobs).zip(results)
        {
            let (quantized, dequantized) = result?;
            let linear = target.of_mut(&mut model.model.layers[*layer]);
            if initializer == PtqMethod::Gptq {
                set_weight_rows(linear, &dequantized, shape);
            }
            let device = linear.base_layer.weight.lazy_device();
            let mut quantizer = FakeQuantizer::from_grid(&quantized, &device, learn_scales);
            quantizer.scale.id = stable_param_id(&format!("{name}.quantizer.scale"));
            linear.quantizer = Some(quantizer);
            reports.push(LinearReport {
                format: formats[&name],
                bpw: quantized.bits_per_weight(),
                weight_error: reconstruction_error(&weights, &dequantized).map_err(|source| {
                    ModelError::Quantization {
                        layer: name.clone(),
                        source,
                    }
                })?,
                name,
            });
        }
    }
    Ok(reports)
}

/// The package form of every quantized linear (codes on its current, possibly trained, grid),
/// in model order.
pub fn quantized_linears(
    model: &Qwen3ForCausalLM,
) -> Result<Vec<(String, QuantizedTensor)>, ModelError> {
    model
        .adapted_linears()
        .filter_map(|(layer, target, linear)| {
            let quantizer = linear.quantizer.as_ref()?;
            let name = linear_name(layer, target);
            let (weights, shape) = weight_rows(linear);
            Some(
                quantizer
                    .quantize(&weights, shape)
                    .map(|q| (name.clone(), q))
                    .map_err(|source| ModelError::Quantization {
                        layer: name,
                        source,
                    }),
            )
        })
        .collect()
}

/// The latent base weight as `[out, in]` row-major f32 (the Hugging Face layout).
pub(crate) fn weight_rows(linear: &AdaptedLinear) -> (Vec<f32>, WeightShape) {
    matrix_rows(linear.base_layer.weight.val().transpose())
}

/// A matrix as row-major f32 values and its `[rows, cols]` shape.
pub(crate) fn matrix_rows(matrix: Tensor<2>) -> (Vec<f32>, WeightShape) {
    let [rows, cols] = matrix.dims();
    let values = matrix
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values");
    (values, WeightShape::new(rows, cols))
}

/// Replaces the latent base weight with `rows` (`[out, in]` row-major).
pub(crate) fn set_weight_rows(linear: &mut AdaptedLinear, rows: &[f32], shape: WeightShape) {
    let param = &mut linear.base_layer.weight;
    let weight = Tensor::<2>::from_data(
        TensorData::new(rows.to_vec(), [shape.out_features, shape.in_features]),
        &param.lazy_device(),
    )
    .transpose()
    .cast(param.val().dtype());
    set_value(param, weight);
}

/// Gives `param` a new value, keeping its id and gradient setting (so optimizer state and
/// freezing still apply).
fn set_value(param: &mut Param<Tensor<2>>, value: Tensor<2>) {
    let require_grad = param.val().is_require_grad();
    *param = param
        .clone()
        .map(|_| value.detach())
        .set_require_grad(require_grad);
}

/// Replaces every quantized linear's latent weight by its fake-quantized value and drops the
/// grid: the float model that computes exactly what the quantized one does, for tools that know
/// only float checkpoints (transformers + PEFT checking a QALFT adapter).
pub fn bake_quantized_weights(model: &mut Qwen3ForCausalLM) {
    try_for_each_linear(model, |_, linear| {
        if linear.quantizer.is_some() {
            let weight = linear.effective_weight();
            linear.quantizer = None;
            set_value(&mut linear.base_layer.weight, weight);
        }
        Ok::<_, ModelError>(())
    })
    .expect("baking cannot fail");
}

/// Which format each linear of the base takes.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseFormats {
    /// The same format for every linear (`int2-g64-asym`).
    Uniform(QuantFormat),
    /// A `bit_plan.json` (from `andes quantize`, or edited by hand).
    Plan(PathBuf),
}

/// How a float base becomes a quantized one: the formats, the PTQ method setting the codes
/// and grid, whether the grid's scales then train (LSQ), and how many calibration windows
/// give GPTQ its Hessians.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseQuantization {
    /// The formats.
    pub formats: BaseFormats,
    /// The PTQ method.
    pub method: PtqMethod,
    /// Whether the grid's scales train.
    pub learn_scales: bool,
    /// Calibration windows (the first of the set) GPTQ reads.
    pub calibration_windows: usize,
}

/// What quantizing the base cost and gave.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizationSummary {
    /// Bits per weight over the quantized linears, scales and zero points counted.
    pub bpw_linears: f64,
    /// Weights in the quantized linears.
    pub quantized_weights: u64,
    /// Each linear.
    pub layers: Vec<LinearReport>,
}

/// Quantizes `model`'s base per `quantization`, calibrating GPTQ on the first windows of
/// `calibration` in batches of `batch_size` (GPTQ without it fails naming the first linear).
pub fn quantize_base_with(
    model: &mut Qwen3ForCausalLM,
    quantization: &BaseQuantization,
    calibration: Option<&WindowSet>,
    batch_size: usize,
) -> Result<QuantizationSummary, ModelError> {
    let hessians = match (quantization.method, calibration) {
        (PtqMethod::Gptq, Some(set)) => Some(calibrate_windows(
            model,
            set,
            quantization.calibration_windows,
            batch_size,
        )?),
        _ => None,
    };
    quantize_base_by(model, quantization, hessians.as_ref())
}

/// The Hessians of `model`'s linears ([`calibrate`]) over the first `windows` windows of `set`,
/// in batches of `batch_size`.
pub fn calibrate_windows(
    model: &Qwen3ForCausalLM,
    set: &WindowSet,
    windows: usize,
    batch_size: usize,
) -> Result<BTreeMap<String, Hessian>, ModelError> {
    let device: Device = model.devices()[0].clone();
    let batches = calibration_batches(set, windows, batch_size, &device);
    calibrate(model, &token_inputs(&batches))
}

/// [`quantize_base_with`] given GPTQ's Hessians (of the float model, [`calibrate_windows`]),
/// so that a caller that needs them for something else too calibrates once.
pub fn quantize_base_by(
    model: &mut Qwen3ForCausalLM,
    quantization: &BaseQuantization,
    hessians: Option<&BTreeMap<String, Hessian>>,
) -> Result<QuantizationSummary, ModelError> {
    let (plan, source) = match &quantization.formats {
        BaseFormats::Plan(path) => (
            BitPlan::read(path).map_err(ModelError::Plan)?,
            path.display().to_string(),
        ),
        BaseFormats::Uniform(format) => (
            BitPlan::uniform(&linear_names(model), *format),
            format!("format {format}"),
        ),
    };
    let layers = quantize_base(
        model,
        &plan,
        &source,
        quantization.method,
        hessians,
        quantization.learn_scales,
    )?;
    let total: BpwReport = layers.iter().map(|l| l.bpw).sum();
    Ok(QuantizationSummary {
        bpw_linears: total.bpw,
        quantized_weights: total.weights,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::PtqMethod;

    #[test]
    fn ptq_method_reads_as_it_is_written_in_flags_and_recipes() {
        for method in [PtqMethod::Rtn, PtqMethod::Gptq] {
            assert_eq!(method.to_string().parse::<PtqMethod>(), Ok(method));
            let json = serde_json::to_string(&method).unwrap();
            assert_eq!(json, format!("\"{method}\""));
        }
        assert!(
            "awq"
                .parse::<PtqMethod>()
                .unwrap_err()
                .contains("rtn or gptq")
        );
    }
}
