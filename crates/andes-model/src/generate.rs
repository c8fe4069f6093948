//! Autoregressive decoding with a KV cache: greedy or sampled (temperature, top-k, top-p).

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::ModelError;
use crate::qwen3::{EosTokenIds, Qwen3Config, Qwen3ForCausalLM};
use crate::replayed_decode::ReplayedDecoder;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoding {
    /// The most likely token (the first one on ties, as `torch.argmax`).
    Greedy,
    /// A random draw, after transformers' warpers in their order: temperature, top-k, top-p.
    Sample {
        /// Logits are divided by this (> 0).
        temperature: f32,
        /// Keep only the k most likely tokens.
        top_k: Option<usize>,
        /// Keep the smallest set of most likely tokens whose probability reaches p.
        top_p: Option<f32>,
        /// Seed of the random generator, so a run can be repeated.
        seed: u64,
    },
}

/// What to generate after a prompt.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Token choice rule.
    pub decoding: Decoding,
    /// Generation ends after emitting any of these (the stop token is included in the output).
    pub stop_tokens: Vec<u32>,
    /// Greedy decoding replays each step as one captured device graph
    /// ([`ReplayedDecoder`]): far fewer host round trips on cuda; elsewhere the step reruns
    /// over a fixed cache whose attention spans its whole capacity, so leave it off there.
    /// Ignored for sampling, and where the prompt and tokens would not fit the positions.
    pub replay: bool,
}

impl GenerationRequest {
    /// Whether `ids` (generated so far) ends the generation.
    fn finished(&self, ids: &[u32]) -> bool {
        ids.len() >= self.max_new_tokens
            || ids.last().is_some_and(|id| self.stop_tokens.contains(id))
    }
}

/// Generates tokens after `prompt` (ids); returns the new ids only.
///
/// The prompt is processed in one forward pass (prefill), then one token per step reusing
/// the KV cache; with `request.replay`, greedy steps replay one captured device graph
/// ([`ReplayedDecoder`]).
pub fn generate(
    model: &Qwen3ForCausalLM,
    prompt: &[u32],
    request: &GenerationRequest,
    device: &Device,
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput(
            "the prompt is empty: generation needs at least one token".into(),
        ));
    }
    let embeddings = model.embed(token_tensor(prompt, device));
    generate_from_embeddings(model, embeddings, request, device)
}

/// Generates tokens after a prompt given as input embeddings `[1, seq, hidden]` (an AndesVL
/// prompt: token embeddings with the images' visual embeddings spliced in); returns the new
/// ids only.
pub fn generate_from_embeddings(
    model: &Qwen3ForCausalLM,
    prompt: Tensor<3>,
    request: &GenerationRequest,
    device: &Device,
) -> Result<Vec<u32>, ModelError> {
    let mut sampler = TokenSampler::new(&request.decoding);
    let mut cache = model.new_cache();
    let mut generated = Vec::with_capacity(request.max_new_tokens);
    let prompt_len = prompt.dims()[1];
    let mut input = prompt;
    while !request.finished(&generated) {
        let hidden = model.forward_embeddings(input, &mut cache)?;
        let next = sampler.next(&last_logits(model, hidden));
        generated.push(next);
        let steps = request.max_new_tokens.saturating_sub(generated.len());
        if request.replay
            && request.decoding == Decoding::Greedy
            && !request.finished(&generated)
            && ReplayedDecoder::positions(prompt_len, steps) <= model.model.rotary.max_positions()
        {
            let mut decoder = ReplayedDecoder::new(model, cache, next, steps)?;
            while !request.finished(&generated) {
                generated.push(decoder.next_token()?);
            }
            break;
        }
        input = model.embed(token_tensor(&[next], device));
    }
    Ok(generated)
}

