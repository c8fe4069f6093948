//! Loading what `andes generate --model` takes into the runtime: a package (its packed codes
//! kept packed), a 1+N bundle (the package once, every adapter attached, none active), or a
//! float Hugging Face checkpoint (its linears as f32 matrices: the float row of a benchmark).
//! Everything a package holds is checked on the way in (`andes_package::open_package`:
//! manifest version, checksums, alignment, plan, every packed part's length and padding);
//! an AndesVL model's vision side loads as the float model it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use andes_model::ModelConfig;
use andes_model::andesvl::{VisionSide, load_vision_side};
use andes_model::checkpoint::SafetensorsShards;
use andes_model::lora::Factor;
use andes_model::lora::LoraTarget;
use andes_model::lora::peft::{ADAPTER_WEIGHTS_FILE, peft_tensor_name, read_peft_config};
use andes_model::qwen3::Qwen3Config;
use andes_package::{
    ADAPTERS_DIR, PACKAGE_DIR, PackageParts, VISION_FILE, is_package, is_package_bundle,
    open_package, open_package_bundle,
};
use andes_quant::{FloatPrecision, QuantizedTensor};
use burn::tensor::{DType, Device};

use crate::decoder::{Adapter, Block, Decoder, DecoderShape, LoraDelta, PROJECTIONS};
use crate::error::RuntimeError;
use crate::packed::PackedMatrix;

/// What was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A package.
    Package,
    /// A package bundle.
    Bundle,
    /// A float checkpoint.
    Checkpoint,
}

/// A model ready to decode.
pub struct Runtime {
    /// The language model.
    pub decoder: Decoder,
    /// Its configuration (AndesVL when images can be shown).
    pub config: ModelConfig,
    /// The directory with its tokenizer and image preprocessing.
    pub files_dir: PathBuf,
    /// An AndesVL model's vision tower and projector (float, on Burn's CPU backend).
    pub vision: Option<VisionSide>,
    /// What the path held.
    pub source: Source,
    /// Seconds loading took, checks and repacking included.
    pub load_seconds: f64,
}

impl Runtime {
    /// Loads `path`: a bundle, a package, or a Hugging Face checkpoint directory.
    pub fn load(path: &Path) -> Result<Self, RuntimeError> {
        let start = Instant::now();
        let mut runtime = if is_package_bundle(path) {
            let (manifest, parts) = open_package_bundle(path)?;
            let package = path.join(PACKAGE_DIR);
            let mut runtime = from_package(parts, &package, Source::Bundle)?;
            let config = runtime.config.text_config().clone();
            for adapter in &manifest.adapters {
                let dir = path.join(ADAPTERS_DIR).join(&adapter.name);
                runtime
                    .decoder
                    .attach(&adapter.name, read_adapter(&dir, &config)?);
            }
            runtime
        } else if is_package(path) {
            from_package(open_package(path)?, path, Source::Package)?
        } else {
            from_checkpoint(path)?
        };
        runtime.load_seconds = start.elapsed().as_secs_f64();
        Ok(runtime)
    }

    /// Makes `adapter` active: with a bundle, the name of one of its adapters; otherwise a
    /// PEFT adapter directory, read and attached under its path.
    pub fn use_adapter(&mut self, adapter: Option<&Path>) -> Result<(), RuntimeError> {
        let Some(adapter) = adapter else {
            return self.decoder.activate(None).map_err(RuntimeError::Request);
        };
        let name = adapter.to_string_lossy().to_string();
        if self.source != Source::Bundle {
            let config = self.config.text_config().clone();
            self.decoder.attach(&name, read_adapter(adapter, &config)?);
        }
        self.decoder.activate(Some(&name)).map_err(|message| {
            RuntimeError::Request(format!("{}: {message}", self.files_dir.display()))
        })
    }
}

fn from_package(parts: PackageParts, dir: &Path, source: Source) -> Result<Runtime, RuntimeError> {
    let PackageParts {
        manifest,
        config,
        quantized,
        tables,
        float_bytes,
        ..
    } = parts;
    let float_path = dir.join(andes_package::FLOAT_FILE);
    let floats = SafetensorsShards::from_memory(&float_path, &float_bytes)?;
    drop(float_bytes);
    let mut weights = PackageWeights {
        floats,
        quantized: quantized.into_iter(),
        tables: tables.into_iter().collect(),
        // f16 tables are kept in f16: what the package holds, half the bytes a step reads
        half: manifest.target.unquantized.precision == FloatPrecision::F16,
    };
    let decoder = build_decoder(config.text_config(), &mut weights)?;
    let vision = match config.andesvl() {
        Some(andesvl) => {
            let mut shards = SafetensorsShards::open_file(&dir.join(VISION_FILE))?;
            Some(load_vision_side(
                andesvl,
                &mut shards,
                &Device::flex(),
                DType::F32,
            )?)
        }
        None => None,
    };
    Ok(Runtime {
        decoder,
        config,
        files_dir: dir.to_owned(),
        vision,
        source,
        load_seconds: 0.0,
    })
}

