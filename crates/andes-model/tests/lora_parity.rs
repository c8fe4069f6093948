//! LoRA adapters against PEFT: a PEFT adapter imported into andes gives PEFT's logits, andes'
//! export round-trips, N adapters share one base, and merging is exact to float rounding.
//! Fixture: `fixtures/lora/` from scripts/fixtures/make_lora_fixtures.py.
//!
//! With `ANDES_EXPORT_DIR` set, the export test also writes an andes-made adapter and its
//! logits there for the peer check with real PEFT:
//! `python3 scripts/fixtures/check_peft_export.py $ANDES_EXPORT_DIR/adapter
//!  fixtures/qwen3-tiny-untied-mha-f32 $ANDES_EXPORT_DIR/andes_logits.json`.

mod common;
use common::relative_error;

use std::path::{Path, PathBuf};

use andes_model::checkpoint::{SaveDtype, load_qwen3, save_qwen3};
use andes_model::generate::token_tensor;
use andes_model::lora::peft::{
    ADAPTER_WEIGHTS_FILE, export_peft_adapter, import_peft_adapter, read_peft_config,
};
use andes_model::lora::{LoraConfig, LoraError, LoraTarget};
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::tensor::{DType, Device, Distribution, Tensor};
use safetensors::SafeTensors;

const BASE: &str = "qwen3-tiny-untied-mha-f32";

