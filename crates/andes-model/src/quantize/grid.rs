//! A trained quantization grid on disk. QALFT checkpoints keep only the scales (the zero points
//! and formats follow again from quantizing the unchanged float base); a checkpoint of the
//! `qat` stage, whose latent weights move, keeps the whole grid: scales and zero points
//! ([`GRID_FILE`]) and the plan of formats ([`GRID_PLAN_FILE`]), so that resuming continues on
//! the same grid and `andes quantize --plan` packs exactly the codes training computed with.

use std::path::Path;

use andes_quant::{BitPlan, PLAN_VERSION, PlanEntry};
use burn::tensor::Tensor;

use super::{PtqMethod, linear_name, quantize_base, set_value, try_for_each_linear};
use crate::checkpoint::{SafetensorsShards, write_atomically};
use crate::error::ModelError;
use crate::qwen3::Qwen3ForCausalLM;

/// The grid's scales and zero points in a `qat` checkpoint.
pub const GRID_FILE: &str = "quant_grid.safetensors";
/// The grid's formats in a `qat` checkpoint, in the bit-plan format `andes quantize --plan`
/// reads.
pub const GRID_PLAN_FILE: &str = "bit_plan.json";

/// Name of the tensor holding `layer`'s grid scales.
fn scale_tensor_name(layer: &str) -> String {
    format!("{layer}.quantizer.scale")
}

/// Name of the tensor holding `layer`'s grid zero points.
fn zero_tensor_name(layer: &str) -> String {
    format!("{layer}.quantizer.zero")
}

/// Writes the scales of every quantized linear (`[out, groups]` f32, named
/// `<linear>.quantizer.scale`), with their zero points (`<linear>.quantizer.zero`) when
/// `with_zeros`, to a safetensors file, atomically.
fn write_grid_tensors(
    model: &Qwen3ForCausalLM,
    path: &Path,
    with_zeros: bool,
) -> Result<(), ModelError> {
    let mut tensors = Vec::new();
    for (layer, target, linear) in model.adapted_linears() {
        if let Some(quantizer) = &linear.quantizer {
            let name = linear_name(layer, target);
            let mut grid = vec![(scale_tensor_name(&name), quantizer.scale.val())];
            if with_zeros {
                grid.push((zero_tensor_name(&name), quantizer.zero.clone()));
            }
            for (tensor_name, tensor) in grid {
                let data = tensor.into_data().convert::<f32>();
                let shape = data.shape().as_slice().to_vec();
                let bytes: Vec<u8> = data
                    .as_slice::<f32>()
                    .expect("f32 grid")
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                tensors.push((tensor_name, shape, bytes));
            }
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|views| safetensors::serialize(views, None))
        .map_err(|e| ModelError::Safetensors {
            path: path.to_owned(),
            message: format!("{e:?}"),
        })?;
    write_atomically(path, &views)
}

/// Reads the grid [`write_grid_tensors`] wrote into the quantized linears of `model` (keeping
/// each scale parameter's id and gradient setting): the scales, and the zero points when
/// `with_zeros`. A missing or mis-shaped tensor is an error naming it.
fn read_grid_tensors(
    model: &mut Qwen3ForCausalLM,
    path: &Path,
    with_zeros: bool,
) -> Result<(), ModelError> {
    let mut file = SafetensorsShards::open_file(path)?;
    try_for_each_linear(model, |name, linear| {
        if let Some(quantizer) = linear.quantizer.as_mut() {
            let expected = quantizer.scale.lazy_shape().to_vec();
            let device = quantizer.scale.lazy_device();
            let data = file.read_f32(&scale_tensor_name(&name), &expected)?;
            set_value(&mut quantizer.scale, Tensor::from_data(data, &device));
            if with_zeros {
                let data = file.read_f32(&zero_tensor_name(&name), &expected)?;
                quantizer.zero = Tensor::from_data(data, &device);
            }
        }
        Ok(())
    })
}

/// Writes the scales of every quantized linear to a safetensors file: what a QALFT checkpoint
/// needs beyond the adapter when the scales train.
pub fn save_scales(model: &Qwen3ForCausalLM, path: &Path) -> Result<(), ModelError> {
    write_grid_tensors(model, path, false)
}

/// Loads the scales [`save_scales`] wrote into the quantized linears of `model`.
pub fn load_scales(model: &mut Qwen3ForCausalLM, path: &Path) -> Result<(), ModelError> {
    read_grid_tensors(model, path, false)
}

/// The plan of the formats `model`'s quantized linears are on, in model order.
pub fn grid_plan(model: &Qwen3ForCausalLM) -> BitPlan {
    BitPlan {
        version: PLAN_VERSION,
        target: None,
        budget_bpw: None,
        layers: model
            .adapted_linears()
            .filter_map(|(layer, target, linear)| {
                let quantizer = linear.quantizer.as_ref()?;
                Some(PlanEntry {
                    name: linear_name(layer, target),
                    format: quantizer.format(),
                    sensitivity: None,
                })
            })
            .collect(),
    }
}

/// Writes `model`'s whole grid into checkpoint directory `dir`: [`GRID_FILE`] and
/// [`GRID_PLAN_FILE`].
pub fn save_grid(model: &Qwen3ForCausalLM, dir: &Path) -> Result<(), ModelError> {
    write_grid_tensors(model, &dir.join(GRID_FILE), true)?;
    write_atomically(
        &dir.join(GRID_PLAN_FILE),
        grid_plan(model).to_json().as_bytes(),
    )
}

/// Whether checkpoint directory `dir` holds a trained grid ([`save_grid`]).
pub fn has_grid(dir: &Path) -> bool {
    dir.join(GRID_FILE).is_file() && dir.join(GRID_PLAN_FILE).is_file()
}

/// Installs the grid [`save_grid`] wrote in `dir` on `model` (whose latent weights are the
/// checkpoint's), scales trainable when `learn_scales`: the formats of its plan, then its
/// scales and zero points exactly. Returns the plan.
pub fn load_grid(
    model: &mut Qwen3ForCausalLM,
    dir: &Path,
    learn_scales: bool,
) -> Result<BitPlan, ModelError> {
    let plan_path = dir.join(GRID_PLAN_FILE);
    let plan = BitPlan::read(&plan_path).map_err(ModelError::Plan)?;
    // Rounding installs a grid of the right formats and shapes; the file then sets its values.
    quantize_base(
        model,
        &plan,
        &plan_path.display().to_string(),
        PtqMethod::Rtn,
        None,
        learn_scales,
    )?;
    read_grid_tensors(model, &dir.join(GRID_FILE), true)?;
    Ok(plan)
}