fn from_checkpoint(dir: &Path) -> Result<Runtime, RuntimeError> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let mut shards = SafetensorsShards::open(dir)?;
    let vision = match config.andesvl() {
        Some(andesvl) => Some(load_vision_side(
            andesvl,
            &mut shards,
            &Device::flex(),
            DType::F32,
        )?),
        None => None,
    };
    let prefix = if config.andesvl().is_some() {
        "language_model."
    } else {
        ""
    };
    let decoder = build_decoder(
        config.text_config(),
        &mut CheckpointWeights { shards, prefix },
    )?;
    Ok(Runtime {
        decoder,
        config,
        files_dir: dir.to_owned(),
        vision,
        source: Source::Checkpoint,
        load_seconds: 0.0,
    })
}

/// The language model's tensors by Hugging Face name, wherever they are stored.
trait Weights {
    /// A norm's weight, in f32.
    fn float(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, RuntimeError>;
    /// An embedding or head table.
    fn table(&mut self, name: &str, shape: [usize; 2]) -> Result<PackedMatrix, RuntimeError>;
    /// Projection `name` (without `.weight`), `[out, in]`; called in model order.
    fn linear(&mut self, name: &str, shape: [usize; 2]) -> Result<PackedMatrix, RuntimeError>;
    /// Whether tensor `name` is there.
    fn has(&self, name: &str) -> bool;
}

/// A package: its float tensors, its packed linears in model order, and its quantized tables
/// by name (none where the target keeps them float).
struct PackageWeights {
    floats: SafetensorsShards,
    quantized: std::vec::IntoIter<(String, QuantizedTensor)>,
    tables: BTreeMap<String, QuantizedTensor>,
    half: bool,
}

impl Weights for PackageWeights {
    fn float(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, RuntimeError> {
        Ok(f32_values(self.floats.read_f32(name, shape)?))
    }
    fn table(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
    ) -> Result<PackedMatrix, RuntimeError> {
        if let Some(table) = name
            .strip_suffix(".weight")
            .and_then(|n| self.tables.get(n))
        {
            // open_package checked its shape against the config
            return Ok(PackedMatrix::from_quantized(table));
        }
        if self.half
            && let Some(values) = self.floats.read_f16(name, &[rows, cols])?
        {
            return Ok(PackedMatrix::from_f16(rows, cols, values));
        }
        Ok(PackedMatrix::from_f32(
            rows,
            cols,
            self.float(name, &[rows, cols])?,
        ))
    }
    fn linear(&mut self, name: &str, _: [usize; 2]) -> Result<PackedMatrix, RuntimeError> {
        let (found, tensor) = self
            .quantized
            .next()
            .expect("open_package checked one packed linear per projection");
        debug_assert_eq!(found, name);
        Ok(PackedMatrix::from_quantized(&tensor))
    }
    fn has(&self, name: &str) -> bool {
        self.floats.contains(name)
            || name
                .strip_suffix(".weight")
                .is_some_and(|n| self.tables.contains_key(n))
    }
}

/// A float checkpoint, its language model under `prefix` (`language_model.` in AndesVL).
struct CheckpointWeights {
    shards: SafetensorsShards,
    prefix: &'static str,
}

impl Weights for CheckpointWeights {
    fn float(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, RuntimeError> {
        let name = format!("{}{name}", self.prefix);
        Ok(f32_values(self.shards.read_f32(&name, shape)?))
    }
    fn table(
        &mut self,
        name: &str,
        [rows, cols]: [usize; 2],
    ) -> Result<PackedMatrix, RuntimeError> {
        Ok(PackedMatrix::from_f32(
            rows,
            cols,
            self.float(name, &[rows, cols])?,
        ))
    }
    fn linear(&mut self, name: &str, shape: [usize; 2]) -> Result<PackedMatrix, RuntimeError> {
        self.table(&format!("{name}.weight"), shape)
    }
    fn has(&self, name: &str) -> bool {
        self.shards.contains(&format!("{}{name}", self.prefix))
    }
}

fn f32_values(data: burn::tensor::TensorData) -> Vec<f32> {
    data.try_into_vec::<f32>().expect("the reader yields f32")
}

/// The decoder of `config` from `weights`.
fn build_decoder(config: &Qwen3Config, weights: &mut dyn Weights) -> Result<Decoder, RuntimeError> {
    let (hidden, d) = (config.hidden_size, config.head_dim);
    let (q, kv, inner) = (
        config.num_attention_heads * d,
        config.num_key_value_heads * d,
        config.intermediate_size,
    );
    let shapes = [
        [q, hidden],
        [kv, hidden],
        [kv, hidden],
        [hidden, q],
        [inner, hidden],
        [inner, hidden],
        [hidden, inner],
    ];
    let mut blocks = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let layer = format!("model.layers.{i}");
        let mut projections = Vec::with_capacity(7);
        for (name, shape) in PROJECTIONS.iter().zip(shapes) {
            projections.push(weights.linear(&format!("{layer}.{name}"), shape)?);
        }
        blocks.push(Block {
            input_norm: weights.float(&format!("{layer}.input_layernorm.weight"), &[hidden])?,
            q_norm: weights.float(&format!("{layer}.self_attn.q_norm.weight"), &[d])?,
            k_norm: weights.float(&format!("{layer}.self_attn.k_norm.weight"), &[d])?,
            post_norm: weights.float(
                &format!("{layer}.post_attention_layernorm.weight"),
                &[hidden],
            )?,
            projections: projections.try_into().expect("seven projections"),
        });
    }
    let vocab = config.vocab_size;
    let embed = weights.table("model.embed_tokens.weight", [vocab, hidden])?;
    let head = if config.tie_word_embeddings && !weights.has("lm_head.weight") {
        None
    } else {
        Some(weights.table("lm_head.weight", [vocab, hidden])?)
    };
    let rope = config
        .rotary()
        .map_err(|(key, message)| RuntimeError::Request(format!("{key}: {message}")))?;
    Ok(Decoder::new(
        DecoderShape {
            hidden,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: d,
            vocab,
            eps: config.rms_norm_eps as f32,
            max_positions: rope.context(),
        },
        embed,
        head,
        weights.float("model.norm.weight", &[hidden])?,
        blocks,
        rope,
    ))
}

/// A PEFT adapter directory as runtime updates: `lora_A` `[r, in]`, `lora_B` `[out, r]` of
/// every target module, scale `alpha / r`.
pub fn read_adapter(dir: &Path, config: &Qwen3Config) -> Result<Adapter, RuntimeError> {
    let lora = read_peft_config(&dir.join(andes_model::lora::peft::ADAPTER_CONFIG_FILE))
        .map_err(|e| RuntimeError::file(dir, e.to_string()))?;
    let mut shards = SafetensorsShards::open_file(&dir.join(ADAPTER_WEIGHTS_FILE))?;
    let (hidden, d) = (config.hidden_size, config.head_dim);
    let (q, kv, inner) = (
        config.num_attention_heads * d,
        config.num_key_value_heads * d,
        config.intermediate_size,
    );
    let dims = [
        (hidden, q),
        (hidden, kv),
        (hidden, kv),
        (q, hidden),
        (hidden, inner),
        (hidden, inner),
        (inner, hidden),
    ];
    let r = lora.rank;
    let mut adapter = Vec::with_capacity(config.num_hidden_layers);
    for layer in 0..config.num_hidden_layers {
        let mut deltas: [Option<LoraDelta>; 7] = Default::default();
        for (slot, target) in LoraTarget::ALL.into_iter().enumerate() {
            if !lora.target_modules.contains(&target) {
                continue;
            }
            let (d_in, d_out) = dims[slot];
            let a = shards.read_f32(&peft_tensor_name(layer, target, Factor::A), &[r, d_in])?;
            let b = shards.read_f32(&peft_tensor_name(layer, target, Factor::B), &[d_out, r])?;
            deltas[slot] = Some(LoraDelta {
                a: PackedMatrix::from_f32(r, d_in, f32_values(a)),
                b: PackedMatrix::from_f32(d_out, r, f32_values(b)),
                scale: lora.scaling() as f32,
            });
        }
        adapter.push(deltas);
    }
    Ok(adapter)
}
