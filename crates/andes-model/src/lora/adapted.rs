//! One projection with its LoRA adapters: `W·x` plus, when an adapter is active,
//! `(alpha / rank) · B·A·dropout(x)`, where `W` runs through fake quantization when the base is
//! quantized (QALFT).

use std::sync::{Arc, Mutex};

use crate::row_product::linear_rows;
use andes_quant::{FakeQuantizer, Hessian, QuantError};
use burn::module::{Module, Param, ParamId};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::Tensor;

use super::LoraConfig;

/// One LoRA adapter of one projection: `(alpha / rank) · B·A·dropout(x)`.
///
/// A and B are stored as Burn `Linear`s (bias-free), so their weights are in Burn's `[in, out]`
/// layout: `lora_a.weight` is `[in, rank]` and `lora_b.weight` is `[rank, out]`, the transposes
/// of PEFT's `lora_A.weight` `[rank, in]` and `lora_B.weight` `[out, rank]`.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// The adapter's name, shared by its pieces on every projection (`"default"`, `"ocr"`).
    pub name: String,
    /// A, the down-projection: weight `[in, rank]`.
    pub lora_a: Linear,
    /// B, the up-projection: weight `[rank, out]`.
    pub lora_b: Linear,
    /// The scale numerator; the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input, active only while training (autodiff device, not
    /// `valid()`), as PEFT's `lora_dropout`.
    pub dropout: Dropout,
}

impl LoraLinear {
    /// A new adapter for a base projection of `[d_in, d_out]` with PEFT's initialisation:
    /// A kaiming-uniform with a = √5 (torch's `nn.Linear` default, bound `1/√d_in`), B zero,
    /// so the adapter starts as the identity on the model's output. The factors are built on
    /// `base`'s device and in its dtype; `ids` are the parameter ids of A and B.
    pub fn init(name: &str, base: &Linear, config: &LoraConfig, ids: [ParamId; 2]) -> Self {
        let [d_in, d_out] = base.weight.lazy_shape().dims();
        let device = base.weight.lazy_device();
        let dtype = base.weight.val().dtype();
        let rank = config.rank;
        // Burn's `LinearConfig` default: gain 1/√3, so the bound is √3 · gain / √fan_in = 1/√d_in.
        let kaiming = Initializer::KaimingUniform {
            gain: 1.0 / 3f64.sqrt(),
            fan_out_only: false,
        };
        let a: Tensor<2> = kaiming
            .init_with([d_in, rank], Some(d_in), Some(rank), &device)
            .into_value();
        let b = Tensor::<2>::zeros([rank, d_out], &device);
        Self::from_factors(
            name,
            [a.cast(dtype), b.cast(dtype)],
            config.alpha,
            config.dropout,
            ids,
        )
    }

    /// An adapter from its factors in Burn layout, A `[in, rank]` and B `[rank, out]`
    /// (trainable parameters with ids `ids`), scale numerator `alpha` and input `dropout`.
    ///
    /// # Panics
    /// If `dropout` is outside `[0, 1)`; [`LoraConfig::validate`] checks it first.
    pub fn from_factors(
        name: &str,
        [a, b]: [Tensor<2>; 2],
        alpha: f64,
        dropout: f64,
        ids: [ParamId; 2],
    ) -> Self {
        let param = |tensor: Tensor<2>, id: ParamId| {
            let mut param = Param::from_tensor(tensor);
            param.id = id;
            Linear {
                weight: param,
                bias: None,
            }
        };
        Self {
            name: name.to_string(),
            lora_a: param(a, ids[0]),
            lora_b: param(b, ids[1]),
            alpha,
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// The rank r of the update.
    pub fn rank(&self) -> usize {
        self.lora_a.weight.lazy_shape().dims::<2>()[1]
    }

    /// `alpha / rank`, PEFT's `scaling` (without rsLoRA).
    pub fn scaling(&self) -> f64 {
        self.alpha / self.rank() as f64
    }

    /// The update `[..., out]` for an input `[..., in]`; both products on autocast operands
    /// under mixed precision, as the base projection's.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let product = |x, linear: &Linear| {
            linear_rows(
                x,
                linear.weight.val(),
                linear.bias.as_ref().map(|b| b.val()),
            )
        };
        let x = self.dropout.forward(x);
        product(product(x, &self.lora_a), &self.lora_b).mul_scalar(self.scaling())
    }

