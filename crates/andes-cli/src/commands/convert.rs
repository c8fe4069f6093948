//! `andes convert`: load a model directory (or a package, dequantized) and write it back in
//! the Hugging Face layout, with its tokenizer and other side files.

use std::path::PathBuf;

use andes_model::checkpoint::{SaveDtype, side_files};
use anyhow::Context;
use clap::Args;

use crate::model_args::{AdapterArgs, ModelArgs};

/// Arguments of `andes convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Output directory (created; files inside are replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Precision of the written weights: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    save_dtype: SaveDtype,
}

/// Runs `andes convert`.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let loaded = args.model.load(&args.adapter)?;
    loaded
        .model
        .save(&loaded.config, &args.out, args.save_dtype)?;
    for source in side_files(&args.model.model) {
        let bytes =
            std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        let name = source.file_name().expect("a side file has a name");
        andes_model::checkpoint::write_atomically(&args.out.join(name), &bytes)?;
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
