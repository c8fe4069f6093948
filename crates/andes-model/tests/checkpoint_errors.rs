//! A damaged or mismatched checkpoint is refused with an error naming the file and the
//! tensor or key, never loaded half-way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use andes_model::checkpoint::{SaveDtype, load_qwen3, save_qwen3};
use andes_model::generate::token_tensor;
use burn::tensor::{DType, Device};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

const FIXTURE: &str = "qwen3-tiny-untied-mha-f32";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(FIXTURE)
}

/// A copy of the fixture in a temporary directory.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Rewrites `model.safetensors` of `dir` after `edit` changes its tensor list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(&views, None).unwrap()).unwrap();
}

fn load_error(dir: &Path) -> String {
    match load_qwen3(dir, &Device::flex(), DType::F32) {
        Ok(_) => panic!("{} loaded but should have been refused", dir.display()),
        Err(error) => error.to_string(),
    }
}

const Q_PROJ: &str = "model.layers.1.self_attn.q_proj.weight";
const GATE_PROJ: &str = "model.layers.0.mlp.gate_proj.weight";

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |t| t.retain(|(name, ..)| name != Q_PROJ));
    let error = load_error(dir.path());
    assert!(
        error.contains(Q_PROJ) && error.contains("missing"),
        "{error}"
    );
}

#[test]
fn extra_tensor_is_named() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |t| {
        t.push((
            "model.layers.9.mlp.extra.weight".into(),
            Dtype::F32,
            vec![2],
            vec![0; 8],
        ))
    });
    let error = load_error(dir.path());
    assert!(
        error.contains("model.layers.9.mlp.extra.weight") && error.contains("model.safetensors"),
        "{error}"
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |t| {
        let entry = t.iter_mut().find(|(name, ..)| name == GATE_PROJ).unwrap();
        entry.2 = vec![entry.2[1], entry.2[0]];
    });
    let error = load_error(dir.path());
    assert!(
        error.contains(GATE_PROJ) && error.contains("[64, 96]") && error.contains("[96, 64]"),
        "{error}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |t| {
        let entry = t.iter_mut().find(|(name, ..)| name == Q_PROJ).unwrap();
        entry.1 = Dtype::I32;
    });
    let error = load_error(dir.path());
    assert!(error.contains(Q_PROJ) && error.contains("I32"), "{error}");
}

#[test]
fn truncated_file_is_refused() {
    let dir = copy_fixture();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let error = load_error(dir.path());
    assert!(
        error.contains("model.safetensors") && error.contains("truncated"),
        "{error}"
    );
}

#[test]
fn config_key_of_wrong_type_is_named() {
    let dir = copy_fixture();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": \"two\""),
    )
    .unwrap();
    let error = load_error(dir.path());
    assert!(
        error.contains("config.json") && error.contains("num_hidden_layers"),
        "{error}"
    );
}

#[test]
fn an_activation_qwen3_does_not_use_is_refused_by_key() {
    let dir = copy_fixture();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""),
    )
    .unwrap();
    let error = load_error(dir.path());
    assert!(
        error.contains("hidden_act") && error.contains("gelu") && error.contains("silu"),
        "{error}"
    );
}

#[test]
fn unsupported_rope_scaling_is_refused() {
    let dir = copy_fixture();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"rope_type\": \"default\"", "\"rope_type\": \"llama3\""),
    )
    .unwrap();
    let error = load_error(dir.path());
    assert!(
        error.contains("rope_parameters.rope_type")
            && error.contains("llama3")
            && error.contains("yarn"),
        "{error}"
    );
}

#[test]
fn shard_index_naming_a_wrong_file_is_refused() {
    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny-bf16-sharded");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    // The fixture stores the final norm in the third shard; the index now claims the first.
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["weight_map"]["model.norm.weight"],
        "model-00003-of-00003.safetensors"
    );
    json["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors".into();
    std::fs::write(&index, serde_json::to_string(&json).unwrap()).unwrap();
    let error = load_error(dir.path());
    assert!(error.contains("weight_map.model.norm.weight"), "{error}");
}

#[test]
fn saved_checkpoint_reloads_to_identical_logits() {
    let device = Device::flex();
    let (config, model) = load_qwen3(&fixture(), &device, DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_qwen3(&model, &config, dir.path(), SaveDtype::F32).unwrap();
    let (config2, model2) = load_qwen3(dir.path(), &device, DType::F32).unwrap();
    assert_eq!(config, config2);
    let ids = [5u32, 17, 300, 42, 7];
    let logits = |m: &andes_model::qwen3::Qwen3ForCausalLM| {
        m.forward(token_tensor(&ids, &device), &mut m.new_cache())
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    assert_eq!(logits(&model), logits(&model2));
}