fn fixtures() -> PathBuf {
    std::env::var_os("ANDES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
}

fn peft_adapter_dir() -> PathBuf {
    fixtures().join("lora/peft-adapter")
}

struct Reference {
    prompt_ids: Vec<u32>,
    base_logits: Vec<f32>,
    adapted_logits: Vec<f32>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("lora/reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |key: &str| -> Vec<f32> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    Reference {
        prompt_ids: json["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect(),
        base_logits: floats("base_logits"),
        adapted_logits: floats("adapted_logits"),
    }
}

fn load_base(device: &Device) -> Qwen3ForCausalLM {
    load_qwen3(&fixtures().join(BASE), device, DType::F32)
        .unwrap()
        .1
}

fn with_peft_adapter(device: &Device) -> Qwen3ForCausalLM {
    let mut model = load_base(device);
    import_peft_adapter(&mut model, &peft_adapter_dir(), "peft").unwrap();
    model
}

fn logits(model: &Qwen3ForCausalLM, ids: &[u32], device: &Device) -> Vec<f32> {
    model
        .forward(token_tensor(ids, device), &mut model.new_cache())
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Adds adapter `name` (r = 8, alpha = 12, four targets) with B drawn from N(0, 0.05²), so that
/// it changes the output (a fresh adapter's B is zero).
fn add_random_adapter(model: &mut Qwen3ForCausalLM, name: &str) {
    let config = LoraConfig {
        rank: 8,
        alpha: 12.0,
        dropout: 0.05,
        target_modules: vec![
            LoraTarget::QProj,
            LoraTarget::VProj,
            LoraTarget::OProj,
            LoraTarget::DownProj,
        ],
    };
    model.add_adapter(name, &config).unwrap();
    for layer in &mut model.model.layers {
        for target in LoraTarget::ALL {
            if let Some(adapter) = target.of_mut(layer).adapter_mut(name) {
                let b = adapter.lora_b.weight.clone();
                adapter.lora_b.weight = b.map(|w| w.random_like(Distribution::Normal(0.0, 0.05)));
            }
        }
    }
}

/// Every tensor of a safetensors file as `(name, shape, f32 values)`, sorted by name.
fn tensors_of(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

#[test]
fn peft_adapter_logits_match_peft_within_1e_4() {
    let device = Device::flex();
    let reference = reference();
    let mut model = with_peft_adapter(&device);
    assert_eq!(
        model.adapter_config("peft").unwrap(),
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.1,
            target_modules: LoraTarget::ALL.to_vec(),
        }
    );
    let base_error = relative_error(
        &logits(&model, &reference.prompt_ids, &device),
        &reference.base_logits,
    );
    model.set_active_adapter(Some("peft")).unwrap();
    let error = relative_error(
        &logits(&model, &reference.prompt_ids, &device),
        &reference.adapted_logits,
    );
    eprintln!("base logits vs transformers: {base_error:e}; adapted vs peft: {error:e}");
    assert!(base_error <= 1e-4, "base relative error {base_error:e}");
    assert!(error <= 1e-4, "adapted relative error {error:e}");
}

#[test]
fn export_reimports_identically_and_peft_files_round_trip() {
    let device = Device::flex();
    let reference = reference();
    let tmp = tempfile::tempdir().unwrap();

    // PEFT → andes → PEFT gives back PEFT's tensors bit for bit, and the same configuration.
    let model = with_peft_adapter(&device);
    let peft_again = tmp.path().join("peft-again");
    export_peft_adapter(&model, "peft", &peft_again, BASE).unwrap();
    let original = tensors_of(&peft_adapter_dir().join(ADAPTER_WEIGHTS_FILE));
    assert_eq!(original.len(), 2 * 7 * 2);
    assert_eq!(tensors_of(&peft_again.join(ADAPTER_WEIGHTS_FILE)), original);
    let sorted = |mut config: LoraConfig| {
        config.target_modules.sort();
        config
    };
    assert_eq!(
        sorted(read_peft_config(&peft_again.join("adapter_config.json")).unwrap()),
        sorted(read_peft_config(&peft_adapter_dir().join("adapter_config.json")).unwrap())
    );

    // An andes-made adapter exported and imported into a fresh base computes the same logits.
    let mut model = load_base(&device);
    add_random_adapter(&mut model, "ocr");
    model.set_active_adapter(Some("ocr")).unwrap();
    let expected = logits(&model, &reference.prompt_ids, &device);
    let exported = tmp.path().join("ocr");
    export_peft_adapter(&model, "ocr", &exported, BASE).unwrap();
    let mut reloaded = load_base(&device);
    let config = import_peft_adapter(&mut reloaded, &exported, "ocr").unwrap();
    assert_eq!(Some(config), model.adapter_config("ocr"));
    reloaded.set_active_adapter(Some("ocr")).unwrap();
    assert_eq!(logits(&reloaded, &reference.prompt_ids, &device), expected);

    if let Some(dir) = std::env::var_os("ANDES_EXPORT_DIR").map(PathBuf::from) {
        export_peft_adapter(&model, "ocr", &dir.join("adapter"), BASE).unwrap();
        let json = serde_json::json!({
            "prompt_ids": reference.prompt_ids,
            "logits": expected,
            "base_logits": reference.base_logits,
        });
        std::fs::write(dir.join("andes_logits.json"), json.to_string()).unwrap();
        eprintln!(
            "wrote the `ocr` adapter and its logits to {}",
            dir.display()
        );
    }
}

#[test]
fn switching_adapters_changes_logits_and_no_adapter_is_the_base_exactly() {
    let device = Device::flex();
    let ids = reference().prompt_ids;
    let base = logits(&load_base(&device), &ids, &device);
    let mut model = with_peft_adapter(&device);
    add_random_adapter(&mut model, "ocr");
    assert_eq!(model.adapter_names(), ["peft", "ocr"]);
    assert_eq!(model.active_adapter(), None);
    assert_eq!(logits(&model, &ids, &device), base);

    model.set_active_adapter(Some("peft")).unwrap();
    let peft = logits(&model, &ids, &device);
    model.set_active_adapter(Some("ocr")).unwrap();
    assert_eq!(model.active_adapter().as_deref(), Some("ocr"));
    let ocr = logits(&model, &ids, &device);
    let apart = relative_error(&ocr, &peft);
    let ocr_vs_base = relative_error(&ocr, &base);
    eprintln!("ocr vs peft {apart:e}; ocr vs base {ocr_vs_base:e}");
    assert!(apart > 1e-2 && ocr_vs_base > 1e-2);
    model.set_active_adapter(Some("peft")).unwrap();
    assert_eq!(logits(&model, &ids, &device), peft);
    model.set_active_adapter(None).unwrap();
    assert_eq!(logits(&model, &ids, &device), base);

    let error = model.set_active_adapter(Some("nope")).unwrap_err();
    assert!(matches!(error, LoraError::UnknownAdapter { .. }));
    assert!(error.to_string().contains("peft, ocr"), "{error}");
    let error = model
        .add_adapter("ocr", &LoraConfig::new(2, 4.0, &[LoraTarget::QProj]))
        .unwrap_err();
    assert!(matches!(error, LoraError::DuplicateAdapter(_)), "{error}");
}

#[test]
fn merged_model_matches_adapter_and_unmerge_restores_the_base() {
    let device = Device::flex();
    let ids = reference().prompt_ids;
    let base_model = load_base(&device);
    let mut model = with_peft_adapter(&device);
    model.set_active_adapter(Some("peft")).unwrap();
    let adapted = logits(&model, &ids, &device);

    model.merge_adapter().unwrap();
    assert_eq!(model.merged_adapter().as_deref(), Some("peft"));
    let merged_error = relative_error(&logits(&model, &ids, &device), &adapted);
    assert!(matches!(
        model.set_active_adapter(None),
        Err(LoraError::Merged(_))
    ));
    assert!(matches!(model.merge_adapter(), Err(LoraError::Merged(_))));

    // A merged model saves as a plain Hugging Face checkpoint (adapters are never saved).
    let tmp = tempfile::tempdir().unwrap();
    let config = load_qwen3(&fixtures().join(BASE), &device, DType::F32)
        .unwrap()
        .0;
    save_qwen3(&model, &config, tmp.path(), SaveDtype::F32).unwrap();
    let (_, saved) = load_qwen3(tmp.path(), &device, DType::F32).unwrap();
    let saved_error = relative_error(&logits(&saved, &ids, &device), &adapted);

    model.unmerge_adapter().unwrap();
    assert_eq!(model.merged_adapter(), None);
    assert!(matches!(model.unmerge_adapter(), Err(LoraError::NotMerged)));
    let mut weight_error = 0.0f32;
    for ((_, target, restored), (_, _, original)) in
        model.adapted_linears().zip(base_model.adapted_linears())
    {
        let diff: Tensor<2> = restored.base_layer.weight.val() - original.base_layer.weight.val();
        let max = diff.abs().max().into_scalar::<f32>();
        assert!(max <= 1e-6, "{target:?}: unmerged weight off by {max:e}");
        weight_error = weight_error.max(max);
    }
    let unmerged_error = relative_error(&logits(&model, &ids, &device), &adapted);
    model.set_active_adapter(None).unwrap();
    let base_error = relative_error(
        &logits(&model, &ids, &device),
        &logits(&base_model, &ids, &device),
    );
    eprintln!(
        "merged vs adapter {merged_error:e}; saved merged vs adapter {saved_error:e}; \
         unmerge: max |ΔW| {weight_error:e}, adapter logits {unmerged_error:e}, \
         base logits {base_error:e}"
    );
    assert!(merged_error <= 1e-5 && saved_error <= 1e-5);
    assert!(unmerged_error <= 1e-5 && base_error <= 1e-6);
}

#[test]
fn training_reaches_only_the_adapters() {
    let device = Device::flex().autodiff();
    let ids = reference().prompt_ids;
    let mut model = with_peft_adapter(&device);
    model.set_active_adapter(Some("peft")).unwrap();
    let loss = model
        .forward(token_tensor(&ids, &device), &mut model.new_cache())
        .unwrap()
        .sum();
    let grads = loss.backward();
    let layer = &model.model.layers[1];
    for target in LoraTarget::ALL {
        let linear = target.of(layer);
        let adapter = linear.adapter("peft").unwrap();
        assert!(adapter.lora_a.weight.val().grad(&grads).is_some());
        assert!(adapter.lora_b.weight.val().grad(&grads).is_some());
        assert!(linear.base_layer.weight.val().grad(&grads).is_none());
    }
    assert!(model.model.embed_tokens.weight.val().grad(&grads).is_none());
    assert!(layer.input_layernorm.gamma.val().grad(&grads).is_none());
}
