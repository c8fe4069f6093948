//! Generation on the runtime: the prompt in one pass (in chunks under a KV budget), then one
//! token per step, or a speculative block per step; timed, with the process's peak memory.

use std::time::Instant;

use andes_data::TextTokenizer;
use andes_model::andesvl::rows::image_prompt;
use andes_model::completion::Prompt;
use andes_model::generate::{Decoding, TokenSampler};
use burn::tensor::Device;

use crate::decoder::{Decoder, Logits};
use crate::error::RuntimeError;
use crate::kv::{KvBudget, KvCache};
use crate::load::Runtime;
use crate::speculative::{DraftModel, Drafter, Proposal, Speculation, Verdict, verify};

/// What to generate.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub decoding: Decoding,
    /// Generation ends after any of these (included in the output).
    pub stop_tokens: Vec<u32>,
    /// Evict the KV cache down to this budget after every step.
    pub kv_budget: Option<KvBudget>,
    /// Draft tokens by prompt lookup and verify them in one pass.
    pub speculation: Option<Speculation>,
}

/// What a generation gave and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Tokens of the prompt (visual tokens included).
    pub prompt_tokens: usize,
    /// The new tokens.
    pub token_ids: Vec<u32>,
    /// Seconds of the prompt pass (it also yields the first token).
    pub prefill_seconds: f64,
    /// Seconds of every later step.
    pub decode_seconds: f64,
    /// Draft tokens proposed and accepted (speculative decoding).
    pub drafted: usize,
    /// Of them, accepted.
    pub accepted: usize,
    /// KV entries held at the end, over all layers, and their bytes.
    pub kv_entries: usize,
    /// Bytes of the KV cache at the end.
    pub kv_bytes: usize,
    /// The process's peak resident memory (Linux `VmHWM`), when readable.
    pub peak_memory_bytes: Option<u64>,
}

impl RunReport {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }

    /// Tokens per second after the first (which the prompt pass produces).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.token_ids.len().saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }

    /// Of the drafted tokens, the share accepted.
    pub fn acceptance(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }

    /// The peak memory in MiB, when known.
    pub fn peak_memory_mib(&self) -> Option<f64> {
        self.peak_memory_bytes
            .map(|b| b as f64 / (1u64 << 20) as f64)
    }

    /// `prefill … tok/s, decode … tok/s[, peak memory … MiB][, a of d drafted tokens accepted]`.
    pub fn speed_line(&self) -> String {
        let mut line = format!(
            "prefill {:.1} tok/s, decode {:.1} tok/s",
            self.prefill_tokens_per_s(),
            self.decode_tokens_per_s()
        );
        if let Some(peak) = self.peak_memory_mib() {
            line.push_str(&format!(", peak memory {peak:.0} MiB"));
        }
        if self.drafted > 0 {
            line.push_str(&format!(
                ", {} of {} drafted tokens accepted",
                self.accepted, self.drafted
            ));
        }
        line
    }

    /// The report's figures as JSON fields (new token ids, timings, rates, memory, drafts).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "prefill_tokens_per_s": self.prefill_tokens_per_s(),
            "decode_tokens_per_s": self.decode_tokens_per_s(),
            "peak_memory_mib": self.peak_memory_mib(),
            "kv_entries": self.kv_entries,
            "kv_bytes": self.kv_bytes,
            "drafted": self.drafted,
            "accepted": self.accepted,
        })
    }
}

/// Generates after `prompt` (text and images) on `runtime` with its active adapter; with
/// `draft`, that model proposes the speculative blocks (`request.speculation`'s `draft`
/// tokens a step) instead of prompt lookup.
pub fn complete(
    runtime: &Runtime,
    draft: Option<&Decoder>,
    tokenizer: &TextTokenizer,
    prompt: &Prompt,
    request: &RunRequest,
) -> Result<RunReport, RuntimeError> {
    let (ids, inputs) = prompt_inputs(runtime, tokenizer, prompt)?;
    match draft {
        Some(draft) => {
            let block = request.speculation.unwrap_or_default().draft;
            generate_with_draft(&runtime.decoder, draft, block, &ids, inputs, request)
        }
        None => generate(&runtime.decoder, &ids, inputs, request),
    }
}

