//! Adapters in the PEFT layout, so that PyTorch users load andes adapters with
//! `PeftModel.from_pretrained` and andes loads theirs:
//!
//! ```text
//! adapter_config.json        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": [...], ...}
//! adapter_model.safetensors  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  [r, in]
//!                            base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight  [out, r]
//! ```
//!
//! The adapter's name is not in the tensor names (PEFT strips it on save). Import accepts
//! plain LoRA only: DoRA, rsLoRA, per-module ranks, biases and the other variants are refused
//! with the key that asks for them, rather than loaded into something that computes otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Factor, LoraConfig, LoraError, LoraLinear, LoraTarget, factor_param_ids};
use crate::checkpoint::{SafetensorsShards, write_atomically};
use crate::error::ModelError;
use crate::qwen3::Qwen3ForCausalLM;

/// File name of a PEFT adapter's configuration.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// File name of a PEFT adapter's weights.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// PEFT's saved name of one factor (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
pub fn peft_tensor_name(layer: usize, target: LoraTarget, factor: Factor) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.weight",
        target.module_path(),
        factor.peft_name()
    )
}

/// Writes adapter `name` of `model` to `dir` as PEFT writes it (`adapter_config.json` with
/// `base_model_name_or_path`, `adapter_model.safetensors` in f32); each file atomically, the
/// weights first so that a config always finds its weights.
pub fn export_peft_adapter(
    model: &Qwen3ForCausalLM,
    name: &str,
    dir: &Path,
    base_model_name_or_path: &str,
) -> Result<(), LoraError> {
    model.ensure_attached(name)?;
    let config = model
        .adapter_config(name)
        .expect("an attached adapter has a configuration");
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let tensors = host_tensors(model, name);
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let safetensors_error = |e: safetensors::SafeTensorError| ModelError::Safetensors {
        path: weights_path.clone(),
        message: format!("{e:?}"),
    };
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.as_str(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(safetensors_error)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(safetensors_error)?;
    write_atomically(&weights_path, &bytes)?;
    let json = serde_json::to_vec_pretty(&peft_config_json(&config, base_model_name_or_path))
        .expect("a JSON value serializes");
    write_atomically(&dir.join(ADAPTER_CONFIG_FILE), &json)?;
    Ok(())
}

/// Adapter `name`'s factors as `(PEFT name, PyTorch shape, little-endian f32 bytes)`.
fn host_tensors(model: &Qwen3ForCausalLM, name: &str) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let mut tensors = Vec::new();
    for (layer, target, linear) in model.adapted_linears() {
        let Some(adapter) = linear.adapter(name) else {
            continue;
        };
        for (factor, weight) in [
            (Factor::A, &adapter.lora_a.weight),
            (Factor::B, &adapter.lora_b.weight),
        ] {
            // Burn's `[in, out]` layout is the transpose of PyTorch's `[out, in]`.
            let data = weight.val().transpose().into_data().convert::<f32>();
            let shape = data.shape().as_slice().to_vec();
            let values = data.as_slice::<f32>().expect("converted to f32");
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((peft_tensor_name(layer, target, factor), shape, bytes));
        }
    }
    tensors
}

