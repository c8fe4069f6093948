//! The `--model/--device/--dtype` arguments shared by every command that runs a model.

use std::path::PathBuf;

use andes_model::andesvl::{AndesVLConfig, load_andesvl};
use andes_model::checkpoint::load_qwen3;
use andes_model::device::parse_device;
use andes_model::lora::peft::import_peft_adapter;
use andes_model::precision::parse_dtype;
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use anyhow::Context;
use burn::tensor::{DType, Device};
use clap::Args;

/// The name `--adapter` is attached under.
const ADAPTER_NAME: &str = "cli";

/// Where the model is and where it runs.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json), or a
    /// package from `andes quantize` (run dequantized).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to
    /// apply on top of the model, e.g. one of a bundle's `adapters/NAME`.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
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
    pub config: Qwen3Config,
    pub model: Qwen3ForCausalLM,
    pub device: Device,
    /// Bits per weight over the quantized linears, when the model is a package.
    pub package_bpw: Option<f64>,
}

impl ModelArgs {
    /// Loads the checkpoint onto the chosen device.
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        let (device, dtype) = self.runtime.resolve()?;
        let (config, mut model, package_bpw) = if andes_package::is_package(&self.model) {
            let package = andes_package::load_package(&self.model, &device, dtype)
                .with_context(|| format!("loading package {}", self.model.display()))?;
            let bpw = package.manifest.weights.bpw_linears;
            (package.config, package.model, Some(bpw))
        } else if AndesVLConfig::is_andesvl(&self.model.join("config.json")) {
            // Commands that read text run an AndesVL model's language model.
            let (config, model) = load_andesvl(&self.model, &device, dtype)
                .with_context(|| format!("loading model {}", self.model.display()))?;
            (config.text_config, model.into_parts().1, None)
        } else {
            let (config, model) = load_qwen3(&self.model, &device, dtype)
                .with_context(|| format!("loading model {}", self.model.display()))?;
            (config, model, None)
        };
        if let Some(dir) = &self.adapter {
            import_peft_adapter(&mut model, dir, ADAPTER_NAME)
                .with_context(|| format!("loading adapter {}", dir.display()))?;
            model.set_active_adapter(Some(ADAPTER_NAME))?;
        }
        Ok(LoadedModel {
            config,
            model,
            device,
            package_bpw,
        })
    }
}
