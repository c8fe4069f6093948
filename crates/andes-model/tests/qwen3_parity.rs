//! Parity of the Qwen3 decoder with Hugging Face transformers, on the tiny random
//! checkpoints and reference outputs made by `cargo xtask fixtures`
//! (scripts/fixtures/make_qwen3_fixtures.py).

mod common;
use common::relative_error;

use std::path::{Path, PathBuf};

use andes_model::checkpoint::load_qwen3;
use andes_model::device::parse_device;
use andes_model::generate::{Decoding, GenerationRequest, generate, token_tensor};
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::tensor::{DType, Device, Tensor};

const FIXTURES: [&str; 6] = [
    "qwen3-tiny-tied-gqa-f32",
    "qwen3-tiny-untied-mha-f32",
    "qwen3-tiny-bf16-sharded",
    "qwen3-tiny-linear-rope-f32",
    "qwen3-tiny-yarn-rope-f32",
    "qwen3-tiny-dynamic-rope-f32",
];

/// The fixture whose rotary frequencies depend on the sequence's length (dynamic NTK past
/// `max_position_embeddings` = 16; its 17-token prompt is already past it).
const DYNAMIC: &str = "qwen3-tiny-dynamic-rope-f32";

/// `ANDES_FIXTURES` overrides the fixture folder, so a prebuilt test binary can run on
/// another machine (the GPU box).
fn fixture_dir(name: &str) -> PathBuf {
    std::env::var_os("ANDES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
        .join(name)
}

/// `ANDES_TEST_DEVICE` (e.g. `wgpu`, `cuda`) runs the parity checks on a GPU backend, where
/// the tolerance is the 1e-3 instead of the CPU's 1e-4.
fn test_device() -> (Device, f64) {
    match std::env::var("ANDES_TEST_DEVICE") {
        Ok(spec) if spec != "cpu" => (parse_device(&spec).unwrap(), 1e-3),
        _ => (Device::flex(), 1e-4),
    }
}

struct Reference {
    prompt_ids: Vec<u32>,
    logits: Vec<f32>,
    greedy_ids: Vec<u32>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture_dir(name).join("reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    Reference {
        prompt_ids: ids("prompt_ids"),
        logits: json["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect(),
        greedy_ids: ids("greedy_ids"),
    }
}

fn load(name: &str) -> (Device, Qwen3ForCausalLM) {
    let (device, _) = test_device();
    let (_, model) = load_qwen3(&fixture_dir(name), &device, DType::F32).unwrap();
    (device, model)
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

#[test]
fn logits_match_transformers_within_1e_4() {
    for name in FIXTURES {
        let (device, model) = load(name);
        let reference = reference(name);
        let logits = model
            .forward(
                token_tensor(&reference.prompt_ids, &device),
                &mut model.new_cache(),
            )
            .unwrap();
        let error = relative_error(&host(logits), &reference.logits);
        let tolerance = test_device().1;
        eprintln!("{name}: logits relative error {error:e}");
        assert!(
            error <= tolerance,
            "{name}: logits relative error {error:e}"
        );
    }
}

/// Both decoders: the growing cache, and the fixed cache replayed step by step (one device
/// graph a token on cuda; on the CPU the same step reruns).
#[test]
fn greedy_continuation_matches_transformers() {
    for name in FIXTURES {
        let (device, model) = load(name);
        let reference = reference(name);
        for replay in [false, true] {
            let request = GenerationRequest {
                max_new_tokens: reference.greedy_ids.len(),
                decoding: Decoding::Greedy,
                stop_tokens: vec![],
                replay,
            };
            let ids = generate(&model, &reference.prompt_ids, &request, &device).unwrap();
            assert_eq!(ids, reference.greedy_ids, "{name}, replay {replay}");
        }
    }
}

/// Not for dynamic scaling: each pass rotates at the frequencies of the length it reaches, so
/// keys cached by shorter passes differ from a full recomputation's by design (transformers'
/// too); the greedy test checks it against transformers' own KV-cached generation instead.
#[test]
fn kv_cached_decoding_equals_full_recomputation() {
    for name in FIXTURES.into_iter().filter(|&name| name != DYNAMIC) {
        let (device, model) = load(name);
        let ids = reference(name).prompt_ids;
        let full = host(
            model
                .forward(token_tensor(&ids, &device), &mut model.new_cache())
                .unwrap(),
        );
        // Prefill half, then one token at a time through the cache.
        let split = ids.len() / 2;
        let mut cache = model.new_cache();
        let mut stepped = host(
            model
                .forward(token_tensor(&ids[..split], &device), &mut cache)
                .unwrap(),
        );
        for &id in &ids[split..] {
            stepped.extend(host(
                model
                    .forward(token_tensor(&[id], &device), &mut cache)
                    .unwrap(),
            ));
        }
        assert_eq!(cache.len(), ids.len());
        let error = relative_error(&stepped, &full);
        assert!(
            error <= 1e-5,
            "{name}: cached vs full relative error {error:e}"
        );
    }
}