    /// The update as a weight, `scaling · A·B`, `[in, out]` like the base `Linear`'s weight;
    /// detached, since a merged weight is a constant, not a function of the factors.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_a
            .weight
            .val()
            .matmul(self.lora_b.weight.val())
            .mul_scalar(self.scaling())
            .detach()
    }
}

/// A projection that may carry LoRA adapters: the base `Linear` plus any number of named
/// adapters, at most one of them active. With none active (or the active one merged into the
/// base weight) the forward pass is exactly the base `Linear`'s.
///
/// The base sits in a field named `base_layer`, as in PEFT's wrapper; the checkpoint names
/// drop that segment, so `q_proj.base_layer.weight` is still `q_proj.weight` on disk.
#[derive(Module, Debug)]
pub struct AdaptedLinear {
    /// The (frozen while adapters train) projection, weight `[in, out]`. With a `quantizer`
    /// this is the latent weight the grid rounds.
    pub base_layer: Linear,
    /// The quantization grid of the base weight (QALFT): when present, the forward pass uses
    /// the fake-quantized weight, the values the phone will compute with.
    pub quantizer: Option<FakeQuantizer>,
    /// The adapters attached to this projection, in the order they were added; private so
    /// that the active and merged indices stay valid.
    adapters: Vec<LoraLinear>,
    active: Option<usize>,
    merged: Option<usize>,
    /// Where calibration collects the inputs' second moments (GPTQ's Hessian), when it does.
    #[module(skip)]
    tap: Option<InputTap>,
}

impl AdaptedLinear {
    /// `base` without adapters.
    pub fn new(base: Linear) -> Self {
        Self {
            base_layer: base,
            quantizer: None,
            adapters: Vec::new(),
            active: None,
            merged: None,
            tap: None,
        }
    }

