//! Writing a Burn module back to Hugging Face safetensors.

use std::borrow::Cow;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use safetensors::tensor::{Dtype, View};

use super::atomic::write_atomically;
use super::load::transpose;
use super::names::ParamPath;
use crate::error::ModelError;

/// The precision a checkpoint is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// 32-bit floats (exact for f32 models).
    F32,
    /// bfloat16, the dtype of released Qwen3 checkpoints.
    Bf16,
    /// IEEE half precision (the float parts of a mobile package).
    F16,
}

impl std::str::FromStr for SaveDtype {
    type Err = String;

    /// `f32`, `bf16` or `f16`, as `--save-dtype` spells them.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            other => Err(format!("found {other:?}, expected f32, bf16 or f16")),
        }
    }
}

/// Files besides weights and config that a Hugging Face checkpoint carries when it has them
/// (tokenizer, its settings, generation defaults, an AndesVL model's image preprocessing):
/// whatever writes a model directory from another copies them so the copy loads on its own.
pub const SIDE_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "preprocessor_config.json",
];

/// The [`SIDE_FILES`] that `dir` holds.
pub fn side_files(dir: &Path) -> Vec<std::path::PathBuf> {
    SIDE_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.exists())
        .collect()
}

struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes every float parameter of `module` to `path` (one safetensors file), under its
/// Hugging Face name and layout, skipping names in `skip` and LoRA adapter parameters (an
/// adapter is exported on its own, in the PEFT layout); temporary file then rename.
pub fn save_parameters<M: Module>(
    module: &M,
    path: &Path,
    dtype: SaveDtype,
    skip: &[&str],
) -> Result<(), ModelError> {
    save_parameters_named(module, path, dtype, skip, &|name| name.to_string())
}

/// [`save_parameters`] under the names `checkpoint_name` gives each parameter path name
/// (the inverse direction of `load_parameters_named`); `skip` holds checkpoint names.
pub fn save_parameters_named<M: Module>(
    module: &M,
    path: &Path,
    dtype: SaveDtype,
    skip: &[&str],
    checkpoint_name: &dyn Fn(&str) -> String,
) -> Result<(), ModelError> {
    write_atomically(
        path,
        &parameters_safetensors(module, path, dtype, skip, checkpoint_name)?,
    )
}

/// The safetensors bytes [`save_parameters_named`] writes, for a caller that lays the file
/// out further before writing it; `path` is the file they are meant for, named in errors.
pub fn parameters_safetensors<M: Module>(
    module: &M,
    path: &Path,
    dtype: SaveDtype,
    skip: &[&str],
    checkpoint_name: &dyn Fn(&str) -> String,
) -> Result<Vec<u8>, ModelError> {
    let mut collector = Collector {
        path: ParamPath::default(),
        dtype,
        tensors: Vec::new(),
        unreadable: None,
    };
    module.visit(&mut collector);
    if let Some((tensor, message)) = collector.unreadable {
        return Err(ModelError::Safetensors {
            path: path.to_owned(),
            message: format!(
                "tensor `{tensor}` could not be read back from the device, nothing written: \
                 {message}"
            ),
        });
    }
    let tensors: Vec<(String, &HostTensor)> = collector
        .tensors
        .iter()
        .map(|(name, t)| (checkpoint_name(name), t))
        .filter(|(name, _)| !skip.contains(&name.as_str()))
        .collect();
    safetensors::serialize(tensors, None).map_err(|e| ModelError::Safetensors {
        path: path.to_owned(),
        message: format!("{e:?}"),
    })
}

struct Collector {
    path: ParamPath,
    dtype: SaveDtype,
    tensors: Vec<(String, HostTensor)>,
    /// The first parameter whose device read failed (the device ran out of memory, say),
    /// with the backend's message: the save then writes nothing and says which.
    unreadable: Option<(String, String)>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.path.is_attachment() || self.unreadable.is_some() {
            return;
        }
        let data = match param.val().try_to_data() {
            Ok(data) => data.convert::<f32>(),
            Err(error) => {
                self.unreadable = Some((self.path.hf_name(), error.to_string()));
                return;
            }
        };
        let data = if self.path.is_transposed_in_checkpoint() {
            transpose(data)
        } else {
            data
        };
        let shape = data.shape().as_slice().to_vec();
        let values = data.as_slice::<f32>().expect("converted to f32");
        let (dtype, bytes) = match self.dtype {
            SaveDtype::F32 => (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            SaveDtype::Bf16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            SaveDtype::F16 => (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        };
        self.tensors.push((
            self.path.hf_name(),
            HostTensor {
                dtype,
                shape,
                bytes,
            },
        ));
    }
}