/// Samples one completion of `prompt` per entry of `decodings`, all in one batch: the prompt
/// is prefilled once for every row, then each step decodes every unfinished row at once, row
/// `i` drawing from its own sampler (`decodings[i]`, so a row's tokens are those a lone
/// [`generate`] with that rule would draw). A row ends at a stop token (kept) or after
/// `max_new_tokens`; the rows that ended keep being fed their stop token, and what they
/// compute is ignored. This is how GRPO samples a group: one forward per position instead of
/// one per position and completion.
pub fn generate_group(
    model: &Qwen3ForCausalLM,
    prompt: &[u32],
    decodings: &[Decoding],
    max_new_tokens: usize,
    stop_tokens: &[u32],
    device: &Device,
) -> Result<Vec<Vec<u32>>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput(
            "the prompt is empty: generation needs at least one token".into(),
        ));
    }
    let rows = decodings.len();
    let mut samplers: Vec<TokenSampler> = decodings.iter().map(TokenSampler::new).collect();
    let mut cache = model.new_cache();
    let mut completions: Vec<Vec<u32>> = vec![Vec::with_capacity(max_new_tokens); rows];
    let mut finished = vec![false; rows];
    let prompt_rows: Vec<u32> = prompt
        .iter()
        .copied()
        .cycle()
        .take(rows * prompt.len())
        .collect();
    let mut input = rows_tensor(&prompt_rows, rows, device);
    for _ in 0..max_new_tokens {
        if finished.iter().all(|&f| f) {
            break;
        }
        let logits = last_logits(model, model.forward_hidden(input, &mut cache)?);
        let vocab = logits.len() / rows;
        let mut next = Vec::with_capacity(rows);
        for (row, sampler) in samplers.iter_mut().enumerate() {
            if finished[row] {
                next.push(
                    *completions[row]
                        .last()
                        .expect("a finished row has a stop token"),
                );
                continue;
            }
            let token = sampler.next(&logits[row * vocab..(row + 1) * vocab]);
            completions[row].push(token);
            finished[row] = stop_tokens.contains(&token);
            next.push(token);
        }
        input = rows_tensor(&next, rows, device);
    }
    Ok(completions)
}

/// The logits of each row's last position, row after row, read back as f32.
fn last_logits(model: &Qwen3ForCausalLM, hidden: Tensor<3>) -> Vec<f32> {
    let [rows, seq, hidden_size] = hidden.dims();
    let last = hidden.slice([0..rows, seq - 1..seq, 0..hidden_size]);
    model
        .logits(last)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

/// `[rows, n / rows]` int tensor of `ids` laid out row after row.
fn rows_tensor(ids: &[u32], rows: usize, device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::from_data(TensorData::new(values, [rows, ids.len() / rows]), device)
}

/// End-of-sequence ids of the model directory `dir`: `generation_config.json`'s when it has
/// them (as transformers' `generate` uses), else `config.json`'s.
pub fn eos_token_ids(dir: &Path, config: &Qwen3Config) -> Result<Vec<u32>, ModelError> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let bad = |message: String| ModelError::Config {
            path: path.clone(),
            key: "eos_token_id".into(),
            message,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if !json["eos_token_id"].is_null() {
            let ids: EosTokenIds = serde_json::from_value(json["eos_token_id"].clone())
                .map_err(|_| bad("expected a token id or a list of ids".into()))?;
            return Ok(ids.to_vec());
        }
    }
    Ok(config
        .eos_token_id
        .as_ref()
        .map(EosTokenIds::to_vec)
        .unwrap_or_default())
}

/// `[1, n]` int tensor of token ids.
pub fn token_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::from_data(TensorData::new(values, [1, ids.len()]), device)
}

/// Chooses tokens from logit vectors according to a [`Decoding`] rule.
pub struct TokenSampler {
    decoding: Decoding,
    rng: StdRng,
}

impl TokenSampler {
    /// A sampler seeded from the rule (greedy needs no randomness).
    pub fn new(decoding: &Decoding) -> Self {
        let seed = match decoding {
            Decoding::Sample { seed, .. } => *seed,
            Decoding::Greedy => 0,
        };
        Self {
            decoding: decoding.clone(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next token id for one position's logits.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        match self.probabilities(logits) {
            None => argmax(logits),
            Some(probabilities) => self.draw(&probabilities),
        }
    }

    /// The distribution a token is drawn from after `logits` (the rule's warpers applied), or
    /// none under greedy decoding.
    pub fn probabilities(&self, logits: &[f32]) -> Option<Vec<(u32, f32)>> {
        match &self.decoding {
            Decoding::Greedy => None,
            Decoding::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => Some(filtered_probabilities(logits, *temperature, *top_k, *top_p)),
        }
    }

    /// A token drawn from `probabilities` (summing to one).
    pub fn draw(&mut self, probabilities: &[(u32, f32)]) -> u32 {
        let draw = self.uniform();
        let mut cumulative = 0.0;
        for &(id, p) in probabilities {
            cumulative += p;
            if draw < cumulative {
                return id;
            }
        }
        probabilities.last().map_or(0, |&(id, _)| id)
    }

    /// A uniform draw in [0, 1) from the sampler's generator (an acceptance test).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random()
    }
}

