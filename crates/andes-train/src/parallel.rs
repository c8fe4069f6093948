//! Data parallelism over the devices of one host. A replica of the model on each device
//! takes its [`Shard`] of every step's micro-batches, in a thread of its own; the replicas'
//! gradients are then summed across devices, so each replica applies the same update and
//! they stay identical. The recipe fixes a step's examples (`batch_size × grad_accum`),
//! devices only split them: a run has the same losses on any number of devices and may
//! resume on a different number.

use std::collections::BTreeSet;
use std::sync::{Barrier, Mutex};
use std::thread;

use andes_model::device::DeviceSet;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{DType, Device, Tensor};
use burn_std::stream::StreamId;

use crate::buckets::{Bucket, from_buckets, into_buckets};
use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::in_place_adamw::{HostState, InPlaceAdamW};
use crate::objective::{Objective, Shard, StepFigures, StepOutput};
use crate::optim::{clip_factor, global_norm};
use crate::recipe::TrainSection;
use andes_model::Model;
use andes_model::precision::Autocast;

/// One model replica and its optimizer per device, the first one's being the run's model
/// (evaluated and checkpointed).
pub struct Replicas {
    models: Vec<Model>,
    optimizers: Vec<InPlaceAdamW>,
    /// The plain (non-autodiff) devices, where gradients live.
    devices: Vec<Device>,
    /// Whether gradients are summed with Burn's collective all-reduce.
    collective: bool,
    /// The stream each replica's work is queued on, fixed for the run. Burn's GPU backends
    /// key command queues and memory pools by stream, and a thread's default stream is
    /// minted afresh for every new thread: the per-step threads would otherwise open a new
    /// stream, with pools of its own, on every step (a 0.6B model ran out of an H200's
    /// 141 GB within six steps that way).
    streams: Vec<StreamId>,
    /// The products' dtype under mixed precision, set on every replica's thread for its step.
    autocast: Option<DType>,
    /// The size of a gradient bucket (`train.bucket_mb`).
    bucket_bytes: usize,
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
    /// kept, and gives each replica an optimizer from `optimizer_for` (called with the
    /// replica and its autodiff device).
    pub fn new(
        model: Model,
        set: &DeviceSet,
        train: &TrainSection,
        optimizer_for: impl Fn(&Model, &Device) -> Result<InPlaceAdamW, TrainError>,
    ) -> Result<Self, TrainError> {
        let mut models = vec![model];
        for device in &set.devices[1..] {
            models.push(models[0].clone().fork(&train.autodiff_device(device)));
        }
        let optimizers = models
            .iter()
            .zip(&set.devices)
            .map(|(model, device)| optimizer_for(model, &train.autodiff_device(device)))
            .collect::<Result<_, _>>()?;
        let streams = models.iter().map(|_| StreamId::allocate()).collect();
        Ok(Self {
            models,
            optimizers,
            devices: set.devices.clone(),
            collective: set.collective,
            streams,
            autocast: train.precision().autocast(),
            bucket_bytes: (train.bucket_mb * (1u64 << 20) as f64) as usize,
        })
    }

    /// The run's model: the first replica.
    pub fn model(&self) -> &Model {
        &self.models[0]
    }

    /// The optimizer's state, as a checkpoint holds it (every replica's is the same).
    pub fn optimizer_state(&self) -> HostState {
        self.optimizers[0].host_state(&self.models[0])
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
        // One replica is the case of one shard and no exchange (`collective` is false).
        let exchange = Exchange::new(
            ranks,
            self.collective.then_some(&self.devices[..]),
            self.bucket_bytes,
        );
        let shards: Vec<_> = self.models.iter().map(|m| (m, state.clone())).collect();
        let autocast = self.autocast;
        let results = on_replica_streams(&self.streams, shards, |rank, (model, mut state)| {
            let _autocast = Autocast::new(autocast);
            let output = objective.step(model, &mut state, step_seed, Shard { rank, ranks });
            exchange
                .all_reduce(model, output)
                .map(|output| (state, output))
        });
        // A replica that stopped because another failed reports nothing of its own.
        let mut outputs = Vec::with_capacity(ranks);
        let mut stopped = false;
        for result in results {
            match result {
                Ok(output) => outputs.push(output),
                Err(Some(error)) => return Err(error),
                Err(None) => stopped = true,
            }
        }
        assert!(!stopped, "a replica stopped though none failed");
        let mut figures = StepFigures::default();
        let mut grads = Vec::with_capacity(ranks);
        for (shard_state, output) in outputs {
            // Every shard drew the whole step, so each advanced the data stream alike.
            *state = shard_state;
            figures = figures + output.figures;
            grads.push(output.grads);
        }
        if ranks > 1 && !self.collective {
            self.sum_on_first_device(&mut grads);
        }
        // The summed gradients are the same on every replica: one norm serves all.
        let grad_norm = self.streams[0].executes(|| global_norm(&self.models[0], &grads[0]));
        let clip = clip_factor(grad_norm, max_norm);
        // Each replica's update runs on its own stream, the devices' updates side by side.
        let models = std::mem::take(&mut self.models);
        let updates: Vec<_> = models
            .into_iter()
            .zip(&mut self.optimizers)
            .zip(grads)
            .collect();
        let devices = &self.devices;
        self.models = on_replica_streams(
            &self.streams,
            updates,
            |rank, ((model, optimizer), grads)| {
                optimizer.set_learning_rate(lr);
                match clip {
                    Some(factor) => {
                        let factor = Tensor::from_floats([factor as f32], &devices[rank]);
                        optimizer.scaled_step(model, grads, factor)
                    }
                    None => optimizer.step(model, grads),
                }
            },
        )
        .into_iter()
        .collect::<Result<_, _>>()?;
        Ok(StepReport { figures, grad_norm })
    }

