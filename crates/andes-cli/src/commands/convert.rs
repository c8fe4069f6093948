//! `andes convert`: load a model directory and write it back in the Hugging Face layout.

use std::path::PathBuf;

use andes_model::checkpoint::{SaveDtype, save_qwen3};
use anyhow::Context;
use clap::Args;

use crate::model_args::ModelArgs;

/// Arguments of `andes convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output directory (created; files inside are replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Precision of the written weights: f32 or bf16.
    #[arg(long, default_value = "f32")]
    save_dtype: String,
}

/// Files copied unchanged from the source directory when present.
const SIDE_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// Runs `andes convert`.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let save_dtype = match args.save_dtype.as_str() {
        "f32" => SaveDtype::F32,
        "bf16" => SaveDtype::Bf16,
        other => anyhow::bail!("--save-dtype `{other}`: expected f32 or bf16"),
    };
    let loaded = args.model.load()?;
    save_qwen3(&loaded.model, &loaded.config, &args.out, save_dtype)?;
    for name in SIDE_FILES {
        let source = args.model.model.join(name);
        if source.exists() {
            let bytes =
                std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
            andes_model::checkpoint::write_atomically(&args.out.join(name), &bytes)?;
        }
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
