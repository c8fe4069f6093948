//! Loading a Hugging Face checkpoint into a lazily-initialised Burn module.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData};

use super::names::ParamPath;
use super::shards::SafetensorsShards;
use crate::error::ModelError;

/// Replaces every float parameter of `module` by the checkpoint tensor of the same name, cast
/// to `dtype`; the module's (lazy) shapes are the expected shapes. LoRA adapter parameters
/// are left as they are (they are not part of a checkpoint). Does not check for unused
/// tensors: the caller decides what may be ignored, then calls `ensure_all_used`.
pub fn load_parameters<M: Module>(
    module: M,
    shards: &mut SafetensorsShards,
    dtype: DType,
) -> Result<M, ModelError> {
    load_parameters_named(module, shards, dtype, &|name| name.to_string())
}

/// [`load_parameters`] for a module whose Hugging Face names differ from its field paths:
/// `checkpoint_name` maps each parameter's path name to the checkpoint's tensor name (a
/// vision tower's family naming, a prefix inside a larger checkpoint).
pub fn load_parameters_named<M: Module>(
    module: M,
    shards: &mut SafetensorsShards,
    dtype: DType,
    checkpoint_name: &dyn Fn(&str) -> String,
) -> Result<M, ModelError> {
    let mut loader = Loader {
        path: ParamPath::default(),
        shards,
        dtype,
        checkpoint_name,
        error: None,
    };
    let module = module.map(&mut loader);
    match loader.error {
        Some(error) => Err(error),
        None => Ok(module),
    }
}

struct Loader<'a> {
    path: ParamPath,
    shards: &'a mut SafetensorsShards,
    dtype: DType,
    checkpoint_name: &'a dyn Fn(&str) -> String,
    error: Option<ModelError>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() || self.path.is_attachment() {
            return param;
        }
        let name = (self.checkpoint_name)(&self.path.hf_name());
        let transposed = self.path.is_transposed_in_checkpoint();
        let mut expected = param.lazy_shape().to_vec();
        if transposed {
            expected.reverse();
        }
        match self.shards.read_f32(&name, &expected) {
            Ok(data) => {
                let data = if transposed { transpose(data) } else { data };
                let device = param.lazy_device();
                let tensor = Tensor::<D>::from_data(data, &device).cast(self.dtype);
                param.transform_for_load(tensor, stable_param_id(&name))
            }
            Err(error) => {
                self.error = Some(error);
                param
            }
        }
    }
}

/// A parameter id derived from the tensor name (64-bit FNV-1a), so that optimizer state saved
/// by one process is matched to the same parameter when another process loads the model.
pub fn stable_param_id(name: &str) -> ParamId {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    });
    ParamId::from(hash)
}

/// Transposes a 2-D f32 tensor on the host (`[rows, cols]` → `[cols, rows]`).
pub(crate) fn transpose(data: TensorData) -> TensorData {
    let [rows, cols] = data.shape().as_slice()[..] else {
        unreachable!("only Linear weights are transposed, and they are 2-D")
    };
    let values = data.as_slice::<f32>().expect("the reader yields f32");
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    TensorData::new(out, [cols, rows])
}