    /// Backends without collectives: replaces every replica's gradients by the sum over
    /// replicas, bucket by bucket ([`into_buckets`]): each bucket gathered on the first device,
    /// summed, and copied back to each.
    fn sum_on_first_device(&self, grads: &mut [GradientsParams]) {
        let model = &self.models[0];
        let with_gradients: BTreeSet<ParamId> = grads
            .iter()
            .flat_map(|grads| parameters_with_gradients(model, grads))
            .collect();
        let mut buckets: Vec<Vec<Bucket>> = grads
            .iter_mut()
            .map(|grads| into_buckets(model, grads, &with_gradients, self.bucket_bytes))
            .collect();
        for index in 0..buckets[0].len() {
            let total = buckets
                .iter()
                .map(|replica| replica[index].values.clone().to_device(&self.devices[0]))
                .reduce(|a, b| a + b)
                .expect("at least one replica");
            for (replica, device) in buckets.iter_mut().zip(&self.devices) {
                replica[index].values = total.clone().to_device(device);
            }
        }
        for (grads, replica) in grads.iter_mut().zip(buckets) {
            from_buckets(model, grads, replica);
        }
    }
}

/// What the replicas' threads share to sum their gradients with Burn's collective
/// all-reduce. Each thread drives its own device, as one process per GPU does in PyTorch:
/// a thread waiting on its device's reduction never holds up another device's launches.
struct Exchange<'a> {
    /// The devices of the collective; `None` where the backend has none (the sum is then
    /// taken on the first device after the threads end).
    devices: Option<&'a [Device]>,
    /// The size of a gradient bucket.
    bucket_bytes: usize,
    /// The parameters any replica has a gradient for, and whether any replica failed.
    shared: Mutex<(BTreeSet<ParamId>, bool)>,
    barrier: Barrier,
}

impl<'a> Exchange<'a> {
    fn new(ranks: usize, devices: Option<&'a [Device]>, bucket_bytes: usize) -> Self {
        Self {
            devices,
            bucket_bytes,
            shared: Mutex::new((BTreeSet::new(), false)),
            barrier: Barrier::new(ranks),
        }
    }

    /// Sums the gradients of `output` (this replica's step) with the other replicas'; a
    /// no-op without collectives. Every thread reduces the parameters that any replica has a
    /// gradient for, in buckets of about `bucket_bytes` from the last parameter to the first
    /// (one collective call a bucket), contributing zeros where its shard left one without (a
    /// vision tower on text-only rows), so every device joins every reduction alike. A
    /// failed step still meets the others at the barrier; then none reduces, and the others
    /// return `Err(None)`: stopped by another replica's error.
    fn all_reduce(
        &self,
        model: &Model,
        output: Result<StepOutput, TrainError>,
    ) -> Result<StepOutput, Option<TrainError>> {
        let Some(devices) = self.devices else {
            return output.map_err(Some);
        };
        {
            let mut shared = self.shared.lock().expect("no thread panics holding it");
            match &output {
                Ok(output) => shared
                    .0
                    .extend(parameters_with_gradients(model, &output.grads)),
                Err(_) => shared.1 = true,
            }
        }
        self.barrier.wait();
        let (with_gradients, failed) = self
            .shared
            .lock()
            .expect("no thread panics holding it")
            .clone();
        let mut output = output.map_err(Some)?;
        if failed {
            return Err(None);
        }
        let mut buckets =
            into_buckets(model, &mut output.grads, &with_gradients, self.bucket_bytes);
        for bucket in &mut buckets {
            let values = bucket.values.clone();
            bucket.values = all_reduce(values, ReduceOperation::Sum, devices.to_vec()).resolve();
        }
        from_buckets(model, &mut output.grads, buckets);
        Ok(output)
    }
}

/// Runs `work(rank, item)` for every replica's item, each in a thread of its own on that
/// replica's stream, and returns the results in replica order.
fn on_replica_streams<I: Send, T: Send>(
    streams: &[StreamId],
    items: Vec<I>,
    work: impl Fn(usize, I) -> T + Sync,
) -> Vec<T> {
    thread::scope(|scope| {
        let workers: Vec<_> = items
            .into_iter()
            .zip(streams)
            .enumerate()
            .map(|(rank, (item, stream))| {
                let work = &work;
                scope.spawn(move || stream.executes(|| work(rank, item)))
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a replica's thread panicked"))
            .collect()
    })
}

/// Ids of `module`'s parameters that have a gradient in `grads`.
fn parameters_with_gradients<M: Module>(module: &M, grads: &GradientsParams) -> Vec<ParamId> {
    struct Present<'a> {
        grads: &'a GradientsParams,
        ids: Vec<ParamId>,
    }
    impl ModuleVisitor for Present<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.grads.get::<D>(param.id).is_some() {
                self.ids.push(param.id);
            }
        }
    }
    let mut present = Present {
        grads,
        ids: Vec::new(),
    };
    module.visit(&mut present);
    present.ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_works_on_its_own_stream_at_every_step() {
        let streams: Vec<StreamId> = (0..3).map(|_| StreamId::allocate()).collect();
        for _step in 0..2 {
            let seen = on_replica_streams(&streams, vec![(); 3], |_, ()| StreamId::current());
            assert_eq!(seen, streams);
        }
    }
}
