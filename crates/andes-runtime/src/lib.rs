//! The andes reference runtime: runs a package (or a 1+N bundle, or a float checkpoint) on
//! the CPU straight from its packed codes, so that what a package's bytes cost at decoding
//! time is measured, with two of AndesVL's deployment levers: OKV-style KV-cache eviction
//! ([`kv`]) and speculative decoding ([`speculative`]).
//!
//! Layout: [`packed`] holds the products over packed codes (the SIMD layout is described
//! there), [`decoder`] Qwen3's blocks over them with LoRA updates beside (attention in
//! `attention`), [`load`] what reads packages, bundles and checkpoints, [`generate`] the
//! decoding loop and its measurements, [`throughput`] this CPU's bandwidth and kernel
//! throughput for the cost model.

mod attention;
pub mod decoder;
pub mod error;
pub mod generate;
pub mod int8_inputs;
pub mod kv;
pub mod load;
pub mod packed;
pub mod speculative;
mod team;
pub mod throughput;

pub use error::RuntimeError;
pub use generate::{
    RunReport, RunRequest, complete, generate, generate_with_draft, prompt_inputs, streaming_nll,
};
pub use kv::{KvBudget, KvFormat};
pub use load::{Runtime, Source};
pub use speculative::Speculation;
