//! Errors of loading and running a model, each naming the file, field or request at fault.

use std::path::PathBuf;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file is missing, unreadable or not what it claims to be.
    #[error("{path}: {message}")]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The package or bundle failed its checks.
    #[error(transparent)]
    Package(#[from] andes_package::PackageError),
    /// The model side (configuration, vision tower) failed.
    #[error(transparent)]
    Model(#[from] andes_model::ModelError),
    /// The tokenizer or an image failed.
    #[error(transparent)]
    Data(#[from] andes_data::DataError),
    /// A request the runtime cannot serve (an unknown adapter, a prompt past the context).
    #[error("{0}")]
    Request(String),
}

impl RuntimeError {
    /// A fault of `path`.
    pub fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        Self::File {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}
