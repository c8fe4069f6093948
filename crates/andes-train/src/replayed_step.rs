//! A single-device optimizer step captured once as a device graph and replayed every step.
//!
//! An eager step on a GPU is bound by the host: Burn records, differentiates and launches the
//! ~4,900 kernels of a Qwen3-0.6B step at about 34 µs each, longer than the GPU takes to run
//! them (BENCHMARKS.md, "A step replayed as one graph"). Here the whole step (every
//! micro-batch's forward and backward pass, the gradients' global norm and clipping, and
//! [`InPlaceAdamW`]'s update) is captured once with Burn's [`capture`], one CUDA graph on
//! cuda, and replayed: between replays the host only writes the step's windows, its learning
//! rate and each counted target's share of the loss into fixed buffers, and reads the step's
//! figures back.
//!
//! The capture runs the step four times (three warm-ups, then the recording; on a backend
//! without graphs all four execute) on the first step's windows at learning rate 0, which
//! leaves every parameter as it was; the optimizer's moments and update count are then put
//! back, so the first replay is the run's first step and a replayed run trains as an eager
//! one does.

use std::cell::{Ref, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use andes_model::Model;
use andes_model::batch::{Batch, HostBatch};
use andes_model::precision::Autocast;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{DType, Device, Graph, Tensor, capture};

use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::in_place_adamw::{HostState, InPlaceAdamW, write_in_place};
use crate::objective::{Replayable, SourceShare, StepFigures};
use crate::optim::squared_gradient_sums;
use crate::parallel::StepReport;
use crate::recipe::OptimizerSection;

/// The step as captured: it writes its figures into the buffers of one [`Figures`].
type Step = Box<dyn FnMut() -> Figures>;

/// The run's step, captured at its first call and replayed from then on.
pub struct ReplayedStep {
    objective: Arc<dyn Replayable>,
    shared: Rc<RefCell<Shared>>,
    graph: Option<Graph<Figures, Step>>,
    /// The device the model trains on (with autodiff), where the step's inputs are written.
    device: Device,
    /// The device beneath it, whose stream the graph is captured on.
    graph_device: Device,
    /// The products' dtype under mixed precision.
    autocast: Option<DType>,
    /// Clip the global gradient norm to this (`optimizer.grad_clip`).
    max_norm: Option<f64>,
    /// The optimizer state the first replay starts from, put back after the capture.
    start: HostState,
}

/// What the captured step reads and writes besides the graph's own scratch: the same
/// buffers at every replay.
struct Shared {
    /// The model; taken by each step and given back updated in place.
    model: Option<Model>,
    optimizer: InPlaceAdamW,
    /// One fixed batch per micro-batch of the step.
    batches: Vec<Batch>,
    /// `[1]`: one over the step's counted targets, so each micro-batch's summed loss times it
    /// is its share of the step's mean loss.
    target_share: Tensor<1>,
    /// The first error a captured run of the step met (a replay cannot return one).
    error: Option<TrainError>,
}

/// A step's figures on the device.
#[derive(Clone)]
struct Figures {
    /// `[micro-batches]`: each micro-batch's summed loss.
    losses: Tensor<1>,
    /// `[micro-batches × rows]`: each row's summed NLL.
    row_nll: Tensor<1>,
    /// `[1]`: the global gradient norm before clipping.
    grad_norm: Tensor<1>,
}

impl ReplayedStep {
    /// The step of `model` (on the autodiff `device`, over `graph_device`) under `objective`,
    /// AdamW per `section`, resuming the optimizer state saved at `resume_from` (a file of
    /// Burn's AdamW record or of [`HostState::save`]).
    pub fn new(
        model: Model,
        objective: Arc<dyn Replayable>,
        section: &OptimizerSection,
        (device, graph_device): (&Device, &Device),
        autocast: Option<DType>,
        resume_from: Option<&Path>,
    ) -> Result<Self, TrainError> {
        let start = resume_from
            .map(HostState::load)
            .transpose()?
            .unwrap_or_default();
        let optimizer = InPlaceAdamW::new(&model, section, device);
        Ok(Self {
            objective,
            shared: Rc::new(RefCell::new(Shared {
                model: Some(model),
                optimizer,
                batches: Vec::new(),
                target_share: Tensor::ones([1], device),
                error: None,
            })),
            graph: None,
            device: device.clone(),
            graph_device: graph_device.clone(),
            autocast,
            max_norm: section.grad_clip,
            start,
        })
    }

    /// The run's model.
    pub fn model(&self) -> Ref<'_, Model> {
        Ref::map(self.shared.borrow(), |shared| {
            shared.model.as_ref().expect("a failed step ends the run")
        })
    }

    /// Whether the step replays as a device graph (false: the backend has none, or no step was
    /// captured yet, and each replay runs the captured step again).
    pub fn on_device(&self) -> bool {
        self.graph.as_ref().is_some_and(|graph| graph.is_hardware())
    }

    /// The optimizer's state, as a checkpoint holds it.
    pub fn optimizer_state(&self) -> HostState {
        let shared = self.shared.borrow();
        let model = shared.model.as_ref().expect("a failed step ends the run");
        shared.optimizer.host_state(model)
    }

    /// One optimizer step at learning rate `lr` on the next windows from `state.data`
    /// (advancing it), captured first if this is the run's first.
    pub fn step(&mut self, state: &mut TrainerState, lr: f64) -> Result<StepReport, TrainError> {
        let drawn = self.objective.draw_batches(state)?;
        let step_tokens: usize = drawn.iter().map(|d| d.batch.target_tokens).sum();
        let (mut row_sources, mut row_tokens) = (Vec::new(), Vec::new());
        let mut batches = Vec::with_capacity(drawn.len());
        for drawn in drawn {
            row_sources.extend(drawn.row_sources);
            row_tokens.extend(drawn.row_tokens);
            batches.push(drawn.batch);
        }
        self.write_inputs(batches, step_tokens)?;
        if self.graph.is_none() {
            self.capture()?;
        }
        self.shared.borrow_mut().optimizer.set_learning_rate(lr);
        let graph = self.graph.as_mut().expect("captured above");
        // SAFETY: the step reads and writes the model's parameters, the optimizer's state, the
        // fixed batches and the target share, all owned by `shared`, which the graph's closure
        // keeps alive, and touched between replays only by same-stream writes of new inputs
        // and by reads; each replay is waited for (its figures are read back) before the next.
        let figures = unsafe { graph.replay() }.clone();
        if let Some(error) = self.shared.borrow_mut().error.take() {
            return Err(error);
        }
        let losses = figures.losses.into_data().convert::<f64>();
        let loss_sum: f64 = losses.try_to_vec::<f64>().expect("f64 losses").iter().sum();
        let mut sources = Vec::new();
        if self.objective.sources() > 1 {
            SourceShare::add_rows(
                &mut sources,
                self.objective.sources(),
                &row_sources,
                figures.row_nll,
                &row_tokens,
            );
        }
        Ok(StepReport {
            figures: StepFigures {
                loss: loss_sum / step_tokens.max(1) as f64,
                tokens: step_tokens,
                sources,
                ..StepFigures::default()
            },
            grad_norm: figures.grad_norm.into_scalar::<f64>(),
        })
    }

    /// Writes the step's windows and target share into the fixed buffers (made at the first
    /// step, from its windows).
    fn write_inputs(
        &mut self,
        batches: Vec<HostBatch>,
        step_tokens: usize,
    ) -> Result<(), TrainError> {
        let mut shared = self.shared.borrow_mut();
        let share = Tensor::from_floats([1.0 / step_tokens.max(1) as f32], &self.device);
        write_in_place(&mut shared.target_share, share, "the target share")?;
        if shared.batches.is_empty() {
            shared.batches = batches
                .into_iter()
                .map(|batch| batch.upload(&self.device))
                .collect();
            return Ok(());
        }
        for (fixed, batch) in shared.batches.iter_mut().zip(batches) {
            let new = batch.upload(&self.device);
            write_in_place(&mut fixed.inputs, new.inputs, "the step's input ids")?;
            write_in_place(&mut fixed.targets, new.targets, "the step's targets")?;
            write_in_place(&mut fixed.mask, new.mask, "the step's loss mask")?;
            fixed.target_tokens = new.target_tokens;
        }
        Ok(())
    }

    /// Captures the step at learning rate 0 (the capture's runs leave the parameters as they
    /// were), then puts the optimizer's moments and update count back to the run's start.
    fn capture(&mut self) -> Result<(), TrainError> {
        self.shared.borrow_mut().optimizer.set_learning_rate(0.0);
        let (shared, objective) = (self.shared.clone(), self.objective.clone());
        let (autocast, max_norm, device) = (self.autocast, self.max_norm, self.device.clone());
        let step: Step = Box::new(move || {
            let _autocast = Autocast::new(autocast);
            let mut shared = shared.borrow_mut();
            match shared.train(objective.as_ref(), max_norm) {
                Ok(figures) => figures,
                Err(error) => {
                    shared.error.get_or_insert(error);
                    Figures::zeros(&device)
                }
            }
        });
        // Captured on the device beneath autodiff: burn 0.22's autodiff backend does not
        // forward a capture, while every kernel of the step, backward included, runs on the
        // stream of the device underneath.
        self.graph = Some(capture(&self.graph_device, step));
        let mut shared = self.shared.borrow_mut();
        if let Some(error) = shared.error.take() {
            return Err(error);
        }
        let Shared {
            model, optimizer, ..
        } = &mut *shared;
        let model = model.as_ref().expect("the capture's steps succeeded");
        optimizer.restore(model, &std::mem::take(&mut self.start))
    }
}

