//! The andes trainer: one loop shared by every stage (AdamW, warmup + cosine, global-norm
//! clipping, gradient accumulation, freezing, atomic checkpoints with exact resume, metrics).
//!
//! A stage is a loss over a batch; today `pretrain` (next-token loss on text), `sft` (loss on
//! assistant turns of conversations), `lora` (an adapter on the frozen float base) and `qalft`
//! (an adapter on the frozen, fake-quantized base, see [`adapters`]) share
//! [`loss::masked_next_token_nll`].

pub mod adapters;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod recipe;
pub mod schedule;
pub mod trainer;

pub use error::TrainError;
pub use recipe::Recipe;
pub use trainer::{TrainOutcome, train};