/// The prompt's token ids and input embeddings `[tokens, hidden]`: token embeddings with
/// each image's visual embeddings spliced in where the prompt places it.
pub fn prompt_inputs(
    runtime: &Runtime,
    tokenizer: &TextTokenizer,
    prompt: &Prompt,
) -> Result<(Vec<u32>, Vec<f32>), RuntimeError> {
    let decoder = &runtime.decoder;
    match (runtime.config.andesvl(), &runtime.vision) {
        (Some(config), Some(vision)) => {
            let device = Device::flex();
            let (ids, placements) = image_prompt(
                &prompt.images,
                &runtime.files_dir,
                &prompt.text,
                tokenizer,
                config,
                &device,
            )?;
            let mut inputs = decoder.embed(&ids.ids);
            let hidden = decoder.shape.hidden;
            for placement in placements {
                let visual = vision.encode_image(placement.pixels)?;
                let values = visual
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("f32 embeddings");
                inputs[placement.span.start * hidden..placement.span.end * hidden]
                    .copy_from_slice(&values);
            }
            Ok((ids.ids, inputs))
        }
        _ if !prompt.images.is_empty() => Err(RuntimeError::Request(format!(
            "images need an AndesVL model; {} holds a text-only model",
            runtime.files_dir.display()
        ))),
        _ => {
            let ids = tokenizer.encode(&prompt.text)?;
            let inputs = decoder.embed(&ids);
            Ok((ids, inputs))
        }
    }
}

/// Generates after the prompt (`ids` and their `inputs` embeddings), drafting by prompt
/// lookup when the request asks for speculation.
pub fn generate(
    decoder: &Decoder,
    ids: &[u32],
    inputs: Vec<f32>,
    request: &RunRequest,
) -> Result<RunReport, RuntimeError> {
    let drafter = match request.speculation {
        Some(speculation) => Drafter::Lookup(speculation),
        None => Drafter::None,
    };
    decode(decoder, drafter, ids, inputs, request)
}

/// Generates after the prompt with `draft` (a model of the same vocabulary) proposing up to
/// `block` tokens a step, verified by `decoder` in one pass.
pub fn generate_with_draft(
    decoder: &Decoder,
    draft: &Decoder,
    block: usize,
    ids: &[u32],
    inputs: Vec<f32>,
    request: &RunRequest,
) -> Result<RunReport, RuntimeError> {
    if draft.shape.vocab != decoder.shape.vocab {
        return Err(RuntimeError::Request(format!(
            "the draft model's vocabulary has {} entries and the model's {}: a draft must \
             share the model's tokenizer",
            draft.shape.vocab, decoder.shape.vocab
        )));
    }
    decode(
        decoder,
        Drafter::Model(DraftModel::new(draft, block)),
        ids,
        inputs,
        request,
    )
}

