//! Burn modules of the andes models and their Hugging Face checkpoint I/O.
//!
//! [`model`] loads either model a Hugging Face directory holds; [`qwen3`] is the language
//! model; [`checkpoint`] reads and writes the Hugging Face
//! directory layout; [`lora`] attaches named LoRA adapters and reads and writes them in the
//! PEFT layout; [`quantize`] puts the base linears on a fake-quant grid (QALFT); [`generate`]
//! decodes with a KV cache, [`replayed_decode`] greedily with one device graph a token.

pub mod andesvl;
pub mod batch;
pub mod checkpoint;
pub mod completion;
pub mod composed;
pub mod cublas;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod generate;
pub mod head_log_probs;
pub mod kv_cache;
pub mod lora;
pub mod loss;
pub mod model;
pub mod norm_rotation;
pub mod perplexity;
#[cfg(any(feature = "wgpu", feature = "cuda-untuned"))]
pub mod plane_rows;
pub mod precision;
pub mod projector;
pub mod quantize;
pub mod qwen3;
pub mod replayed_decode;
pub mod rms_norm;
pub mod rope;
pub mod rotation;
pub mod row_product;
pub mod sdpa;
pub mod sensitivity;
pub mod swiglu;
pub mod task;
#[cfg(test)]
pub(crate) mod test_tensors;
pub mod throughput;
pub mod vision;

pub use error::ModelError;
pub use model::{Model, ModelConfig};