impl Shared {
    /// One step: the micro-batches' gradients of the step's mean loss, their global norm,
    /// clipping to `max_norm` (torch's `clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`,
    /// computed on the device), and the update.
    fn train(
        &mut self,
        objective: &dyn Replayable,
        max_norm: Option<f64>,
    ) -> Result<Figures, TrainError> {
        let model = self.model.take().ok_or_else(|| {
            TrainError::Device("an earlier run of the captured step failed".into())
        })?;
        let mut accumulator = GradientsAccumulator::new();
        let (mut losses, mut row_nll) = (Vec::new(), Vec::new());
        for batch in &self.batches {
            let (loss, rows) = objective.batch_loss(&model, batch)?;
            let share = loss.clone() * self.target_share.clone();
            accumulator.accumulate(
                &model,
                GradientsParams::from_grads(share.backward(), &model),
            );
            losses.push(loss.detach());
            row_nll.push(rows.detach());
        }
        let grads = accumulator.grads();
        let grad_norm = match squared_gradient_sums(&model, &grads) {
            Some(sums) => sums.sum().sqrt(),
            None => Tensor::zeros([1], &self.target_share.device()),
        };
        self.model = Some(match max_norm {
            Some(max_norm) => {
                let factor = grad_norm
                    .clone()
                    .add_scalar(1e-6)
                    .recip()
                    .mul_scalar(max_norm)
                    .clamp_max(1.0);
                self.optimizer.scaled_step(model, grads, factor)?
            }
            None => self.optimizer.step(model, grads)?,
        });
        Ok(Figures {
            losses: Tensor::cat(losses, 0),
            row_nll: Tensor::cat(row_nll, 0),
            grad_norm,
        })
    }
}

impl Figures {
    /// The figures of a step that failed (its error is kept apart).
    fn zeros(device: &Device) -> Self {
        Self {
            losses: Tensor::zeros([1], device),
            row_nll: Tensor::zeros([1], device),
            grad_norm: Tensor::zeros([1], device),
        }
    }
}
