//! Compute precision: of a model's parameters, and of its matrix products under mixed
//! precision ([`Autocast`]).

use std::cell::Cell;

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::module::linear;
use burn::tensor::{DType, FloatDType, Tensor};

/// How a run computes: `f32` everywhere; `bf16-mixed` as torch autocast does it (f32 master
/// weights and optimizer state, matrix products and attention in bf16, norms, softmax, losses
/// and reductions in f32); or `bf16` parameters throughout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 parameters and products (TF32 where the GPU backend allows it).
    F32,
    /// f32 parameters, bf16 products.
    Bf16Mixed,
    /// bf16 parameters and products.
    Bf16,
}

impl Precision {
    /// What a device runs by default: `bf16-mixed` on CUDA, whose tensor cores run bf16 at
    /// twice TF32's rate, `f32` elsewhere.
    pub fn default_for(device: &str) -> Self {
        if device.starts_with("cuda") {
            Self::Bf16Mixed
        } else {
            Self::F32
        }
    }

    /// The dtype parameters (and so optimizer state) are kept in.
    pub fn parameter_dtype(self) -> DType {
        match self {
            Self::F32 | Self::Bf16Mixed => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The name recipes and flags use.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16Mixed => "bf16-mixed",
            Self::Bf16 => "bf16",
        }
    }

    /// The dtype an [`Autocast`] sets for the products, when the parameters' own is not it.
    pub fn autocast(self) -> Option<DType> {
        match self {
            Self::Bf16Mixed => Some(DType::BF16),
            Self::F32 | Self::Bf16 => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [Self::F32, Self::Bf16Mixed, Self::Bf16]
            .into_iter()
            .find(|precision| precision.name() == value)
            .ok_or_else(|| format!("found {value:?}, expected f32, bf16-mixed or bf16"))
    }
}

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Mixed precision as torch's `autocast` does it: while an `Autocast` of `bf16` lives, the
/// matrix products this thread records (the projections, attention, the LM head) read their
/// operands in bf16 and hand their results back in the caller's dtype, so parameters, norms,
/// softmax statistics, losses and reductions stay f32 and gradients reach f32 master weights
/// through the casts. Dropping it restores what was in force before.
pub struct Autocast {
    previous: Option<DType>,
}

impl Autocast {
    /// Runs matrix products in `dtype` (`None`: in their operands' own dtype) until dropped.
    pub fn new(dtype: Option<DType>) -> Self {
        Self {
            previous: AUTOCAST.with(|cell| cell.replace(dtype)),
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        AUTOCAST.with(|cell| cell.set(self.previous));
    }
}

/// The dtype matrix products run in on this thread, when an [`Autocast`] sets one.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// `tensor` as a matrix product's operand: in the autocast dtype when one is set, else as it
/// is. The caller casts the product back to its own dtype.
pub fn operand<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    match autocast_dtype() {
        Some(dtype) => tensor.cast(dtype),
        None => tensor,
    }
}

/// `x·weight + bias` (`x` `[.., in]`, `weight` `[in, out]`) with its operands in the autocast
/// dtype and its result in `x`'s.
pub fn mixed_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dtype = x.dtype();
    linear(operand(x), operand(weight), bias.map(operand)).cast(dtype)
}

/// Casts every float parameter of `module` to `dtype` (e.g. bf16 for GPU inference, or a
/// model trained in bf16 throughout). The cast parameters are leaves of their own: on an
/// autodiff device, a parameter that stayed the output of a cast would have its gradient
/// tape consumed by the first backward pass.
pub fn cast_parameters<M: Module>(module: M, dtype: DType) -> M {
    struct Cast(DType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| {
                let trained = t.is_require_grad();
                let cast = t.cast(dtype).detach();
                if trained { cast.require_grad() } else { cast }
            })
        }
    }
    module.map(&mut Cast(dtype))
}

/// Parses a user's `--dtype` (`f32`, `bf16`, `f16`).
pub fn parse_dtype(spec: &str) -> Result<DType, crate::ModelError> {
    match spec {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(crate::ModelError::InvalidInput(format!(
            "dtype `{other}` is unknown; expected f32, bf16 or f16"
        ))),
    }
}

/// A backend tensor in f32 (itself when already f32): what the operations that compute in f32
/// whatever their operands' dtype (attention's softmax, RMSNorm, the rotary rotation) read.
pub fn f32_of<B: Backend>(tensor: FloatTensor<B>) -> FloatTensor<B> {
    B::float_cast(tensor, FloatDType::F32)
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::linear;
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::row_product::linear_rows;
    use crate::test_tensors::values;

    #[test]
    fn autocast_runs_products_on_bf16_operands_and_hands_back_f32() {
        let device = Device::flex();
        let pattern = |len: usize, step: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * step).sin()).collect()
        };
        let x = Tensor::<3>::from_data(
            TensorData::new(pattern(2 * 3 * 64, 0.37), [2, 3, 64]),
            &device,
        );
        let weight =
            Tensor::<2>::from_data(TensorData::new(pattern(64 * 32, 0.11), [64, 32]), &device);
        let exact = values(linear_rows(x.clone(), weight.clone(), None));
        let rounded = values(
            linear(
                x.clone().cast(DType::BF16),
                weight.clone().cast(DType::BF16),
                None,
            )
            .cast(DType::F32),
        );
        let mixed = {
            let _autocast = Autocast::new(Precision::Bf16Mixed.autocast());
            let product = linear_rows(x.clone(), weight.clone(), None);
            assert_eq!(product.dtype(), DType::F32);
            values(product)
        };
        assert_eq!(mixed, rounded, "the product did not read bf16 operands");
        assert_ne!(mixed, exact, "bf16 operands left the f32 product unchanged");
        // Rounding both operands and the result to bf16 (unit roundoff 2⁻⁸) moves each output
        // by at most about 3·2⁻⁸ of Σ|x|·|w|; 2⁻⁶ leaves room for the f32 sums.
        let bound = values(linear(x.clone().abs(), weight.clone().abs(), None));
        for ((a, b), bound) in mixed.iter().zip(&exact).zip(&bound) {
            assert!(
                (a - b).abs() <= bound / 64.0,
                "{a} vs {b}, bound {}",
                bound / 64.0
            );
        }
        // Dropping the scope restores f32 products.
        assert_eq!(values(linear_rows(x, weight, None)), exact);
    }

    #[test]
    fn precision_reads_as_recipes_spell_it_and_defaults_by_device() {
        for (name, precision) in [
            ("f32", Precision::F32),
            ("bf16-mixed", Precision::Bf16Mixed),
            ("bf16", Precision::Bf16),
        ] {
            let parsed: Precision = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(parsed, precision);
            assert_eq!(name.parse::<Precision>(), Ok(precision));
            assert_eq!(precision.to_string(), name);
        }
        assert_eq!(
            Precision::default_for("cuda:0,cuda:1"),
            Precision::Bf16Mixed
        );
        assert_eq!(Precision::default_for("cpu"), Precision::F32);
        assert_eq!(Precision::Bf16Mixed.parameter_dtype(), DType::F32);
        assert_eq!(Precision::Bf16.parameter_dtype(), DType::BF16);
    }
}
