//! `andes info`: what a model directory holds.

use std::path::PathBuf;

use andes_model::qwen3::{Qwen3Config, Qwen3ForCausalLM};
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

/// Runs `andes info`; reads only `config.json` (parameters are counted from shapes).
pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let config = Qwen3Config::from_file(&args.model.join("config.json"))?;
    let parameters = Qwen3ForCausalLM::new(&config, &Device::flex())?.num_params();
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
        });
        println!("{report}");
        return Ok(());
    }
    println!("model          {}", args.model.display());
    println!("type           {}", config.model_type);
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
