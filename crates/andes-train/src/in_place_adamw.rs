//! AdamW whose parameters, moments, step count and learning rate each stay in one device
//! buffer from step to step, so that a training step captured as a device graph
//! ([`burn::tensor::capture`], one CUDA graph on the cuda backend) replays its update.
//!
//! A captured graph replays its kernels against the buffers they touched while it was
//! recorded. Burn's AdamW hands each parameter and moment back as a new tensor, and takes the
//! step count (for the bias corrections) and the learning rate as host numbers, which a graph
//! would freeze at their recorded values. Here each new parameter and moment is written back
//! into its own buffer ([`crate::adamw_update`]: one kernel on CubeCL backends, elsewhere
//! `slice_assign` on a tensor held once, which writes in place), and the step count and
//! learning rate are one-element device tensors that every replay reads. The update
//! is torch's `AdamW` (Loshchilov & Hutter 2019, decoupled decay):
//!
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `p ← p·(1 − lr·λ) − lr·(m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)`,
//!
//! with `λ = 0` for norm scales and biases (the usual exclusion in GPT training).
//!
//! Every run steps with it, eager or replayed, on one device or on several (one per replica):
//! on the GPU the update is one kernel a parameter and writes in place, where Burn's AdamW
//! allocates every new parameter and moment. Its state is saved in the layout of Burn's AdamW
//! record (`{id}.momentum.moment_1`, …), so checkpoints written by Burn's AdamW (earlier runs)
//! resume too.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use andes_model::composed::{Form, form};
use burn::backend::Dispatch;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::kind::Basic;
use burn::tensor::{DType, Device, DispatchTensor, Tensor, TensorData};

use crate::adamw_update::{AdamWUpdate, Hyperparameters, composed_update};
use crate::error::TrainError;
use crate::optim::parameters_where;
use crate::recipe::OptimizerSection;

/// AdamW updating every trained parameter in its own buffer (see the module documentation).
pub struct InPlaceAdamW {
    /// Betas, epsilon, and the weight decay of the parameters that decay.
    hyper: Hyperparameters,
    /// Parameters updated without weight decay (norm scales and biases).
    no_decay: HashSet<ParamId>,
    /// Each parameter's first and second moments, in the parameter's shape.
    moments: HashMap<ParamId, [DispatchTensor; 2]>,
    /// `[1]`: updates done, counted on the device.
    step: Tensor<1>,
    /// `[1]`: the learning rate the next update uses.
    learning_rate: Tensor<1>,
    /// Whether a parameter or moment held elsewhere is updated into a new buffer (eager
    /// steps) rather than refused (a replayed graph, which would never read the new buffer).
    copies_shared: bool,
}

impl InPlaceAdamW {
    /// AdamW of `section`'s betas, epsilon and weight decay for the parameters of `module`,
    /// its state on `device`.
    pub fn new<M: Module>(module: &M, section: &OptimizerSection, device: &Device) -> Self {
        Self {
            hyper: Hyperparameters {
                beta1: section.beta1,
                beta2: section.beta2,
                eps: section.eps,
                weight_decay: section.weight_decay,
            },
            no_decay: parameters_where(module, |path| path.is_norm_scale() || path.is_bias())
                .into_iter()
                .collect(),
            moments: HashMap::new(),
            step: Tensor::zeros([1], device),
            learning_rate: Tensor::from_floats([section.lr as f32], device),
            copies_shared: false,
        }
    }

    /// The same optimizer for eager steps, which read every tensor afresh: a parameter held
    /// elsewhere too (a frozen reference model sharing the trained one's weights, as the
    /// reply-scoring stages start) keeps its value there, its update going to a new buffer,
    /// instead of being refused.
    pub fn copying_shared(mut self) -> Self {
        self.copies_shared = true;
        self
    }