    /// `[..., in]` → `[..., out]`: the (fake-quantized) base projection plus the active
    /// adapter's update.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(tap) = &self.tap {
            record_inputs(tap, &x);
        }
        match self.active.filter(|&i| self.merged != Some(i)) {
            Some(i) => self.base_forward(x.clone()) + self.adapters[i].forward(x),
            None => self.base_forward(x),
        }
    }

    fn base_forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.quantizer {
            Some(quantizer) => {
                let weight = quantizer
                    .forward(self.base_layer.weight.val().transpose())
                    .transpose();
                linear_rows(x, weight, self.base_layer.bias.as_ref().map(|b| b.val()))
            }
            None => linear_rows(
                x,
                self.base_layer.weight.val(),
                self.base_layer.bias.as_ref().map(|b| b.val()),
            ),
        }
    }

    /// The weight the forward pass multiplies by, `[in, out]`: the fake-quantized base weight
    /// when quantized, else the base weight (merged adapter included); detached.
    pub fn effective_weight(&self) -> Tensor<2> {
        let weight = self.base_layer.weight.val();
        match &self.quantizer {
            Some(quantizer) => quantizer.forward(weight.transpose()).transpose().detach(),
            None => weight.detach(),
        }
    }

    /// Starts (`Some`) or stops (`None`) collecting the Hessian `Σ x xᵀ` of this projection's
    /// inputs during forward passes.
    pub(crate) fn set_tap(&mut self, tap: Option<InputTap>) {
        self.tap = tap;
    }

    /// The adapters attached to this projection, in the order they were added.
    pub fn adapters(&self) -> &[LoraLinear] {
        &self.adapters
    }

    /// The adapter called `name`, if this projection has one.
    pub fn adapter(&self, name: &str) -> Option<&LoraLinear> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// The adapter called `name`, mutably (e.g. to set its factors).
    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut LoraLinear> {
        self.adapters.iter_mut().find(|a| a.name == name)
    }

    /// The name of the active adapter.
    pub fn active(&self) -> Option<&str> {
        self.active.map(|i| self.adapters[i].name.as_str())
    }

    /// The name of the adapter merged into `base_layer`.
    pub fn merged(&self) -> Option<&str> {
        self.merged.map(|i| self.adapters[i].name.as_str())
    }

    /// Adds `adapter`; the caller keeps names unique.
    pub(crate) fn attach(&mut self, adapter: LoraLinear) {
        self.adapters.push(adapter);
    }

    /// Makes `name` active, or none when `name` is `None` or not attached here.
    pub(crate) fn activate(&mut self, name: Option<&str>) {
        self.active = name.and_then(|name| self.adapters.iter().position(|a| a.name == name));
    }

    /// Adds the active adapter's update into the base weight (`W += scaling · A·B`); the
    /// forward pass then skips the adapter. No-op without an active adapter, when merged, and on
    /// a quantized base, whose weights are codes on a grid (1+N keeps the adapters apart).
    pub(crate) fn merge_active(&mut self) {
        if let Some(i) = self.active
            && self.merged.is_none()
            && self.quantizer.is_none()
        {
            let delta = self.adapters[i].delta_weight();
            self.base_layer.weight = self.base_layer.weight.clone().map(|w| w + delta);
            self.merged = Some(i);
        }
    }

    /// Subtracts the merged adapter's update from the base weight again.
    pub(crate) fn unmerge(&mut self) {
        if let Some(i) = self.merged.take() {
            let delta = self.adapters[i].delta_weight();
            self.base_layer.weight = self.base_layer.weight.clone().map(|w| w - delta);
        }
    }
}

/// A calibration probe's accumulator: the Hessian so far, or the first error (non-finite
/// activations), which stops accumulation and is reported when calibration ends.
pub(crate) type InputTap = Arc<Mutex<Result<Hessian, QuantError>>>;

/// Adds `x` (`[..., in]`, every leading dimension a token) to the Hessian of `tap`: its Gram
/// matrix `xᵀx` (or the column sums of `x²` for a diagonal-only Hessian) is one product on
/// `x`'s device, read back once. Where that holds a non-finite value, the activations
/// themselves are read and accumulated, which names a non-finite one or sums an f32 overflow
/// in f64.
fn record_inputs<const D: usize>(tap: &InputTap, x: &Tensor<D>) {
    let dims = x.dims();
    let in_features = dims[D - 1];
    let tokens = dims.iter().product::<usize>() / in_features.max(1);
    let mut moments = tap.lock().expect("calibration tap poisoned");
    let Ok(hessian) = moments.as_mut() else {
        return;
    };
    // Statistics in f32 whatever the activations' dtype: a bf16 Gram product would round
    // every entry to 8 bits.
    let rows = x
        .clone()
        .cast(burn::tensor::DType::F32)
        .reshape([tokens, in_features]);
    let gram = if hessian.is_full() {
        rows.clone().transpose().matmul(rows)
    } else {
        rows.square().sum_dim(0)
    };
    let gram = f32_values(gram);
    let result = match hessian.accumulate_gram(&gram, tokens) {
        Err(QuantError::NonFiniteGram { .. }) => hessian.accumulate(&f32_values(x.clone()), tokens),
        other => other,
    };
    if let Err(error) = result {
        *moments = Err(error);
    }
}

/// A tensor's values, read back as f32.
fn f32_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

#[cfg(test)]
mod tests {
    use burn::module::ParamId;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    use super::*;
    use crate::lora::LoraTarget;

