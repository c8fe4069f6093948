//! The runtime's rotary scalings against transformers, on the float fixtures whose 17-token
//! prompts run past the original context (made by `scripts/fixtures/make_qwen3_fixtures.py`):
//! the prompt's logits within 1e-4 and greedy decoding token for token. YaRN is the same at
//! every length; dynamic NTK takes the frequencies of each step's length, earlier keys kept as
//! they were rotated, as transformers' KV-cached `generate()` does.

use std::path::{Path, PathBuf};

use andes_model::generate::Decoding;
use andes_runtime::decoder::Logits;
use andes_runtime::{RunRequest, Runtime, generate};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// The reference's prompt ids, prompt logits and greedy continuation.
fn reference(name: &str) -> (Vec<u32>, Vec<f32>, Vec<u32>) {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let numbers = |key: &str| {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
    };
    (
        numbers("prompt_ids").map(|v| v as u32).collect(),
        numbers("logits").map(|v| v as f32).collect(),
        numbers("greedy_ids").map(|v| v as u32).collect(),
    )
}

#[test]
fn scaled_rope_decodes_as_transformers() {
    for name in [
        "qwen3-tiny-yarn-rope-f32",
        "qwen3-tiny-dynamic-rope-f32",
        "qwen3-tiny-linear-rope-f32",
    ] {
        let runtime = Runtime::load(&fixture(name)).unwrap();
        let decoder = &runtime.decoder;
        let (prompt, logits, greedy) = reference(name);

        let mut cache = decoder.cache(None);
        let got = decoder.forward(decoder.embed(&prompt), &mut cache, Logits::All);
        let diff: f64 = got
            .iter()
            .zip(&logits)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let norm: f64 = logits.iter().map(|b| (*b as f64).powi(2)).sum();
        let error = (diff / norm).sqrt();
        eprintln!("{name}: runtime logits relative error {error:e}");
        assert!(error <= 1e-4, "{name}: logits relative error {error:e}");

        let request = RunRequest {
            max_new_tokens: greedy.len(),
            decoding: Decoding::Greedy,
            stop_tokens: vec![],
            kv_budget: None,
            speculation: None,
        };
        let report = generate(decoder, &prompt, decoder.embed(&prompt), &request).unwrap();
        assert_eq!(report.token_ids, greedy, "{name}");
    }
}
