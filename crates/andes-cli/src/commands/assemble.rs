//! `andes assemble`: build an AndesVL model directory from a preset and its parts (a Qwen3
//! checkpoint, a SigLIP2 / AIMv2 vision checkpoint), the projector freshly initialised, as
//! AndesVL's alignment stage starts.

use std::path::{Path, PathBuf};

use andes_model::andesvl::{AndesVLConfig, assemble, save_andesvl};
use andes_model::checkpoint::SaveDtype;
use andes_model::device::parse_device;
use anyhow::Context;
use clap::Args;

/// Files of the text checkpoint copied into the assembled directory when present.
const TEXT_SIDE_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// Arguments of `andes assemble`.
#[derive(Args, Debug)]
pub struct AssembleArgs {
    /// Preset directory: an AndesVL `config.json` and the images' `preprocessor_config.json`
    /// (configs/models/andesvl-*).
    #[arg(long)]
    preset: PathBuf,
    /// Qwen3 checkpoint for the language model (random weights when absent).
    #[arg(long)]
    text: Option<PathBuf>,
    /// SigLIP2 or AIMv2 checkpoint for the vision tower (random weights when absent).
    #[arg(long)]
    vision: Option<PathBuf>,
    /// Directory whose tokenizer.json to use (default: --text).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Seed of the random initialisation (projector, and parts not loaded).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write weights in bf16 rather than f32.
    #[arg(long)]
    bf16: bool,
    /// cpu, wgpu[:N] or vulkan[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output model directory, which must not exist (written to a temporary sibling, then
    /// renamed).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `andes assemble`.
pub fn run(args: AssembleArgs) -> anyhow::Result<()> {
    let config = AndesVLConfig::from_file(&args.preset.join("config.json"))?;
    let preprocessor = args.preset.join("preprocessor_config.json");
    andes_data::image_processor::ImageProcessor::from_file(&preprocessor)?;
    let tokenizer_dir = args.tokenizer.as_ref().or(args.text.as_ref()).context(
        "no tokenizer: pass --tokenizer DIR (or --text DIR, whose tokenizer.json is used)",
    )?;
    let device = parse_device(&args.device)?;
    device.seed(args.seed);
    let model = assemble(
        &config,
        args.text.as_deref(),
        args.vision.as_deref(),
        &device,
    )?;

    let tmp = andes_package::staging_dir(&args.out)?;
    let dtype = if args.bf16 {
        SaveDtype::Bf16
    } else {
        SaveDtype::F32
    };
    save_andesvl(&model, &config, &tmp, dtype)?;
    copy(&preprocessor, &tmp)?;
    for file in TEXT_SIDE_FILES {
        let source = tokenizer_dir.join(file);
        if source.exists() {
            copy(&source, &tmp)?;
        } else if file == "tokenizer.json" {
            anyhow::bail!(
                "{}: missing (the assembled model needs a tokenizer)",
                source.display()
            );
        }
    }
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    println!(
        "assembled {} (text: {}, vision: {}, projector: random, seed {})",
        args.out.display(),
        args.text
            .as_deref()
            .map_or("random".into(), |p| p.display().to_string()),
        args.vision
            .as_deref()
            .map_or("random".into(), |p| p.display().to_string()),
        args.seed
    );
    Ok(())
}

fn copy(source: &Path, dir: &Path) -> anyhow::Result<()> {
    let target = dir.join(source.file_name().expect("a file"));
    std::fs::copy(source, &target)
        .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    Ok(())
}