/// The `adapter_config.json` PEFT writes for a plain LoRA on a causal LM.
fn peft_config_json(config: &LoraConfig, base_model_name_or_path: &str) -> Value {
    // PEFT types lora_alpha as an int; keep integral values integral.
    let alpha = if config.alpha.fract() == 0.0 && config.alpha.abs() < 1e15 {
        json!(config.alpha as i64)
    } else {
        json!(config.alpha)
    };
    let targets: Vec<&str> = config.target_modules.iter().map(|t| t.name()).collect();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "lora_bias": false,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

/// The keys of `adapter_config.json` andes reads; any other key must hold its default.
#[derive(Deserialize)]
struct PeftConfigFile {
    peft_type: String,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: Value,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    init_lora_weights: Option<Value>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// Keys of PEFT's `LoraConfig` that change what the adapter computes (or which weights it
/// has), with what they ask for; each must be absent, null, false or empty.
const UNSUPPORTED: [(&str, &str); 19] = [
    ("use_dora", "DoRA (weight-decomposed LoRA)"),
    ("use_rslora", "rsLoRA scaling alpha/√r"),
    (
        "fan_in_fan_out",
        "base weights stored [in, out] (GPT-2 Conv1D)",
    ),
    ("lora_bias", "a bias on lora_B"),
    ("rank_pattern", "per-module ranks"),
    ("alpha_pattern", "per-module alphas"),
    ("layers_to_transform", "adapting only some layers"),
    ("modules_to_save", "fully trained copies of extra modules"),
    ("trainable_token_indices", "trainable token embeddings"),
    ("layer_replication", "replicated layers"),
    (
        "target_parameters",
        "adapters on parameters rather than modules",
    ),
    ("exclude_modules", "excluded modules"),
    ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
    ("use_qalora", "QA-LoRA"),
    ("use_bdlora", "block-diagonal LoRA"),
    ("arrow_config", "Arrow routing"),
    ("kasa_config", "KaSA"),
    ("velora_config", "VeLoRA"),
    ("monteclora_config", "MonteCLoRA"),
];

/// `init_lora_weights` values that leave the base model as it was; the others (PiSSA, OLoRA,
/// CorDA, LoftQ, LoRA-GA) train against a modified base unless PEFT converted the adapter.
const BASE_PRESERVING_INITS: [&str; 3] = ["gaussian", "orthogonal", "eva"];

fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Reads and checks `adapter_config.json`, returning the andes configuration it describes.
pub fn read_peft_config(path: &Path) -> Result<LoraConfig, LoraError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    let fail = |key: &str, message: String| LoraError::AdapterConfig {
        path: path.to_owned(),
        key: key.into(),
        message,
    };
    let mut de = serde_json::Deserializer::from_str(&text);
    let file: PeftConfigFile = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| fail(&e.path().to_string(), e.inner().to_string()))?;
    file.check_plain_lora().map_err(|(key, m)| fail(key, m))?;
    let target_modules = file.targets().map_err(|m| fail("target_modules", m))?;
    let config = LoraConfig {
        rank: file.r,
        alpha: file.lora_alpha,
        dropout: file.lora_dropout,
        target_modules,
    };
    config.validate().map_err(|e| match e {
        LoraError::InvalidConfig { key, message } => fail(&key, message),
        other => other,
    })?;
    Ok(config)
}

impl PeftConfigFile {
    /// Fails with `(key, message)` on the first option that makes this more than plain LoRA
    /// on a causal LM.
    fn check_plain_lora(&self) -> Result<(), (&'static str, String)> {
        if self.peft_type != "LORA" {
            let found = format!("found {:?}, expected \"LORA\"", self.peft_type);
            return Err(("peft_type", found));
        }
        if let Some(task) = self.task_type.as_deref()
            && task != "CAUSAL_LM"
        {
            let found = format!("found {task:?}, expected \"CAUSAL_LM\" (Qwen3ForCausalLM)");
            return Err(("task_type", found));
        }
        if let Some(bias) = self.bias.as_deref()
            && bias != "none"
        {
            let found =
                format!("found {bias:?}; andes adapters train no biases, expected \"none\"");
            return Err(("bias", found));
        }
        match &self.init_lora_weights {
            None | Some(Value::Null | Value::Bool(_)) => {}
            Some(Value::String(init)) if BASE_PRESERVING_INITS.contains(&init.as_str()) => {}
            Some(other) => {
                let found = format!(
                    "found {other}, expected true, false, \"gaussian\", \"orthogonal\" or \"eva\": \
                     this initialisation modifies the base weights, so the adapter only fits that \
                     modified base (PEFT converts it with path_initial_model_for_weight_conversion)"
                );
                return Err(("init_lora_weights", found));
            }
        }
        for (key, what) in UNSUPPORTED {
            if let Some(value) = self.other.get(key)
                && !is_unset(value)
            {
                let found =
                    format!("found {value}: {what} is not supported; andes imports plain LoRA");
                return Err((key, found));
            }
        }
        Ok(())
    }

