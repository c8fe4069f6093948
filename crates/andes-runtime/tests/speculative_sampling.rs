//! Speculative decoding changes no distribution: on the tiny Qwen3 (float, on the runtime),
//! sampling with top-k 4, the first two tokens drawn over 3000 seeds (the second from a
//! verified block) follow the model's exact joint distribution `p(x₁)·p(x₂ | x₁)`, computed by
//! enumeration: a χ² test at the 0.1% level. Drafted by prompt lookup (after a prompt that
//! holds every token the model may draw first, so that lookup always finds it earlier and
//! drafts what followed it), and by a draft model (the same checkpoint with its weights
//! perturbed, so that its distributions are near the model's but not equal). Seeds are fixed,
//! so the tests are deterministic.

use std::path::Path;

use andes_model::generate::{Decoding, filtered_probabilities};
use andes_runtime::decoder::Logits;
use andes_runtime::{RunReport, RunRequest, Runtime, Speculation, generate, generate_with_draft};

const TOP_K: usize = 4;

fn probabilities(runtime: &Runtime, ids: &[u32]) -> Vec<(u32, f32)> {
    let decoder = &runtime.decoder;
    let mut cache = decoder.cache(None);
    let logits = decoder.forward(decoder.embed(ids), &mut cache, Logits::Last);
    filtered_probabilities(&logits, 1.0, Some(TOP_K), None)
}

#[test]
fn speculative_sampling_draws_from_the_models_own_distribution() {
    let runtime = Runtime::load(&fixture()).unwrap();
    // A prompt where each token the model may draw first was seen before, followed by the
    // token the model finds most likely after it, so that drafts are often accepted (and
    // sometimes not): 64 spread tokens, prefixed with such pairs until it holds for the
    // candidates of the prompt so built.
    let body: Vec<u32> = (0..64).map(|i| (i * 7 + 3) % 509).collect();
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let build = |pairs: &[(u32, u32)]| -> Vec<u32> {
        let firsts: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let mut prompt: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        prompt.extend(body.iter().filter(|t| !firsts.contains(t)));
        prompt
    };
    let mut prompt = build(&pairs);
    for _round in 0..20 {
        let candidates: Vec<u32> = probabilities(&runtime, &prompt)
            .iter()
            .map(|p| p.0)
            .collect();
        let mut changed = false;
        for c in candidates {
            let after: Vec<u32> = prompt.iter().copied().chain([c]).collect();
            let next = probabilities(&runtime, &after)[0].0;
            match pairs.iter_mut().find(|p| p.0 == c) {
                Some(pair) if pair.1 == next => continue,
                Some(pair) => pair.1 = next,
                None => pairs.push((c, next)),
            }
            changed = true;
        }
        prompt = build(&pairs);
        if !changed {
            break;
        }
    }
    let reports = (0..RUNS).map(|seed| {
        let inputs = runtime.decoder.embed(&prompt);
        let request = sampling(seed, Some(Speculation { draft: 2, ngram: 1 }));
        generate(&runtime.decoder, &prompt, inputs, &request).unwrap()
    });
    assert_follows_the_joint_distribution(&runtime, &prompt, reports);
}

#[test]
fn a_draft_models_blocks_leave_the_distribution_unchanged() {
    let dir = fixture();
    let runtime = Runtime::load(&dir).unwrap();
    let perturbed = tempfile::tempdir().unwrap();
    perturb_weights(&dir, perturbed.path());
    let draft = Runtime::load(perturbed.path()).unwrap();
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 509).collect();
    let reports = (0..RUNS).map(|seed| {
        let inputs = runtime.decoder.embed(&prompt);
        let request = sampling(seed, None);
        generate_with_draft(
            &runtime.decoder,
            &draft.decoder,
            2,
            &prompt,
            inputs,
            &request,
        )
        .unwrap()
    });
    assert_follows_the_joint_distribution(&runtime, &prompt, reports);
}

const RUNS: u64 = 3000;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny-untied-mha-f32")
}

/// Three tokens sampled at top-k 4 with `seed`.
fn sampling(seed: u64, speculation: Option<Speculation>) -> RunRequest {
    RunRequest {
        max_new_tokens: 3,
        decoding: Decoding::Sample {
            temperature: 1.0,
            top_k: Some(TOP_K),
            top_p: None,
            seed,
        },
        stop_tokens: Vec::new(),
        kv_budget: None,
        speculation,
    }
}

/// `dir`'s checkpoint into `out` with every weight scaled by `1 + 0.2·sin(i)` (i its index):
/// a draft whose distributions are near the model's.
fn perturb_weights(dir: &Path, out: &Path) {
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(dir.join(file), out.join(file)).unwrap();
    }
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let perturbed: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .enumerate()
                .flat_map(|(i, b)| {
                    let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    (x * (1.0 + 0.2 * (i as f32).sin())).to_le_bytes()
                })
                .collect();
            (name, data, view.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = perturbed
        .iter()
        .map(|(name, data, shape)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
}

/// The first two tokens of `reports` against the model's joint distribution after `prompt`:
/// the drafter proposed often, its drafts were accepted sometimes and not always, and the
/// counts pass the χ² test.
fn assert_follows_the_joint_distribution(
    runtime: &Runtime,
    prompt: &[u32],
    reports: impl Iterator<Item = RunReport>,
) {
    let runs = RUNS;
    let mut expected = std::collections::BTreeMap::new();
    for (first, p1) in probabilities(runtime, prompt) {
        let ids: Vec<u32> = prompt.iter().copied().chain([first]).collect();
        for (second, p2) in probabilities(runtime, &ids) {
            expected.insert((first, second), (p1 * p2) as f64);
        }
    }
    let mut counts = std::collections::BTreeMap::new();
    let (mut drafted, mut accepted) = (0, 0);
    for report in reports {
        drafted += report.drafted;
        accepted += report.accepted;
        *counts
            .entry((report.token_ids[0], report.token_ids[1]))
            .or_insert(0usize) += 1;
    }
    assert!(
        drafted > runs as usize / 2,
        "drafts were rarely proposed: {drafted}"
    );
    assert!(
        accepted > runs as usize / 10 && accepted < drafted,
        "{accepted} of {drafted} drafts accepted: the rule is not exercised both ways"
    );
    for pair in counts.keys() {
        assert!(
            expected.contains_key(pair),
            "{pair:?} is outside the top-k support"
        );
    }
    // χ² over cells expected ≥ 5 times, the rest pooled into one cell
    let (mut chi2, mut cells, mut pooled_expected, mut pooled_seen) = (0.0, 0, 0.0, 0.0);
    for (pair, p) in &expected {
        let e = p * runs as f64;
        let seen = *counts.get(pair).unwrap_or(&0) as f64;
        if e >= 5.0 {
            chi2 += (seen - e).powi(2) / e;
            cells += 1;
        } else {
            pooled_expected += e;
            pooled_seen += seen;
        }
    }
    if pooled_expected > 0.0 {
        chi2 += (pooled_seen - pooled_expected).powi(2) / pooled_expected.max(1.0);
        cells += 1;
    }
    // critical values of χ² at p = 0.001 for 1..=16 degrees of freedom
    let critical = [
        10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91, 34.53,
        36.12, 37.70, 39.25,
    ];
    let dof = cells - 1;
    eprintln!(
        "χ² = {chi2:.2} over {cells} cells ({dof} dof), {accepted} of {drafted} drafts accepted"
    );
    assert!(
        chi2 < critical[dof - 1],
        "χ² = {chi2} over {dof} degrees of freedom"
    );
}