    /// Sets the learning rate of the next updates, written into its device buffer (so a
    /// replayed graph reads it). Call it outside a capture: it uploads the value.
    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        let value = Tensor::from_floats([learning_rate as f32], &self.learning_rate.device());
        write_in_place(&mut self.learning_rate, value, "the learning rate")
            .expect("the optimizer alone holds its learning rate");
    }

    /// The state read back to the host: each parameter's moments, and the updates done.
    pub fn host_state<M: Module>(&self, module: &M) -> HostState {
        struct Read<'a> {
            moments: &'a HashMap<ParamId, [DispatchTensor; 2]>,
            read: HashMap<ParamId, [TensorData; 2]>,
        }
        impl ModuleVisitor for Read<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(pair) = self.moments.get(&param.id) {
                    let data = pair
                        .clone()
                        .map(|m| Tensor::<D>::from_dispatch(m).into_data());
                    self.read.insert(param.id, data);
                }
            }
        }
        let mut read = Read {
            moments: &self.moments,
            read: HashMap::new(),
        };
        module.visit(&mut read);
        HostState {
            moments: read.read,
            updates: self.step.clone().into_scalar::<f64>().round() as usize,
        }
    }

    /// Writes `state` into the optimizer's own buffers (a moment `state` lacks becomes zeros),
    /// so that a captured graph, which keeps reading those buffers, continues from it. A
    /// parameter of `module` without moments yet gets new buffers holding `state`'s.
    pub fn restore<M: Module>(&mut self, module: &M, state: &HostState) -> Result<(), TrainError> {
        struct Write<'a> {
            moments: &'a mut HashMap<ParamId, [DispatchTensor; 2]>,
            state: &'a HostState,
            error: Option<TrainError>,
        }
        impl ModuleVisitor for Write<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let saved = self.state.moments.get(&param.id);
                let Some(pair) = self.moments.remove(&param.id) else {
                    if let Some(saved) = saved {
                        // Moments live beside the parameter, outside autodiff.
                        let device = param.val().device();
                        let pair = saved.clone().map(|data| {
                            Tensor::<D>::from_data(data, &device)
                                .inner()
                                .into_dispatch()
                        });
                        self.moments.insert(param.id, pair);
                    }
                    return;
                };
                let [mut first, mut second] = pair.map(Tensor::<D>::from_dispatch);
                let value = |current: &Tensor<D>, index: usize| match saved {
                    Some(saved) => Tensor::<D>::from_data(saved[index].clone(), &current.device())
                        .cast(current.dtype()),
                    None => current.zeros_like(),
                };
                let (new_first, new_second) = (value(&first, 0), value(&second, 1));
                let written = write_in_place(&mut first, new_first, "a first moment")
                    .and_then(|()| write_in_place(&mut second, new_second, "a second moment"));
                if let Err(error) = written {
                    self.error.get_or_insert(error);
                }
                self.moments
                    .insert(param.id, [first.into_dispatch(), second.into_dispatch()]);
            }
        }
        let mut write = Write {
            moments: &mut self.moments,
            state,
            error: None,
        };
        module.visit(&mut write);
        if let Some(error) = write.error {
            return Err(error);
        }
        let updates = Tensor::from_floats([state.updates as f32], &self.step.device());
        write_in_place(&mut self.step, updates, "the step count")
    }

    /// One update of every parameter of `module` that `grads` holds a gradient for, each
    /// written into its own buffer. Fails, naming the tensor, where a parameter or moment is
    /// shared (a clone kept elsewhere), since its update would then land in a new buffer that
    /// a replayed graph never reads.
    pub fn step<M: Module>(&mut self, module: M, grads: GradientsParams) -> Result<M, TrainError> {
        let unscaled = Tensor::ones([1], &self.learning_rate.device());
        self.scaled_step(module, grads, unscaled)
    }

    /// [`InPlaceAdamW::step`] with every gradient first multiplied by `gradient_scale`
    /// (`[1]` on the device: clipping's factor), inside the update's kernel, where scaling
    /// the gradients beforehand read and wrote each once more (2.5 ms of the replayed 0.6B
    /// step on an H100).
    pub fn scaled_step<M: Module>(
        &mut self,
        module: M,
        mut grads: GradientsParams,
        gradient_scale: Tensor<1>,
    ) -> Result<M, TrainError> {
        let next = self.step.clone().add_scalar(1.0);
        write_in_place(&mut self.step, next, "the step count")?;
        // 1 − βᵗ = 1 − exp(t·ln β), on the device.
        let correction = |beta: f64| {
            self.step
                .clone()
                .mul_scalar(beta.ln())
                .exp()
                .neg()
                .add_scalar(1.0)
        };
        let mut update = Update {
            hyper: self.hyper,
            factors: Tensor::cat(
                vec![
                    self.learning_rate.clone(),
                    correction(self.hyper.beta1),
                    correction(self.hyper.beta2),
                    gradient_scale.cast(self.learning_rate.dtype()),
                ],
                0,
            )
            .cast(DType::F32)
            .inner(),
            no_decay: &self.no_decay,
            moments: &mut self.moments,
            grads: &mut grads,
            copies_shared: self.copies_shared,
            error: None,
        };
        let module = module.map(&mut update);
        match update.error {
            Some(error) => Err(error),
            None => Ok(module),
        }
    }
}

