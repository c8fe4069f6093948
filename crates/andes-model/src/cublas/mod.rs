//! Matrix products through cuBLASLt on CUDA.
//!
//! Burn's CUDA backend runs every matrix product through CubeCL's own kernels, which on Hopper
//! reach 40–60 TFLOP/s in bf16 where cuBLAS reaches several hundred: on the Qwen3-0.6B
//! training step they were two thirds of the step's time (docs/backends.md). The patched
//! `burn-cubecl` (scripts/gpu/patches) lets an application install its own routine for the
//! eager product; this module installs cuBLASLt there. Forward and backward products go
//! through it alike, since Burn's autodiff expresses a product's gradients as products.
//!
//! The call is enqueued on the CUDA stream that owns the output's memory, the stream CubeCL
//! launches its kernels on, so it is ordered after the kernels that wrote the operands and
//! before those that read the result, with no host synchronisation. A product cuBLASLt cannot
//! express (a tiled or irregularly strided operand, a quantized one, a dtype pair it lacks)
//! returns to CubeCL's kernels, so installing the routine never changes what is computed,
//! only where.

#[cfg(feature = "cublas")]
mod launch;
mod layout;

#[cfg(feature = "cublas")]
pub use launch::install;
