//! Training throughput of a Qwen3 shape with random weights and tokens, as `andes bench
//! train` reports it beside PyTorch's step measured the same way (scripts/bench/train_peer.py):
//! forward, next-token loss, backward and the AdamW update of every parameter, at a given
//! precision.

use std::time::Instant;

use andes_model::loss::masked_next_token_nll;
use andes_model::precision::{Autocast, Precision, cast_parameters};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use andes_model::throughput::median;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::error::TrainError;
use crate::optim::adamw;
use crate::recipe::{OptimizerSection, training_device};

/// The shape of the timed steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainBench {
    /// Tokens a sequence.
    pub seq_len: usize,
    /// Sequences a step.
    pub batch: usize,
    /// Untimed steps first (their times are reported apart: the first pays for compilation).
    pub warmup: usize,
    /// Timed steps; the median is reported.
    pub steps: usize,
    /// Parameters, products and optimizer state.
    pub precision: Precision,
    /// Recompute memory-bound activations in the backward pass instead of keeping them
    /// (Burn's balanced gradient checkpointing): less memory, some more compute.
    pub activation_checkpointing: bool,
}

/// What the timed steps gave.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// `f32`, `bf16-mixed` or `bf16`.
    pub precision: Precision,
    /// Whether activations were recomputed in the backward pass.
    pub activation_checkpointing: bool,
    /// Tokens a sequence.
    pub seq_len: usize,
    /// Sequences a step.
    pub batch: usize,
    /// The model's parameters.
    pub params: usize,
    /// Seconds of each warm-up step, the first including kernel compilation.
    pub warmup_step_s: Vec<f64>,
    /// Median time of a timed step.
    pub step_ms_median: f64,
    /// Tokens trained per second.
    pub train_tokens_per_s: f64,
    /// Model FLOPs per second: `6·N·T` for the weights plus attention's `12·L·T²·d` per step
    /// (PaLM, appendix B); divided by the device's peak, the MFU.
    pub model_tflops_per_s: f64,
    /// Bytes the device pools hold after the timed steps; pools keep their pages, so this is
    /// the high-water mark of reservations (torch's `max_memory_reserved`).
    pub memory_reserved_bytes: Option<u64>,
    /// The last step's loss (every precision should give about the same).
    pub final_loss: f64,
}

/// Marks every float parameter as trained.
struct Trained;

impl ModuleMapper for Trained {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.set_require_grad(true)
    }
}

/// Trains a random model of `config` on `device` for `bench.warmup + bench.steps` steps of
/// one fixed batch of token windows.
pub fn train_throughput(
    config: &Qwen3Config,
    device: &Device,
    bench: TrainBench,
) -> Result<TrainReport, TrainError> {
    // Drawn as transformers initialises Qwen3 (so the losses compare with the peer's) and cast
    // to the precision's parameter dtype, every parameter trained.
    let device = training_device(device, bench.activation_checkpointing);
    let model = Qwen3ForCausalLM::new(config, &device)?.init_like_transformers(config);
    let mut model = cast_parameters(model, bench.precision.parameter_dtype()).map(&mut Trained);
    let section = OptimizerSection {
        lr: 1e-4,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: None,
    };
    let mut optimizer = adamw(&model, &section);
    let (rows, seq) = (bench.batch, bench.seq_len);
    let ids: Vec<i64> = (0..rows * (seq + 1))
        .map(|i| ((i * 7919 + 13) % config.vocab_size) as i64)
        .collect();
    let window = |offset: usize| -> Vec<i64> {
        (0..rows)
            .flat_map(|r| ids[r * (seq + 1) + offset..r * (seq + 1) + offset + seq].to_vec())
            .collect()
    };
    let inputs: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(window(0), [rows, seq]), &device);
    let targets: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(window(1), [rows, seq]), &device);
    let mask: Tensor<2, Bool> = Tensor::from_data(
        TensorData::new(vec![true; rows * seq], [rows, seq]),
        &device,
    );
    let (mut warmup_step_s, mut seconds, mut final_loss) = (Vec::new(), Vec::new(), 0.0);
    for step in 0..bench.warmup + bench.steps {
        let start = Instant::now();
        let loss = {
            let _autocast = Autocast::new(bench.precision.autocast());
            let hidden = model.forward_hidden(inputs.clone(), &mut model.new_cache())?;
            masked_next_token_nll(&model, hidden, targets.clone(), mask.clone())
                .div_scalar((rows * seq) as f64)
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-4, model, grads);
        // Waits for every queued kernel of the step, the optimizer updates included.
        device
            .sync()
            .map_err(|e| TrainError::Device(format!("{e:?}")))?;
        let elapsed = start.elapsed().as_secs_f64();
        if step < bench.warmup {
            warmup_step_s.push(elapsed);
        } else {
            seconds.push(elapsed);
        }
        if step + 1 == bench.warmup + bench.steps {
            final_loss = loss.into_scalar::<f64>();
        }
    }
    let time = median(&mut seconds);
    let tokens = (rows * seq) as f64;
    let params = model.num_params();
    let attention = 12.0
        * (config.num_hidden_layers * config.num_attention_heads * config.head_dim) as f64
        * seq as f64
        * tokens;
    Ok(TrainReport {
        precision: bench.precision,
        activation_checkpointing: bench.activation_checkpointing,
        seq_len: seq,
        batch: rows,
        params,
        warmup_step_s,
        step_ms_median: time * 1e3,
        train_tokens_per_s: tokens / time,
        model_tflops_per_s: (6.0 * params as f64 * tokens + attention) / time / 1e12,
        memory_reserved_bytes: device.memory_pool_usage().map(|u| u.bytes_reserved),
        final_loss,
    })
}