/// The module mapper that updates each parameter with a gradient.
struct Update<'a> {
    hyper: Hyperparameters,
    /// `[4]`, f32, on the device: the learning rate, the bias corrections `1 − β₁ᵗ`,
    /// `1 − β₂ᵗ` of this step, and the gradients' scale.
    factors: Tensor<1>,
    no_decay: &'a HashSet<ParamId>,
    moments: &'a mut HashMap<ParamId, [DispatchTensor; 2]>,
    grads: &'a mut GradientsParams,
    /// See [`InPlaceAdamW::copying_shared`].
    copies_shared: bool,
    /// The first parameter or moment that could not be written in place.
    error: Option<TrainError>,
}

impl ModuleMapper for Update<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let checkpointing = tensor.gradient_checkpointing_strategy();
        let value = tensor.inner();
        let [first, second] = match self.moments.remove(&id) {
            Some([first, second]) => [
                Tensor::<D>::from_dispatch(first),
                Tensor::from_dispatch(second),
            ],
            None => [value.zeros_like(), value.zeros_like()],
        };
        let hyper = Hyperparameters {
            weight_decay: match self.no_decay.contains(&id) {
                true => 0.0,
                false => self.hyper.weight_decay,
            },
            ..self.hyper
        };
        if !self.copies_shared {
            let held_once = [
                (value.can_mut(), "a parameter"),
                (first.can_mut(), "a first moment"),
                (second.can_mut(), "a second moment"),
            ];
            if let Some((_, what)) = held_once.iter().find(|(once, _)| !once) {
                self.error.get_or_insert(held_twice(what, &value.dims()));
            }
        }
        let (value, grad, first, second, factors) = (
            value.into_dispatch(),
            grad.into_dispatch(),
            first.into_dispatch(),
            second.into_dispatch(),
            self.factors.clone().into_dispatch(),
        );
        let (new_value, new_first, new_second) = match form("ANDES_ADAMW", Form::OneOperation) {
            Form::OneOperation => <Dispatch as AdamWUpdate>::adamw_update(
                value,
                grad,
                first,
                second,
                factors,
                hyper.beta1,
                hyper.beta2,
                hyper.eps,
                hyper.weight_decay,
            ),
            Form::Composed => {
                composed_update::<Dispatch>(value, grad, first, second, factors, hyper)
            }
        };
        self.moments.insert(id, [new_first, new_second]);
        let mut value = Tensor::from_inner(Tensor::<D>::from_dispatch(new_value));
        if let Some(strategy) = checkpointing {
            value = value.with_gradient_checkpointing_strategy(strategy);
        }
        if require_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Writes `value` into `target`'s own buffer. Fails, naming `what`, where another handle to
/// that buffer exists: the write would then go to a copy.
pub(crate) fn write_in_place<const D: usize, K: Basic>(
    target: &mut Tensor<D, K>,
    value: Tensor<D, K>,
    what: &str,
) -> Result<(), TrainError> {
    if !target.can_mut() {
        return Err(held_twice(what, &target.dims()));
    }
    let whole = target.dims().map(|size| 0..size);
    target.inplace(|target| target.slice_assign(whole, value));
    Ok(())
}

