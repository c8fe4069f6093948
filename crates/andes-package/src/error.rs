//! Errors of writing and reading packages, each naming the file.

use std::path::PathBuf;

/// Everything that can go wrong writing or verifying a bundle.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The adapters cannot share one bundle (another base, another quantization, a name twice).
    #[error("{0}")]
    Incompatible(String),
    /// A bundle whose files differ from its manifest, or a manifest this version cannot read.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// A parameter of the request is missing or out of range.
    #[error("{field}: {message}")]
    Params {
        /// The parameter (the command-line flag without its dashes).
        field: String,
        /// What was found and what was expected.
        message: String,
    },
    /// The planned package does not fit the target's memory.
    #[error("{0}")]
    DoesNotFit(String),
    /// A target profile, bit plan or quantizer failed.
    #[error(transparent)]
    Quant(#[from] andes_quant::QuantError),
    /// Calibration data could not be read.
    #[error(transparent)]
    Records(#[from] andes_data::dataset::RecordError),
    /// The tokenizer could not be loaded or failed.
    #[error(transparent)]
    Tokenizer(#[from] andes_data::DataError),
    /// Exporting the model or an adapter failed.
    #[error(transparent)]
    Model(#[from] andes_model::ModelError),
    /// Exporting an adapter failed.
    #[error(transparent)]
    Lora(#[from] andes_model::lora::LoraError),
}

impl PackageError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, error: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }
}