    fn adapted(dropout: f64, device: &Device) -> AdaptedLinear {
        let base = LinearConfig::new(16, 8).with_bias(false).init(device);
        let config = LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout,
            target_modules: vec![LoraTarget::QProj],
        };
        let mut linear = AdaptedLinear::new(base);
        let mut adapter = LoraLinear::init("a", &linear.base_layer, &config, [ParamId::new(); 2]);
        adapter.lora_b.weight = Param::from_tensor(Tensor::random(
            [4, 8],
            Distribution::Normal(0.0, 1.0),
            device,
        ));
        linear.attach(adapter);
        linear.activate(Some("a"));
        linear
    }

    #[test]
    fn the_tap_sums_what_the_linear_sees_like_the_reference_accumulation() {
        let device = Device::flex();
        let x = Tensor::<3>::random([2, 40, 16], Distribution::Normal(0.0, 3.0), &device);
        let activations = f32_values(x.clone());
        for accumulator in [Hessian::new, Hessian::diagonal_only] {
            let mut linear = adapted(0.0, &device);
            let tap: InputTap = Arc::new(Mutex::new(Ok(accumulator(16))));
            linear.set_tap(Some(tap.clone()));
            linear.forward(x.clone());
            linear.forward(x.clone());
            let tapped = tap.lock().unwrap().clone().unwrap();
            let mut reference = accumulator(16);
            reference.accumulate(&activations, 80).unwrap();
            reference.accumulate(&activations, 80).unwrap();
            assert_eq!(tapped.tokens(), 160);
            let (got, want) = if reference.is_full() {
                (tapped.matrix(), reference.matrix())
            } else {
                (tapped.diagonal(), reference.diagonal())
            };
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                // One f32 product over 80 tokens against f64 sums.
                assert!((g - w).abs() <= 1e-5 * scale, "{g} vs {w}");
            }
        }
        let mut linear = adapted(0.0, &device);
        let tap: InputTap = Arc::new(Mutex::new(Ok(Hessian::new(16))));
        linear.set_tap(Some(tap.clone()));
        let mut poisoned = activations[..32].to_vec();
        poisoned[21] = f32::NAN;
        linear.forward(Tensor::<2>::from_data(
            TensorData::new(poisoned, [2, 16]),
            &device,
        ));
        assert!(matches!(
            *tap.lock().unwrap(),
            Err(QuantError::NonFiniteActivation {
                token: 1,
                feature: 5,
                ..
            })
        ));
    }

    #[test]
    fn a_is_kaiming_uniform_and_b_zero_as_in_peft() {
        let device = Device::flex();
        let base = LinearConfig::new(64, 8).init(&device);
        let config = LoraConfig::new(4, 8.0, &LoraTarget::ALL);
        let adapter = LoraLinear::init("a", &base, &config, [ParamId::new(); 2]);
        let a = f32_values(adapter.lora_a.weight.val());
        let bound = 1.0 / 8.0;
        assert!(a.iter().all(|v| v.abs() <= bound));
        assert!(a.iter().any(|v| v.abs() > bound / 2.0));
        assert!(
            f32_values(adapter.lora_b.weight.val())
                .iter()
                .all(|&v| v == 0.0)
        );
        assert_eq!(adapter.scaling(), 2.0);
    }

    #[test]
    fn dropout_acts_only_while_training() {
        let x = |device: &Device| Tensor::<2>::ones([3, 16], device);
        let plain = Device::flex();
        let linear = adapted(0.5, &plain);
        assert_eq!(
            f32_values(linear.forward(x(&plain))),
            f32_values(linear.forward(x(&plain)))
        );
        let training = Device::flex().autodiff();
        let linear = adapted(0.5, &training);
        let (first, second) = (linear.forward(x(&training)), linear.forward(x(&training)));
        assert_ne!(f32_values(first), f32_values(second));
        let eval = linear.valid();
        let eval_device = eval.devices()[0].clone();
        assert_eq!(
            f32_values(eval.forward(x(&eval_device))),
            f32_values(eval.forward(x(&eval_device)))
        );
    }
}