/// The error of a buffer that cannot be written in place: `what`, of `shape`, has another
/// handle, so its update would go to a copy that a replayed graph never reads.
fn held_twice(what: &str, shape: &[usize]) -> TrainError {
    TrainError::Device(format!(
        "{what} of shape {shape:?} is held twice, so its update cannot be written in place"
    ))
}

/// [`InPlaceAdamW`]'s state on the host: what a checkpoint holds.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    /// Each parameter's first and second moments.
    moments: HashMap<ParamId, [TensorData; 2]>,
    /// Updates done (every parameter takes each one).
    updates: usize,
}

/// Record names of Burn's AdamW state (`AdamWState { momentum: AdaptiveMomentumState }`),
/// under each parameter's id.
const MOMENT_LEAVES: [&str; 2] = ["momentum.moment_1", "momentum.moment_2"];
const TIME_LEAF: &str = "momentum.time";
const RANK_LEAF: &str = "__rank";

impl HostState {
    /// Writes the state to `path` as Burn writes its AdamW record (a burnpack of
    /// `{id}.momentum.moment_1`, `{id}.momentum.moment_2`, `{id}.momentum.time` and
    /// `{id}.__rank`), which `ModuleOptimizer::load` reads back. Consumes the state: the
    /// moments' bytes go to the file without another copy.
    pub fn save(self, path: &Path) -> Result<(), TrainError> {
        let mut tensors = Vec::new();
        let mut scalars = Vec::new();
        for (id, pair) in self.moments {
            let id = id.val();
            let rank = pair[0].shape().len();
            scalars.push((format!("{id}.{RANK_LEAF}"), burn_pack::Scalar::from(rank)));
            for (leaf, data) in MOMENT_LEAVES.iter().zip(pair) {
                let (bytes, shape, dtype) = data.into_parts();
                tensors.push(burn_pack::Tensor::new(
                    format!("{id}.{leaf}"),
                    dtype,
                    shape,
                    Some(id),
                    bytes,
                ));
            }
            scalars.push((
                format!("{id}.{TIME_LEAF}"),
                burn_pack::Scalar::from(self.updates),
            ));
        }
        let writer = scalars
            .iter()
            .fold(burn_pack::Writer::new(tensors), |writer, (key, value)| {
                writer.with_scalar(key, *value)
            });
        writer
            .write_to_file(path)
            .map_err(|e| TrainError::io(path, format!("{e:?}")))
    }

    /// Reads a state [`HostState::save`] or Burn's AdamW wrote. Fails, naming the file, where
    /// a parameter's record lacks a moment or its update count.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let broken = |message: String| TrainError::Checkpoint {
            path: path.to_owned(),
            message,
        };
        let reader = burn_pack::Reader::from_file(path)
            .map_err(|e| TrainError::io(path, format!("{e:?}")))?;
        let mut updates = None;
        for (key, value) in reader.scalars() {
            if key.ends_with(TIME_LEAF) {
                let time = usize::try_from(*value)
                    .map_err(|_| broken(format!("`{key}` is not an update count")))?;
                updates = Some(updates.unwrap_or(0).max(time));
            }
        }
        let mut halves: HashMap<ParamId, [Option<TensorData>; 2]> = HashMap::new();
        let tensors = reader
            .into_tensors()
            .map_err(|e| TrainError::io(path, format!("{e:?}")))?;
        for tensor in tensors {
            let (name, dtype, shape, id, bytes) = tensor
                .into_parts()
                .map_err(|e| TrainError::io(path, format!("{e:?}")))?;
            let (Some(id), Some(index)) = (
                id,
                MOMENT_LEAVES.iter().position(|leaf| name.ends_with(leaf)),
            ) else {
                return Err(broken(format!(
                    "tensor `{name}` is not an AdamW moment of a parameter"
                )));
            };
            halves.entry(ParamId::from(id)).or_default()[index] =
                Some(TensorData::from_bytes(bytes, shape, dtype));
        }
        let moments = halves
            .into_iter()
            .map(|(id, [first, second])| match (first, second) {
                (Some(first), Some(second)) => Ok((id, [first, second])),
                _ => Err(broken(format!(
                    "parameter {} has one AdamW moment of two",
                    id.val()
                ))),
            })
            .collect::<Result<HashMap<_, _>, _>>()?;
        let updates = match (updates, moments.is_empty()) {
            (Some(updates), _) => updates,
            (None, true) => 0,
            (None, false) => {
                return Err(broken(format!(
                    "no `{{id}}.{TIME_LEAF}` beside the moments"
                )));
            }
        };
        Ok(Self { moments, updates })
    }
}

