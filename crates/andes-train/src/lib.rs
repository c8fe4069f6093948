//! The andes trainer: one loop shared by every stage (AdamW, warmup + cosine, global-norm
//! clipping, gradient accumulation, freezing, atomic checkpoints with exact resume, metrics).
//!
//! A stage is an [`objective`]: `pretrain` (next-token loss on text), `sft` (loss on
//! assistant turns of conversations), `lora` (an adapter on the frozen float base) and `qalft`
//! (an adapter on the frozen, fake-quantized base, see [`adapters`]) share the next-token
//! loss; `mpo` (preference pairs) and `grpo` (sampled completions scored by a [`reward`]
//! function) score whole replies against a frozen reference model.
//!
//! Every stage but `mpo` trains data-parallel over several devices ([`parallel`]).

pub mod adamw_update;
pub mod adapters;
pub mod buckets;
pub mod bundle;
pub mod checkpoint;
pub mod error;
pub mod in_place_adamw;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod parallel;
pub mod plot;
mod qat;
pub mod recipe;
pub mod replayed_step;
pub mod reward;
pub mod schedule;
pub mod throughput;
pub mod trainer;

pub use error::TrainError;
pub use recipe::Recipe;
pub use trainer::{TrainOutcome, train};