/// Index of the largest value, the first one on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `(token, probability)` pairs, most likely first, that survive temperature, top-k and
/// top-p, renormalised to sum to one.
pub fn filtered_probabilities(
    logits: &[f32],
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
) -> Vec<(u32, f32)> {
    let mut ranked: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / temperature))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = top_k {
        ranked.truncate(k.max(1));
    }
    let max = ranked[0].1;
    let mut total = 0.0;
    for entry in ranked.iter_mut() {
        entry.1 = (entry.1 - max).exp();
        total += entry.1;
    }
    for entry in ranked.iter_mut() {
        entry.1 /= total;
    }
    if let Some(p) = top_p {
        let mut cumulative = 0.0;
        let keep = ranked
            .iter()
            .position(|&(_, prob)| {
                cumulative += prob;
                cumulative >= p
            })
            .map_or(ranked.len(), |i| i + 1);
        ranked.truncate(keep);
        let total: f32 = ranked.iter().map(|e| e.1).sum();
        for entry in ranked.iter_mut() {
            entry.1 /= total;
        }
    }
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row of a batched group draws exactly the tokens a lone generation with its rule
    /// draws (the batch changes nothing a row sees), and rows stop on their own.
    #[test]
    fn a_group_sampled_in_one_batch_matches_each_completion_sampled_alone() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/qwen3-tiny-untied-mha-f32");
        let device = Device::flex();
        let (_, model) =
            crate::checkpoint::load_qwen3(&dir, &device, burn::tensor::DType::F32).unwrap();
        let prompt = [5, 90, 17, 301, 44];
        let decodings: Vec<Decoding> = (0..6)
            .map(|seed| Decoding::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: Some(0.9),
                seed,
            })
            .collect();
        // A fifth of the vocabulary stops a row, so that rows end at different lengths.
        let stops: Vec<u32> = (0..100).collect();
        let group = generate_group(&model, &prompt, &decodings, 12, &stops, &device).unwrap();
        assert_eq!(group.len(), decodings.len());
        for (decoding, batched) in decodings.iter().zip(&group) {
            let request = GenerationRequest {
                max_new_tokens: 12,
                decoding: decoding.clone(),
                stop_tokens: stops.clone(),
                replay: false,
            };
            let alone = generate(&model, &prompt, &request, &device).unwrap();
            assert_eq!(batched, &alone);
        }
        let lengths: std::collections::BTreeSet<usize> = group.iter().map(Vec::len).collect();
        assert!(
            lengths.len() > 1,
            "every row ran the same length: {lengths:?}"
        );
    }

    #[test]
    fn greedy_picks_first_maximum_like_torch_argmax() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.5, 2.0, 1.9, -3.0];
        let mut sampler = TokenSampler::new(&Decoding::Sample {
            temperature: 0.7,
            top_k: Some(1),
            top_p: None,
            seed: 3,
        });
        for _ in 0..20 {
            assert_eq!(sampler.next(&logits), 1);
        }
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        // softmax([ln 0.5, ln 0.3, ln 0.2]) = [0.5, 0.3, 0.2]; p = 0.7 keeps the first two.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let kept = filtered_probabilities(&logits, 1.0, None, Some(0.7));
        assert_eq!(kept.len(), 2);
        assert!((kept[0].1 - 0.625).abs() < 1e-6 && (kept[1].1 - 0.375).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_draws_and_draws_follow_probabilities() {
        let logits = [0.0f32, 1.0, 2.0];
        let rule = Decoding::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 42,
        };
        let draws = |n| {
            let mut s = TokenSampler::new(&rule);
            (0..n).map(|_| s.next(&logits)).collect::<Vec<_>>()
        };
        let a = draws(4000);
        assert_eq!(a, draws(4000));
        let share_of_2 = a.iter().filter(|&&t| t == 2).count() as f64 / a.len() as f64;
        let expected = 2f64.exp() / (1.0 + 1f64.exp() + 2f64.exp());
        assert!(
            (share_of_2 - expected).abs() < 0.03,
            "{share_of_2} vs {expected}"
        );
    }
}