#[cfg(test)]
mod tests {
    use andes_model::checkpoint::load_qwen3;
    use andes_model::loss::masked_next_token_nll;
    use andes_model::qwen3::Qwen3ForCausalLM;
    use burn::module::ModuleVisitor;
    use burn::tensor::{Bool, DType, Int, TensorData};

    use super::*;
    use crate::optim::parameters_where;
    use burn::module::ParamGroup;
    use burn::optim::{AdamWConfig, ModuleOptimizer};

    /// Burn's AdamW with the same groups (weight decay 0 for norm scales and biases): the
    /// reference the updates are checked against.
    fn adamw<M: Module>(module: &M, section: &OptimizerSection) -> ModuleOptimizer {
        let config = |weight_decay: f64| {
            AdamWConfig::new()
                .with_beta_1(section.beta1 as f32)
                .with_beta_2(section.beta2 as f32)
                .with_epsilon(section.eps as f32)
                .with_weight_decay(weight_decay as f32)
        };
        let no_decay = parameters_where(module, |path| path.is_norm_scale() || path.is_bias());
        config(section.weight_decay).init().with_group(
            ParamGroup::from_ids(no_decay),
            config(0.0).build(),
            None,
        )
    }

    fn model(device: &Device) -> Qwen3ForCausalLM {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/qwen3-tiny-untied-mha-f32");
        load_qwen3(&dir, device, DType::F32).unwrap().1
    }

