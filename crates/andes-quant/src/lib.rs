//! `andes-quant`: the numerics of weight quantization, with no knowledge of models and no
//! dependency on any other andes crate. Only [`FakeQuantizer`] touches Burn tensors.
//!
//! * [`QuantFormat`]: code width (int1..int8, ternary), granularity (per channel or groups of
//!   32/64/128), symmetry; named by strings like `int4-g128-sym`.
//! * [`dequantize_code`] / [`quantize_code`] / [`scale_to_f16`]: the one grid formula every
//!   consumer (fake-quant, package, runtime) must share bit for bit.
//! * [`FakeQuantizer`]: the same grid as Burn ops with straight-through and LSQ gradients, for
//!   quantization-aware training; its forward pass is bit for bit the package's dequantization.
//! * [`quantize_on_grid`]: codes for a grid chosen elsewhere (a trained one).
//! * [`pack`] / [`unpack`]: the byte layout of codes.
//! * [`quantize_rtn`] / [`dequantize`]: round-to-nearest quantization of a `[out, in]` matrix into
//!   a [`QuantizedTensor`] (packed codes, f16 scales, packed zero points).
//! * [`quantize_gptq`]: GPTQ, the same output from calibration data: errors are moved onto the
//!   columns not yet quantized, weighted by the layer's [`Hessian`].
//! * [`calibrated_low_rank`]: the rank-r correction of a quantization error weighted by the
//!   same Hessian, where an adapter on a quantized base starts.
//! * [`BitPlan`]: the format of every linear of a model, as `bit_plan.json`.
//! * [`bits_per_weight`]: exact storage cost, scales, zero points and padding included.
//! * [`reconstruction_error`]: relative Frobenius error, the yardstick of RTN and GPTQ.
//! * [`allocate`]: one format per linear under a bit budget, least total sensitivity.
//! * [`TargetProfile`]: what a device executes, for the planner and the cost model;
//!   [`estimate`]: that model (memory, decode and prefill bounds).
//!
//! Formats and layouts are specified in `docs/quant-formats.md`.

#![warn(missing_docs)]

mod allocate;
mod bpw;
mod cholesky;
mod cost;
mod error;
mod fake_quant;
mod format;
mod gptq;
mod grid;
mod hessian;
mod low_rank;
mod pack;
mod plan;
mod product;
mod reconstruction;
mod rtn;
mod target;
mod tensor;

pub use allocate::{Allocation, Choice, LayerChoices, allocate};
pub use bpw::{BpwReport, bits_per_weight};
pub use cost::{COST_FORMULAS, CostEstimate, ModelShape, PackedWeights, estimate};
pub use error::QuantError;
pub use fake_quant::FakeQuantizer;
pub use format::{Bits, Granularity, GroupSize, QuantFormat};
pub use gptq::{GptqOptions, quantize_gptq};
pub use grid::{dequantize_code, quantize_code, scale_to_f16};
pub use hessian::Hessian;
pub use low_rank::{LowRankFactors, calibrated_low_rank};
pub use pack::{pack, packed_len, unpack};
pub use plan::{BitPlan, PLAN_VERSION, PlanEntry};
pub use reconstruction::reconstruction_error;
pub use rtn::{quantize_on_grid, quantize_rtn};
pub use target::{
    AllowedFormat, Execution, FloatPrecision, KernelThroughput, Sourced, TableFormat,
    TargetProfile, Unquantized,
};
pub use tensor::{QuantizedTensor, WeightShape, dequantize};
