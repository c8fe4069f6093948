//! Compute precision of a model's parameters.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Tensor};

/// Casts every float parameter of `module` to `dtype` (e.g. bf16 for GPU inference).
pub fn cast_parameters<M: Module>(module: M, dtype: DType) -> M {
    struct Cast(DType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
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