    fn grads(model: &Qwen3ForCausalLM, device: &Device) -> GradientsParams {
        let ids: Vec<i64> = (0..24).map(|i| (i * 37 + 5) % 500).collect();
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(ids[..12].to_vec(), [1, 12]), device);
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(ids[12..].to_vec(), [1, 12]), device);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 12], [1, 12]), device);
        let hidden = model
            .forward_hidden(tokens, &mut model.new_cache())
            .unwrap();
        let loss = masked_next_token_nll(model, hidden, targets, mask);
        GradientsParams::from_grads(loss.backward(), model)
    }

    /// Every float parameter's values, in visiting order.
    fn values(model: &Qwen3ForCausalLM) -> Vec<Vec<f32>> {
        struct Values(Vec<Vec<f32>>);
        impl ModuleVisitor for Values {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(
                    param
                        .val()
                        .into_data()
                        .convert::<f32>()
                        .try_to_vec()
                        .unwrap(),
                );
            }
        }
        let mut values = Values(Vec::new());
        model.visit(&mut values);
        values.0
    }

    fn section() -> OptimizerSection {
        OptimizerSection {
            lr: 1e-3,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: None,
        }
    }

    /// A step whose gradients are scaled inside the update (clipping's factor, here 0.25)
    /// lands where Burn's AdamW puts the same gradients multiplied by 0.25 beforehand; with
    /// ε as large as the gradients, since Adam's update is otherwise blind to their scale.
    #[test]
    fn a_scaled_step_is_burns_step_on_the_scaled_gradients() {
        struct Scale<'a>(&'a mut GradientsParams);
        impl ModuleVisitor for Scale<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(grad) = self.0.remove::<D>(param.id) {
                    self.0.register(param.id, grad.mul_scalar(0.25));
                }
            }
        }
        let device = Device::flex().autodiff();
        let section = OptimizerSection {
            eps: 1e-2,
            ..section()
        };
        let (mut theirs, mut ours) = (model(&device), model(&device));
        let mut reference = adamw(&theirs, &section);
        let mut in_place = InPlaceAdamW::new(&ours, &section, &device);
        for step in 0..2 {
            let mut grads_theirs = grads(&theirs, &device);
            theirs.visit(&mut Scale(&mut grads_theirs));
            theirs = reference.step(1e-3, theirs, grads_theirs);
            let grads_ours = grads(&ours, &device);
            let quarter = Tensor::from_floats([0.25], &device);
            ours = in_place.scaled_step(ours, grads_ours, quarter).unwrap();
            for (i, (a, b)) in values(&theirs).iter().zip(values(&ours)).enumerate() {
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() < 2e-6,
                        "step {step}, parameter {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    /// Three updates land where Burn's AdamW (an implementation independent of this one) puts
    /// them, decay groups included, and move every parameter by about the learning rate.
    #[test]
    fn updates_match_burns_adamw_step_for_step() {
        let device = Device::flex().autodiff();
        let start = values(&model(&device));
        let (mut theirs, mut ours) = (model(&device), model(&device));
        let mut reference = adamw(&theirs, &section());
        let mut in_place = InPlaceAdamW::new(&ours, &section(), &device);
        for step in 0..3 {
            let grads_theirs = grads(&theirs, &device);
            theirs = reference.step(1e-3, theirs, grads_theirs);
            let grads_ours = grads(&ours, &device);
            ours = in_place.step(ours, grads_ours).unwrap();
            for (i, (a, b)) in values(&theirs).iter().zip(values(&ours)).enumerate() {
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() < 2e-6,
                        "step {step}, parameter {i}: {x} vs {y}"
                    );
                }
            }
        }
        for (i, (before, after)) in start.iter().zip(values(&ours)).enumerate() {
            let moved = before
                .iter()
                .zip(&after)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            // Adam moves each weight by at most about lr a step.
            assert!(moved > 1e-4 && moved < 4e-3, "parameter {i} moved {moved}");
        }
    }

    /// A learning rate set between steps is the one the next update reads from the device:
    /// Adam's first step moves each weight by about the learning rate, so doubling it doubles
    /// the largest move.
    #[test]
    fn a_new_learning_rate_reaches_the_next_update() {
        let device = Device::flex().autodiff();
        let largest_move = |learning_rate: Option<f64>| {
            let model = model(&device);
            let start = values(&model);
            let mut in_place = InPlaceAdamW::new(&model, &section(), &device);
            if let Some(learning_rate) = learning_rate {
                in_place.set_learning_rate(learning_rate);
            }
            let grads = grads(&model, &device);
            let moved = values(&in_place.step(model, grads).unwrap());
            start
                .iter()
                .flatten()
                .zip(moved.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        let (base, doubled) = (largest_move(None), largest_move(Some(2e-3)));
        assert!((doubled / base - 2.0).abs() < 0.05, "{base} then {doubled}");
    }

    /// A parameter held elsewhere too cannot be updated in place, and the error says so.
    #[test]
    fn a_parameter_held_twice_is_refused() {
        let device = Device::flex().autodiff();
        let model = model(&device);
        let kept = model.clone();
        let grads = grads(&model, &device);
        let mut in_place = InPlaceAdamW::new(&model, &section(), &device);
        let error = in_place.step(model, grads).err().unwrap();
        assert!(error.to_string().contains("held twice"), "{error}");
        drop(kept);
    }

    /// For eager steps, a model that shares its weights (a reference model cloned from it)
    /// keeps them, and the trained one takes the same update it takes alone.
    #[test]
    fn copying_shared_parameters_leaves_their_other_holder_unchanged() {
        let device = Device::flex().autodiff();
        let alone = model(&device);
        let grads_alone = grads(&alone, &device);
        let mut optimizer = InPlaceAdamW::new(&alone, &section(), &device);
        let expected = values(&optimizer.step(alone, grads_alone).unwrap());

        let shared = model(&device);
        let reference = shared.clone();
        let before = values(&reference);
        let grads_shared = grads(&shared, &device);
        let mut optimizer = InPlaceAdamW::new(&shared, &section(), &device).copying_shared();
        let updated = values(&optimizer.step(shared, grads_shared).unwrap());
        assert_eq!(values(&reference), before, "the reference model moved");
        assert_eq!(updated, expected);
        assert_ne!(updated, before);
    }
}
