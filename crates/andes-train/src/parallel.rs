//! Data parallelism over the devices of one host. A replica of the model on each device
//! takes its [`Shard`] of every step's micro-batches, in a thread of its own; the replicas'
//! gradients are then summed across devices, so each replica applies the same update and
//! they stay identical. The recipe fixes a step's examples (`batch_size × grad_accum`),
//! devices only split them: a run has the same losses on any number of devices and may
//! resume on a different number.

use std::thread;

use andes_model::device::DeviceSet;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{Device, Tensor};

use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::model::TrainModel;
use crate::objective::{Objective, Shard, StepFigures, StepOutput};
use crate::optim::{clip_factor, global_norm, scale_gradients};

/// One model replica and its optimizer per device, the first one's being the run's model
/// (evaluated and checkpointed).
pub struct Replicas {
    models: Vec<TrainModel>,
    optimizers: Vec<ModuleOptimizer>,
    /// The plain (non-autodiff) devices, where gradients live.
    devices: Vec<Device>,
    /// Whether gradients are summed with Burn's collective all-reduce.
    collective: bool,
}

/// What one optimizer step did.
pub struct StepReport {
    /// The step's figures, summed over the shards.
    pub figures: StepFigures,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Replicas {
    /// Copies `model` (on the first device of `set`) onto every other device, parameter ids
    /// kept, and gives each replica an optimizer from `optimizer_for`.
    pub fn new(
        model: TrainModel,
        set: &DeviceSet,
        optimizer_for: impl Fn(&TrainModel) -> Result<ModuleOptimizer, TrainError>,
    ) -> Result<Self, TrainError> {
        let mut models = vec![model];
        for device in &set.devices[1..] {
            models.push(models[0].clone().fork(&device.clone().autodiff()));
        }
        let optimizers = models.iter().map(optimizer_for).collect::<Result<_, _>>()?;
        Ok(Self {
            models,
            optimizers,
            devices: set.devices.clone(),
            collective: set.collective,
        })
    }

    /// The run's model: the first replica.
    pub fn model(&self) -> &TrainModel {
        &self.models[0]
    }

    /// The first replica's optimizer (all hold the same state).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optimizers[0]
    }

    /// Seeds every device's generator.
    pub fn seed(&self, seed: u64) {
        for device in &self.devices {
            device.clone().autodiff().seed(seed);
        }
    }

    /// One optimizer step: each replica computes its shard's gradients in its own thread,
    /// the gradients are summed across replicas and clipped to `max_norm`, and every
    /// replica takes the AdamW step at `lr`. `state` advances as a single-device step would.
    pub fn step(
        &mut self,
        objective: &dyn Objective,
        state: &mut TrainerState,
        step_seed: u64,
        lr: f64,
        max_norm: Option<f64>,
    ) -> Result<StepReport, TrainError> {
        let ranks = self.models.len();
        let outputs: Vec<(TrainerState, StepOutput)> = if ranks == 1 {
            let output = objective.step(&self.models[0], state, step_seed, Shard::WHOLE)?;
            vec![(state.clone(), output)]
        } else {
            thread::scope(|scope| {
                let workers: Vec<_> = self
                    .models
                    .iter()
                    .enumerate()
                    .map(|(rank, model)| {
                        let mut shard_state = state.clone();
                        scope.spawn(move || {
                            let shard = Shard { rank, ranks };
                            objective
                                .step(model, &mut shard_state, step_seed, shard)
                                .map(|output| (shard_state, output))
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|worker| worker.join().expect("a replica's thread panicked"))
                    .collect::<Result<Vec<_>, _>>()
            })?
        };
        let mut figures = StepFigures::default();
        let mut grads = Vec::with_capacity(ranks);
        for (shard_state, output) in outputs {
            // Every shard drew the whole step, so each advanced the data stream alike.
            *state = shard_state;
            figures = figures + output.figures;
            grads.push(output.grads);
        }
        self.sum_gradients(&mut grads);
        // The summed gradients are the same on every replica: one norm serves all.
        let grad_norm = global_norm(&self.models[0], &grads[0]);
        let clip = clip_factor(grad_norm, max_norm);
        let models = std::mem::take(&mut self.models);
        for ((model, optimizer), mut grads) in
            models.into_iter().zip(&mut self.optimizers).zip(grads)
        {
            if let Some(factor) = clip {
                scale_gradients(&model, &mut grads, factor);
            }
            self.models.push(optimizer.step(lr, model, grads));
        }
        Ok(StepReport { figures, grad_norm })
    }

    /// Replaces every replica's gradient of each parameter by the sum over replicas. A
    /// replica whose shard left a parameter without gradient (an image tower on a batch
    /// without images) contributes zeros, so every device joins every reduction.
    fn sum_gradients(&self, grads: &mut [GradientsParams]) {
        if grads.len() < 2 {
            return;
        }
        struct Sum<'a> {
            grads: &'a mut [GradientsParams],
            devices: &'a [Device],
            collective: bool,
        }
        impl ModuleVisitor for Sum<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let parts: Vec<Option<Tensor<D>>> = self
                    .grads
                    .iter_mut()
                    .map(|grads| grads.remove::<D>(param.id))
                    .collect();
                let Some(template) = parts.iter().flatten().next().cloned() else {
                    return;
                };
                let parts: Vec<Tensor<D>> = parts
                    .into_iter()
                    .zip(self.devices)
                    .map(|(part, device)| {
                        part.unwrap_or_else(|| template.zeros_like().to_device(device))
                    })
                    .collect();
                let summed = if self.collective {
                    // Burn's collective all-reduce (NCCL on CUDA): every device's call is
                    // issued before any is awaited.
                    let pending: Vec<_> = parts
                        .into_iter()
                        .map(|part| all_reduce(part, ReduceOperation::Sum, self.devices.to_vec()))
                        .collect();
                    pending.into_iter().map(|sum| sum.resolve()).collect()
                } else {
                    // Backends without collectives: gather on the first device, sum there,
                    // and copy the sum back to each.
                    let total = parts
                        .into_iter()
                        .map(|part| part.to_device(&self.devices[0]))
                        .reduce(|a, b| a + b)
                        .expect("at least two replicas");
                    self.devices
                        .iter()
                        .map(|device| total.clone().to_device(device))
                        .collect::<Vec<_>>()
                };
                for (grads, sum) in self.grads.iter_mut().zip(summed) {
                    grads.register(param.id, sum);
                }
            }
        }
        self.models[0].visit(&mut Sum {
            grads,
            devices: &self.devices,
            collective: self.collective,
        });
    }
}
