//! `andes init`: a randomly initialised Qwen3 checkpoint of a given shape (transformers'
//! initialisation), for training from scratch and for benchmarks at real sizes (e.g.
//! `configs/models/qwen3-0.6b.json`).

use std::path::PathBuf;

use andes_model::checkpoint::{SaveDtype, save_qwen3};
use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use anyhow::Context;
use burn::tensor::Device;
use clap::Args;

/// Arguments of `andes init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// A Qwen3 config.json giving the shape.
    #[arg(long)]
    config: PathBuf,
    /// Directory whose tokenizer.json (and tokenizer_config.json) to copy.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write bf16 weights rather than f32.
    #[arg(long)]
    bf16: bool,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `andes init`.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let config = Qwen3Config::from_file(&args.config)?;
    // Drawn on the CPU: a seed gives the same checkpoint whatever GPU backend is built in.
    let device = Device::flex();
    device.seed(args.seed);
    let model = Qwen3ForCausalLM::new(&config, &device)?.init_like_transformers(&config);
    let dtype = if args.bf16 {
        SaveDtype::Bf16
    } else {
        SaveDtype::F32
    };
    save_qwen3(&model, &config, &args.out, dtype)?;
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let source = args.tokenizer.join(file);
        if source.exists() || file == "tokenizer.json" {
            std::fs::copy(&source, args.out.join(file))
                .with_context(|| format!("copying {}", source.display()))?;
        }
    }
    println!(
        "initialised {} ({} parameters, seed {})",
        args.out.display(),
        burn::module::Module::num_params(&model),
        args.seed
    );
    Ok(())
}