    /// `target_modules` as andes targets; a regex pattern or an unknown module is an error.
    fn targets(&self) -> Result<Vec<LoraTarget>, String> {
        let Value::Array(items) = &self.target_modules else {
            return Err(format!(
                "found {}, expected a list of module names (patterns are not read)",
                self.target_modules
            ));
        };
        items
            .iter()
            .map(|item| {
                item.as_str().and_then(LoraTarget::from_name).ok_or_else(|| {
                    format!(
                        "found {item}, expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, \
                         up_proj, down_proj"
                    )
                })
            })
            .collect()
    }
}

/// Reads the PEFT adapter in `dir` and attaches it to `model` as adapter `name` (not made
/// active), freezing the base. Every tensor the configuration implies must be present with
/// the shape the model implies, and every tensor present must be used; the file is f32, bf16
/// or f16, and the factors take the base weights' dtype. Returns the adapter's configuration.
pub fn import_peft_adapter(
    model: &mut Qwen3ForCausalLM,
    dir: &Path,
    name: &str,
) -> Result<LoraConfig, LoraError> {
    let config = read_peft_config(&dir.join(ADAPTER_CONFIG_FILE))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !weights_path.exists() {
        let hint = if dir.join("adapter_model.bin").exists() {
            "; only adapter_model.bin (pickle) is there: re-save it with PEFT's \
             save_pretrained(safe_serialization=True)"
        } else {
            ""
        };
        return Err(ModelError::Io {
            path: weights_path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the adapter weights file does not exist{hint}"),
            ),
        }
        .into());
    }
    let mut shards = SafetensorsShards::open_file(&weights_path)?;
    let mut pieces = HashMap::new();
    for (layer, target, linear) in model.adapted_linears() {
        if !config.target_modules.contains(&target) {
            continue;
        }
        let base = &linear.base_layer;
        let [d_in, d_out] = base.weight.lazy_shape().dims();
        let (device, dtype) = (base.weight.lazy_device(), base.weight.val().dtype());
        let r = config.rank;
        let mut read = |factor: Factor, expected: [usize; 2]| {
            let tensor = peft_tensor_name(layer, target, factor);
            let reason = format!(
                "r = {r} in {ADAPTER_CONFIG_FILE}; the model's {} maps {d_in} → {d_out}",
                target.name()
            );
            check_shape(&shards, &weights_path, &tensor, &expected, reason)?;
            let data = shards.read_f32(&tensor, &expected)?;
            Ok::<_, LoraError>(
                Tensor::<2>::from_data(data, &device)
                    .cast(dtype)
                    .transpose(),
            )
        };
        let factors = [read(Factor::A, [r, d_in])?, read(Factor::B, [d_out, r])?];
        let ids = factor_param_ids(layer, target, name);
        let piece = LoraLinear::from_factors(name, factors, config.alpha, config.dropout, ids);
        pieces.insert((layer, target), piece);
    }
    shards.ensure_all_used()?;
    model.attach_adapter(name, &config, |layer, target, _| {
        Ok(pieces
            .remove(&(layer, target))
            .expect("a piece was read for every targeted projection"))
    })?;
    Ok(config)
}

