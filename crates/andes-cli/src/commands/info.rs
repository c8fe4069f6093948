//! `andes info`: what a model directory holds.

use std::path::PathBuf;

use andes_model::{Model, ModelConfig};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;

/// Arguments of `andes info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `andes info`; reads only `config.json` (parameters are counted from shapes). For an
/// AndesVL model the text lines describe its language model, the parameter count is the whole
/// model's, and a `vision` line (key) describes the tower.
pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let model_config = ModelConfig::from_file(&args.model.join("config.json"))?;
    let parameters = Model::new(&model_config, &Device::flex())?.num_params();
    let vision = model_config.andesvl().map(|andesvl| {
        let spec = andesvl.vision_config.spec();
        serde_json::json!({
            "model_type": andesvl.vision_config.model_type(),
            "hidden_size": spec.hidden_size,
            "num_hidden_layers": spec.layers,
            "patch_size": spec.patch_size,
            "merge_size": andesvl.projector.merge_size,
        })
    });
    let config = model_config.text_config();
    let (theta, scaling) = config
        .rope()
        .map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    if args.json {
        let report = serde_json::json!({
            "model_type": config.model_type,
            "parameters": parameters,
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "max_position_embeddings": config.max_position_embeddings,
            "tie_word_embeddings": config.tie_word_embeddings,
            "rope_theta": theta,
            "rope_type": scaling.rope_type,
            "vision": vision,
        });
        println!("{report}");
        return Ok(());
    }
    println!("model          {}", args.model.display());
    match &vision {
        Some(vision) => {
            println!(
                "type           andesvl (language model {})",
                config.model_type
            );
            let merge = &vision["merge_size"];
            println!(
                "vision         {} ({} layers, hidden {}, patch {}), projector merges {merge}×{merge}",
                vision["model_type"].as_str().unwrap_or_default(),
                vision["num_hidden_layers"],
                vision["hidden_size"],
                vision["patch_size"],
            );
        }
        None => println!("type           {}", config.model_type),
    }
    println!(
        "parameters     {parameters} ({:.3} B)",
        parameters as f64 / 1e9
    );
    println!(
        "layers         {} × (hidden {}, MLP {})",
        config.num_hidden_layers, config.hidden_size, config.intermediate_size
    );
    println!(
        "attention      {} query heads, {} key/value heads, head_dim {}",
        config.num_attention_heads, config.num_key_value_heads, config.head_dim
    );
    println!("vocabulary     {}", config.vocab_size);
    println!("context        {}", config.max_position_embeddings);
    println!(
        "rope           theta {theta}, {}{}",
        scaling.rope_type,
        scaling.factor.map(|f| format!(" ×{f}")).unwrap_or_default()
    );
    println!(
        "LM head        {}",
        if config.tie_word_embeddings {
            "tied to the embedding"
        } else {
            "separate"
        }
    );
    Ok(())
}
