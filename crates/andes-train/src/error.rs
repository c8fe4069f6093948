//! Errors of a training run, each naming the file and key or the step.

use std::path::PathBuf;

/// Everything that stops a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The recipe file is missing, malformed, or has a bad value.
    #[error("{path}: key `{key}`: {message}")]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// What was found and expected.
        message: String,
    },
    /// A run-directory file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The starting checkpoint is a kind of model the stage or data cannot train (a text model
    /// for image data, an AndesVL model for an adapter stage).
    #[error("{path}: {message}")]
    WrongModel {
        /// The checkpoint's `config.json`.
        path: PathBuf,
        /// Which kind was found and which one the recipe needs.
        message: String,
    },
    /// A data file holds no usable record.
    #[error("{path}: no records to train on")]
    NoRecords {
        /// The data file.
        path: PathBuf,
    },
    /// A checkpoint is incomplete or corrupt.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] andes_model::ModelError),
    /// Reading the package an adapter trains against failed (boxed: the package's errors are
    /// large, and a step's result should stay small).
    #[error(transparent)]
    Package(Box<andes_package::PackageError>),
    /// Attaching, loading or saving the LoRA adapter failed.
    #[error(transparent)]
    Lora(#[from] andes_model::lora::LoraError),
    /// Reading the data failed.
    #[error(transparent)]
    Data(#[from] andes_data::dataset::RecordError),
    /// Tokenizer failure.
    #[error(transparent)]
    Tokenizer(#[from] andes_data::DataError),
    /// The device failed while running the step.
    #[error("device error: {0}")]
    Device(String),
    /// A run's first step came back with a loss of exactly 0 (and no gradient): no
    /// next-token loss of a model that has not trained is 0, but kernels that failed to get
    /// device memory write nothing, and Burn reports the failure only when a buffer they
    /// left unwritten is read back (seen on a GPU at 8k tokens a window: 40 steps of loss 0,
    /// then a checkpoint that could not be read).
    #[error(
        "step 1 computed nothing: its loss is exactly 0, as when the device runs out of memory \
         mid-step (kernels that cannot allocate write nothing); a smaller train.batch_size, a \
         shorter data.seq_len or train.activation_checkpointing needs less"
    )]
    ComputedNothing,
    /// `train.replay = true`, but the run's objective has no step of fixed shapes to capture.
    #[error(
        "train.replay = true, but this run cannot replay its step: {0}; set train.replay = false"
    )]
    NotReplayable(String),
    /// The loss became NaN or infinite.
    #[error("step {step}: the loss is {loss}; lower optimizer.lr or check the data")]
    Diverged {
        /// The step.
        step: usize,
        /// The value.
        loss: f64,
    },
}

impl TrainError {
    /// An AndesVL checkpoint (`recipe`'s) given to a stage that trains text models only.
    pub fn text_only(recipe: &crate::recipe::Recipe) -> Self {
        Self::WrongModel {
            path: recipe.model.checkpoint.join("config.json"),
            message: format!(
                "stage {} trains text models; this is an AndesVL checkpoint",
                recipe.stage.name()
            ),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, error: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }
}

impl From<andes_package::PackageError> for TrainError {
    fn from(error: andes_package::PackageError) -> Self {
        Self::Package(Box::new(error))
    }
}
