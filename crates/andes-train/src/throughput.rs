//! Training throughput of a Qwen3 shape with random weights and tokens, as `andes bench
//! train` reports it beside PyTorch's step measured the same way (scripts/bench/train_peer.py):
//! forward, next-token loss, backward and the AdamW update of every parameter, at a given
//! precision.

use std::cell::RefCell;
use std::time::Instant;

use andes_model::loss::masked_next_token_nll;
use andes_model::precision::{Autocast, Precision, cast_parameters};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use andes_model::throughput::median;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData, capture};
use serde::Serialize;

use crate::error::TrainError;
use crate::in_place_adamw::InPlaceAdamW;
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
    /// Capture one step (forward, backward and [`InPlaceAdamW`]'s update) as a device graph
    /// and replay it, so the host launches one graph a step instead of every kernel;
    /// otherwise each step runs eagerly, as `andes train` does where it cannot replay.
    pub replay: bool,
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
    /// Where an eager step's wall time goes on the host (medians): a step whose recording
    /// phases add up to about its time, with little left to wait for, is bound by the host's
    /// launching of work, not by the device. `None` for replayed steps.
    pub host_ms: Option<StepPhases>,
    /// How the step was captured, where it replays as a device graph.
    pub replay: Option<Replay>,
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
    /// Every step's loss, warm-up steps first: a replayed run must learn as the eager one
    /// does from the same seeded start.
    pub losses: Vec<f64>,
}

/// A step captured once and replayed ([`TrainBench::replay`]).
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    /// Seconds to capture: burn runs the step three times to warm its kernels and allocator,
    /// then records it (those steps train, so the timed losses start three steps later).
    pub capture_s: f64,
    /// Whether the backend recorded a device graph; without one every replay runs the step
    /// again.
    pub on_device: bool,
}

/// Milliseconds of a step's phases on the host. The device runs each phase's kernels as the
/// host enqueues them, so only `wait` is time the host spends idle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepPhases {
    /// Recording the forward pass and the loss.
    pub forward: f64,
    /// Running the backward pass (enqueuing its kernels).
    pub backward: f64,
    /// The optimizer's update of every parameter.
    pub optimizer: f64,
    /// Waiting for the device to finish what was enqueued.
    pub wait: f64,
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
    // Seeded, so that every run starts from the same weights (an eager and a replayed run
    // compare loss for loss).
    let graph_device = device.clone();
    let device = training_device(device, bench.activation_checkpointing);
    device.seed(0);
    let model = Qwen3ForCausalLM::new(config, &device)?.init_like_transformers(config);
    let model = cast_parameters(model, bench.precision.parameter_dtype()).map(&mut Trained);
    let section = OptimizerSection {
        lr: 1e-4,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: None,
    };
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
    let loss_of = |model: &Qwen3ForCausalLM| -> Result<Tensor<1>, TrainError> {
        let _autocast = Autocast::new(bench.precision.autocast());
        let hidden = model.forward_hidden(inputs.clone(), &mut model.new_cache())?;
        Ok(
            masked_next_token_nll(model, hidden, targets.clone(), mask.clone())
                .div_scalar((rows * seq) as f64),
        )
    };
    let mut timing = Timing::default();
    let (model, replay) = if bench.replay {
        let (model, replay) = replayed_steps(
            model,
            &section,
            &loss_of,
            (&device, &graph_device),
            &bench,
            &mut timing,
        )?;
        (model, Some(replay))
    } else {
        let model = eager_steps(model, &section, &loss_of, &device, &bench, &mut timing)?;
        (model, None)
    };
    // A random model's next-token loss is never exactly 0: the steps ran out of memory.
    if timing.losses.first() == Some(&0.0) {
        return Err(TrainError::ComputedNothing);
    }
    let time = median(&mut timing.seconds);
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
        step_ms_median: time * 1e3,
        host_ms: timing.phases(),
        replay,
        warmup_step_s: timing.warmup_step_s,
        train_tokens_per_s: tokens / time,
        model_tflops_per_s: (6.0 * params as f64 * tokens + attention) / time / 1e12,
        memory_reserved_bytes: device.memory_pool_usage().map(|u| u.bytes_reserved),
        final_loss: timing.losses.last().copied().unwrap_or(f64::NAN),
        losses: timing.losses,
    })
}

/// Waits for every kernel queued on `device`.
fn sync(device: &Device) -> Result<(), TrainError> {
    device
        .sync()
        .map_err(|e| TrainError::Device(format!("{e:?}")))
}

