//! `andes-quant`: the numerics of weight quantization, with no knowledge of models and no
//! dependency on Burn or on any other andes crate.
//!
//! * [`QuantFormat`]: code width (int1..int8, ternary), granularity (per channel or groups of
//!   32/64/128), symmetry; named by strings like `int4-g128-sym`.
//! * [`dequantize_code`] / [`quantize_code`] / [`scale_to_f16`]: the one grid formula every
//!   consumer (fake-quant, package, runtime) must share bit for bit.
//! * [`pack`] / [`unpack`]: the byte layout of codes.
//! * [`quantize_rtn`] / [`dequantize`]: round-to-nearest quantization of a `[out, in]` matrix into
//!   a [`QuantizedTensor`] (packed codes, f16 scales, packed zero points).
//! * [`quantize_gptq`]: GPTQ, the same output from calibration data: errors are moved onto the
//!   columns not yet quantized, weighted by the layer's [`Hessian`].
//! * [`bits_per_weight`]: exact storage cost, scales, zero points and padding included.
//! * [`reconstruction_error`]: relative Frobenius error, the yardstick of RTN and GPTQ.
//!
//! Formats and layouts are specified in `docs/quant-formats.md`.

#![warn(missing_docs)]

mod bpw;
mod cholesky;
mod error;
mod format;
mod gptq;
mod grid;
mod hessian;
mod pack;
mod reconstruction;
mod rtn;
mod tensor;

pub use bpw::{BpwReport, bits_per_weight};
pub use error::QuantError;
pub use format::{Bits, Granularity, GroupSize, QuantFormat};
pub use gptq::{GptqOptions, quantize_gptq};
pub use grid::{dequantize_code, quantize_code, scale_to_f16};
pub use hessian::Hessian;
pub use pack::{pack, packed_len, unpack};
pub use reconstruction::reconstruction_error;
pub use rtn::quantize_rtn;
pub use tensor::{QuantizedTensor, WeightShape, dequantize};
