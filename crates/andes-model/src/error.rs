//! Errors of model loading, saving and running, each naming the file and the key or tensor.

use std::path::PathBuf;

/// Everything that can go wrong between a model directory on disk and a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Quantizing a linear failed.
    #[error("quantizing `{layer}`: {source}")]
    Quantization {
        /// Hugging Face module name.
        layer: String,
        /// What went wrong.
        source: andes_quant::QuantError,
    },
    /// A bit plan that does not fit the model (its message names the plan and the layer).
    #[error(transparent)]
    Plan(andes_quant::QuantError),
    /// A data file (records, images, tokenizer) could not be read or is unusable.
    #[error(transparent)]
    Records(#[from] andes_data::dataset::RecordError),
    /// Tokenizing or preprocessing failed.
    #[error(transparent)]
    Data(#[from] andes_data::DataError),
    /// A record cannot become a model row.
    #[error("{path}: {message}")]
    Row {
        /// The data file or image.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A configuration key is missing, mistyped or out of range.
    #[error("{path}: key `{key}`: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// What was found and what was expected.
        message: String,
    },
    /// A safetensors file is malformed or truncated.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// The model expects a tensor that no file of the checkpoint holds.
    #[error("{dir}: tensor `{tensor}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Hugging Face tensor name.
        tensor: String,
        /// Shape the configuration implies.
        expected: Vec<usize>,
    },
    /// The checkpoint holds tensors the model has no place for.
    #[error("{path}: unexpected tensor(s) not used by the model: {tensors}")]
    UnexpectedTensors {
        /// File holding the first of them.
        path: PathBuf,
        /// Comma-separated names.
        tensors: String,
    },
    /// A tensor's shape differs from what the configuration implies.
    #[error(
        "{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?} from config.json"
    )]
    ShapeMismatch {
        /// The file holding it.
        path: PathBuf,
        /// Hugging Face tensor name.
        tensor: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the configuration implies.
        expected: Vec<usize>,
    },
    /// A tensor is stored in a dtype andes does not load.
    #[error("{path}: tensor `{tensor}` has dtype {found}, expected one of F32, BF16, F16")]
    UnsupportedDtype {
        /// The file holding it.
        path: PathBuf,
        /// Hugging Face tensor name.
        tensor: String,
        /// The dtype found.
        found: String,
    },
    /// A request the model cannot serve (too long a sequence, an empty prompt, ...).
    #[error("{0}")]
    InvalidInput(String),
}