/// `bench.warmup + bench.steps` eager steps with [`InPlaceAdamW`], as `andes train` takes
/// them, each timed by phase into `timing`.
fn eager_steps(
    mut model: Qwen3ForCausalLM,
    section: &OptimizerSection,
    loss_of: &impl Fn(&Qwen3ForCausalLM) -> Result<Tensor<1>, TrainError>,
    device: &Device,
    bench: &TrainBench,
    timing: &mut Timing,
) -> Result<Qwen3ForCausalLM, TrainError> {
    let mut optimizer = InPlaceAdamW::new(&model, section, device).copying_shared();
    for step in 0..bench.warmup + bench.steps {
        let start = Instant::now();
        let mut marks = [start; 4];
        let loss = loss_of(&model)?;
        marks[1] = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        marks[2] = Instant::now();
        model = optimizer.step(model, grads)?;
        marks[3] = Instant::now();
        // Waits for every queued kernel of the step, the optimizer updates included.
        sync(device)?;
        let end = Instant::now();
        let ends = [marks[1], marks[2], marks[3], end];
        let phases = std::array::from_fn(|i| (ends[i] - marks[i]).as_secs_f64() * 1e3);
        let loss = loss.into_scalar::<f64>();
        timing.record(
            step < bench.warmup,
            (end - start).as_secs_f64(),
            Some(phases),
            loss,
        );
    }
    Ok(model)
}

/// One step (forward, backward, [`InPlaceAdamW`]) captured on `devices.1`, the device beneath
/// the autodiff device `devices.0`, then replayed `bench.warmup + bench.steps` times into
/// `timing`.
fn replayed_steps(
    model: Qwen3ForCausalLM,
    section: &OptimizerSection,
    loss_of: &impl Fn(&Qwen3ForCausalLM) -> Result<Tensor<1>, TrainError>,
    (device, graph_device): (&Device, &Device),
    bench: &TrainBench,
    timing: &mut Timing,
) -> Result<(Qwen3ForCausalLM, Replay), TrainError> {
    let mut optimizer = InPlaceAdamW::new(&model, section, device);
    let state = RefCell::new((Some(model), None::<TrainError>));
    let mut train_step = |model: Qwen3ForCausalLM| -> Result<_, TrainError> {
        let loss = loss_of(&model)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        Ok((loss.detach(), optimizer.step(model, grads)?))
    };
    // A failed step keeps its error and leaves no model, so later runs do nothing.
    let step = || {
        let mut state = state.borrow_mut();
        let Some(model) = state.0.take() else {
            return Tensor::<1>::zeros([1], device);
        };
        match train_step(model) {
            Ok((loss, model)) => {
                state.0 = Some(model);
                loss
            }
            Err(error) => {
                state.1 = Some(error);
                Tensor::zeros([1], device)
            }
        }
    };
    let start = Instant::now();
    // Captured on the device itself: the autodiff device wrapping it records no graphs (burn
    // 0.22's autodiff backend does not forward the capture), while every kernel of the step,
    // backward included, runs on the stream of the device underneath.
    let mut graph = capture(graph_device, step);
    sync(device)?;
    let capture_s = start.elapsed().as_secs_f64();
    let on_device = graph.is_hardware();
    for step in 0..bench.warmup + bench.steps {
        let start = Instant::now();
        // SAFETY: the step reads and writes the model's parameters, the optimizer's state and
        // the fixed batch, all alive until the graph is dropped below and touched by nothing
        // else meanwhile; each replay is waited for before the next.
        let loss = unsafe { graph.replay() }.clone();
        let loss = loss.into_scalar::<f64>();
        timing.record(
            step < bench.warmup,
            start.elapsed().as_secs_f64(),
            None,
            loss,
        );
    }
    drop(graph);
    match state.into_inner() {
        (Some(model), None) => Ok((
            model,
            Replay {
                capture_s,
                on_device,
            },
        )),
        (_, error) => {
            Err(error
                .unwrap_or_else(|| TrainError::Device("the captured step lost the model".into())))
        }
    }
}

/// The steps' times and losses as they come.
#[derive(Default)]
struct Timing {
    warmup_step_s: Vec<f64>,
    seconds: Vec<f64>,
    /// Each timed step's [`StepPhases`], in their order, where the step ran eagerly.
    phases: Vec<[f64; 4]>,
    losses: Vec<f64>,
}

impl Timing {
    fn record(&mut self, warmup: bool, seconds: f64, phases: Option<[f64; 4]>, loss: f64) {
        self.losses.push(loss);
        if warmup {
            self.warmup_step_s.push(seconds);
            return;
        }
        self.seconds.push(seconds);
        self.phases.extend(phases);
    }

    /// The median of each phase, where the steps ran eagerly.
    fn phases(&self) -> Option<StepPhases> {
        if self.phases.is_empty() {
            return None;
        }
        let [forward, backward, optimizer, wait] = std::array::from_fn(|i| {
            median(&mut self.phases.iter().map(|p| p[i]).collect::<Vec<_>>())
        });
        Some(StepPhases {
            forward,
            backward,
            optimizer,
            wait,
        })
    }
}