/// The decoding loop: prefill, then a step at a time, each verifying `drafter`'s block.
fn decode(
    decoder: &Decoder,
    mut drafter: Drafter,
    ids: &[u32],
    inputs: Vec<f32>,
    request: &RunRequest,
) -> Result<RunReport, RuntimeError> {
    let context = decoder.shape.max_positions;
    if request.kv_budget.is_none() && ids.len() > context {
        return Err(RuntimeError::Request(format!(
            "the prompt has {} tokens but the model's context is {context} positions; \
             --kv-budget evicts entries to go on",
            ids.len()
        )));
    }
    if ids.is_empty() {
        return Err(RuntimeError::Request("the prompt has no tokens".into()));
    }
    let mut cache = decoder.cache(request.kv_budget);
    if request.kv_budget.is_none() {
        // the prompt and every generated token but the last, which is never fed
        cache.reserve((ids.len() + request.max_new_tokens).min(context));
    }
    let mut sampler = TokenSampler::new(&request.decoding);
    let start = Instant::now();
    let logits = prefill(decoder, inputs, &mut cache);
    let mut tokens = vec![sampler.next(&logits)];
    let prefill_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut history: Vec<u32> = ids.iter().chain(&tokens).copied().collect();
    let (mut drafted, mut accepted) = (0, 0);
    let finished = |tokens: &[u32], cache: &KvCache| {
        tokens.len() >= request.max_new_tokens
            || tokens
                .last()
                .is_some_and(|t| request.stop_tokens.contains(t))
            || (request.kv_budget.is_none() && cache.next_position >= context)
    };
    while !finished(&tokens, &cache) {
        let pending = *tokens.last().expect("one token at least");
        let room = request.max_new_tokens - tokens.len();
        let proposal = match room > 1 {
            true => drafter.propose(&history, room - 1, &mut sampler),
            false => Proposal::default(),
        };
        let draft = &proposal.tokens;
        let block: Vec<u32> = std::iter::once(pending)
            .chain(draft.iter().copied())
            .collect();
        let position = cache.next_position;
        let rows = decoder.forward(decoder.embed(&block), &mut cache, Logits::All);
        let vocab = decoder.shape.vocab;
        let mut taken = Vec::with_capacity(block.len());
        for (j, row) in rows.chunks(vocab).enumerate() {
            match draft.get(j) {
                Some(&guess) => {
                    let drawn_from = proposal.distributions.as_ref().map(|q| q[j].as_slice());
                    match verify(&mut sampler, row, guess, drawn_from) {
                        Verdict::Accept => taken.push(guess),
                        Verdict::Replace(token) => {
                            taken.push(token);
                            break;
                        }
                    }
                }
                None => taken.push(sampler.next(row)),
            }
        }
        drafted += draft.len();
        accepted += taken.len() - 1;
        drafter.accepted(taken.len() - 1);
        // keep the pending token and the accepted drafts; the last token taken is pending
        cache.rewind(position + taken.len());
        cache.evict();
        for token in taken {
            tokens.push(token);
            history.push(token);
            if finished(&tokens, &cache) {
                break;
            }
        }
    }
    Ok(RunReport {
        prompt_tokens: ids.len(),
        token_ids: tokens,
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64(),
        drafted,
        accepted,
        kv_entries: cache.entries(),
        kv_bytes: cache.bytes(),
        peak_memory_bytes: peak_memory_bytes(),
    })
}

/// What reading a text under a KV budget cost and saved.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamingReport {
    /// Tokens read.
    pub tokens: usize,
    /// Mean negative log-likelihood of every token after the first.
    pub mean_nll: f64,
    /// The most KV bytes the cache held.
    pub kv_bytes_peak: usize,
    /// What the cache holds at the end without eviction.
    pub kv_bytes_without_eviction: usize,
}

/// Reads `ids` one token at a time, each predicted from the cache of the ones before it under
/// `budget` (evicting after every step, as decoding does): what eviction costs in quality and
/// saves in memory on a long text.
pub fn streaming_nll(
    decoder: &Decoder,
    ids: &[u32],
    budget: Option<KvBudget>,
) -> Result<StreamingReport, RuntimeError> {
    if budget.is_none() && ids.len() > decoder.shape.max_positions {
        return Err(RuntimeError::Request(format!(
            "the text has {} tokens but the model's context is {} positions; \
             --kv-budget evicts entries to go on",
            ids.len(),
            decoder.shape.max_positions
        )));
    }
    let mut cache = decoder.cache(budget);
    let (mut total, mut peak) = (0.0f64, 0usize);
    for pair in ids.windows(2) {
        let logits = decoder.forward(decoder.embed(&pair[..1]), &mut cache, Logits::Last);
        peak = peak.max(cache.bytes());
        cache.evict();
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = logits
            .iter()
            .map(|l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln();
        total += log_sum - (logits[pair[1] as usize] - max) as f64;
    }
    Ok(StreamingReport {
        tokens: ids.len(),
        mean_nll: total / (ids.len() - 1).max(1) as f64,
        kv_bytes_peak: peak,
        kv_bytes_without_eviction: decoder.cache(None).bytes_for(ids.len()),
    })
}

/// The prompt pass: whole, or under a budget in chunks so that the cache never holds much
/// more than its budget; the logits of the last position.
fn prefill(decoder: &Decoder, inputs: Vec<f32>, cache: &mut KvCache) -> Vec<f32> {
    let hidden = decoder.shape.hidden;
    let chunk = match cache.budget {
        Some(budget) => budget.recent.max(1) * hidden,
        None => inputs.len(),
    };
    let mut logits = Vec::new();
    for piece in inputs.chunks(chunk) {
        logits = decoder.forward(piece.to_vec(), cache, Logits::Last);
        cache.evict();
    }
    logits
}

/// The process's peak resident set (`VmHWM` of `/proc/self/status`), in bytes.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