fn check_shape(
    shards: &SafetensorsShards,
    path: &Path,
    tensor: &str,
    expected: &[usize],
    reason: String,
) -> Result<(), LoraError> {
    match shards.shape(tensor) {
        None => Err(LoraError::MissingTensor {
            path: PathBuf::from(path),
            tensor: tensor.into(),
            expected: expected.to_vec(),
            reason,
        }),
        Some((found, _)) if found != expected => Err(LoraError::ShapeMismatch {
            path: PathBuf::from(path),
            tensor: tensor.into(),
            found: found.to_vec(),
            expected: expected.to_vec(),
            reason,
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Device};
    use safetensors::SafeTensors;

    use super::*;
    use crate::checkpoint::load_qwen3;

    type HostTensors = Vec<(String, Vec<usize>, Vec<u8>)>;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// A copy of the PEFT fixture adapter with its config and tensors edited.
    fn edited_adapter(
        edit_config: impl FnOnce(&mut Map<String, Value>),
        edit_tensors: impl FnOnce(&mut HostTensors),
    ) -> tempfile::TempDir {
        let source = fixtures().join("lora/peft-adapter");
        let text = std::fs::read_to_string(source.join(ADAPTER_CONFIG_FILE)).unwrap();
        let mut config: Map<String, Value> = serde_json::from_str(&text).unwrap();
        edit_config(&mut config);
        let bytes = std::fs::read(source.join(ADAPTER_WEIGHTS_FILE)).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: HostTensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
            .collect();
        edit_tensors(&mut tensors);
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                (
                    name,
                    TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let weights = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.path().join(ADAPTER_WEIGHTS_FILE), weights).unwrap();
        let config = serde_json::to_string(&config).unwrap();
        std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), config).unwrap();
        dir
    }

    /// The import error for `dir`, checking that the failed import attached nothing.
    fn import_error(dir: &Path) -> String {
        let path = fixtures().join("qwen3-tiny-untied-mha-f32");
        let (_, mut model) = load_qwen3(&path, &Device::flex(), DType::F32).unwrap();
        let error = import_peft_adapter(&mut model, dir, "x").unwrap_err();
        assert!(model.adapter_names().is_empty());
        eprintln!("{error}");
        error.to_string()
    }

    #[test]
    fn options_that_change_the_maths_are_refused_by_key() {
        let cases = [
            ("use_dora", json!(true)),
            ("use_rslora", json!(true)),
            ("fan_in_fan_out", json!(true)),
            ("rank_pattern", json!({"q_proj": 8})),
            ("modules_to_save", json!(["lm_head"])),
            ("init_lora_weights", json!("pissa")),
            ("peft_type", json!("LOHA")),
            ("bias", json!("all")),
            ("target_modules", json!(["q_proj", "lm_head"])),
            ("target_modules", json!(".*proj")),
            ("r", json!(0)),
        ];
        for (key, value) in cases {
            let dir = edited_adapter(|c| drop(c.insert(key.into(), value.clone())), |_| {});
            let error = import_error(dir.path());
            assert!(
                error.contains(ADAPTER_CONFIG_FILE) && error.contains(&format!("`{key}`")),
                "{key} = {value}: {error}"
            );
        }
    }

    #[test]
    fn a_missing_tensor_is_named_with_its_file() {
        let tensor = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
        let dir = edited_adapter(|_| {}, |t| t.retain(|(name, _, _)| name != tensor));
        let error = import_error(dir.path());
        assert!(
            error.contains(tensor) && error.contains(ADAPTER_WEIGHTS_FILE),
            "{error}"
        );
        assert!(
            error.contains("missing") && error.contains("[64, 4]"),
            "{error}"
        );
    }

    #[test]
    fn a_rank_that_disagrees_with_the_tensors_is_a_shape_error() {
        let dir = edited_adapter(|c| drop(c.insert("r".into(), json!(8))), |_| {});
        let error = import_error(dir.path());
        let tensor = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
        assert!(
            error.contains(tensor) && error.contains("[4, 64]") && error.contains("[8, 64]"),
            "{error}"
        );
    }

    #[test]
    fn tensors_the_config_does_not_explain_are_refused() {
        let extra = "base_model.model.lm_head.lora_A.weight";
        let dir = edited_adapter(
            |_| {},
            |t| t.push((extra.into(), vec![4, 64], vec![0; 4 * 4 * 64])),
        );
        let error = import_error(dir.path());
        assert!(error.contains(extra), "{error}");
    }
}
