//! The `--model/--device/--dtype` arguments shared by every command that runs a model.

use std::path::PathBuf;

use andes_model::device::parse_device;
use andes_model::lora::peft::import_peft_adapter;
use andes_model::precision::parse_dtype;
use andes_model::{Model, ModelConfig};
use andes_package::{Bundle, PACKAGE_DIR, is_package_bundle, load_model};
use anyhow::Context;
use burn::tensor::{DType, Device};
use clap::Args;

/// The name `--adapter` is attached under.
const ADAPTER_NAME: &str = "cli";

/// Where the model is and where it runs: `--model`, `--device`, `--dtype`, the same for
/// every command that loads a model.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json), a package
    /// from `andes quantize` (run dequantized), or a bundle from `andes export --package`.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// `--adapter`, for the commands that run a model with a task adapter.
#[derive(Args, Debug)]
pub struct AdapterArgs {
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to
    /// apply on top of the model; with a bundle as `--model`, the name of one of its adapters.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

/// Device and precision.
#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// cpu, cuda[:N], wgpu[:N] or vulkan[:N] (GPU backends need their build feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute precision: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl RuntimeArgs {
    /// The parsed device and dtype.
    pub fn resolve(&self) -> anyhow::Result<(Device, DType)> {
        Ok((parse_device(&self.device)?, parse_dtype(&self.dtype)?))
    }
}

/// A loaded model with its configuration and the device it lives on.
pub struct LoadedModel {
    /// Qwen3 or AndesVL.
    pub config: ModelConfig,
    /// The model, with `--adapter` attached and active on its language model.
    pub model: Model,
    /// Where it lives.
    pub device: Device,
    /// Bits per weight over the quantized linears, when the model is a package.
    pub package_bpw: Option<f64>,
    /// Where the tokenizer and generation config lie: the model directory, or a bundle's
    /// package.
    pub files_dir: PathBuf,
}

impl ModelArgs {
    /// Loads the model directory or package onto the chosen device, with `adapter` (a PEFT
    /// directory) attached and active.
    pub fn load(&self, adapter: &AdapterArgs) -> anyhow::Result<LoadedModel> {
        let (device, dtype) = self.runtime.resolve()?;
        if is_package_bundle(&self.model) {
            let mut bundle = Bundle::load(&self.model, &device, dtype)
                .with_context(|| format!("loading bundle {}", self.model.display()))?;
            let name = adapter.adapter.as_ref().map(|name| name.to_string_lossy());
            bundle.activate(name.as_deref())?;
            let package_bpw = Some(bundle.package.weights.bpw_linears);
            let (config, model) = bundle.into_model();
            return Ok(LoadedModel {
                config,
                model,
                device,
                package_bpw,
                files_dir: self.model.join(PACKAGE_DIR),
            });
        }
        let (config, mut model, manifest) = load_model(&self.model, &device, dtype)
            .with_context(|| format!("loading model {}", self.model.display()))?;
        if let Some(dir) = &adapter.adapter {
            let language_model = model.language_model_mut();
            import_peft_adapter(language_model, dir, ADAPTER_NAME)
                .with_context(|| format!("loading adapter {}", dir.display()))?;
            language_model.set_active_adapter(Some(ADAPTER_NAME))?;
        }
        Ok(LoadedModel {
            config,
            model,
            device,
            package_bpw: manifest.map(|m| m.weights.bpw_linears),
            files_dir: self.model.clone(),
        })
    }
}
