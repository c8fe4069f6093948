//! Throughput of model shapes with random weights, as `andes bench` reports it beside the
//! peers' figures (transformers, PyTorch) measured the same way: prefill and decode tokens/s,
//! vision-tower images/s, and one square matrix product's TFLOP/s. Every figure is a median
//! over timed runs after untimed warm-up runs (kernel compilation, autotuning); each timed run
//! ends by reading a result back, which waits for the device.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{DType, Device, Distribution, Int, Tensor};
use serde::Serialize;

use crate::error::ModelError;
use crate::generate::token_tensor;
use crate::kv_cache::KvCache;
use crate::precision::cast_parameters;
use crate::qwen3::{Qwen3Config, Qwen3ForCausalLM};
use crate::replayed_decode::ReplayedDecoder;
use crate::vision::{VisionConfig, VisionTransformer};

/// Untimed and timed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeats {
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub timed: usize,
}

impl Repeats {
    /// Seconds of each timed run of `run`, after the untimed ones.
    pub fn time(
        self,
        mut run: impl FnMut() -> Result<(), ModelError>,
    ) -> Result<Vec<f64>, ModelError> {
        let mut seconds = Vec::with_capacity(self.timed);
        for index in 0..self.warmup + self.timed {
            let start = Instant::now();
            run()?;
            if index >= self.warmup {
                seconds.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(seconds)
    }
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prefill and decode of a Qwen3 shape.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    /// `eager` or `replayed graph`.
    pub decoder: &'static str,
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Tokens decoded after it.
    pub decode_tokens: usize,
    /// The model's parameters.
    pub params: usize,
    /// Median prefill time, until the first token id is on the host.
    pub prefill_ms_median: f64,
    /// Prompt tokens per second of the median prefill.
    pub prefill_tokens_per_s: f64,
    /// Median decode time a token, each token on the host before the next step starts.
    pub decode_ms_per_token_median: f64,
    /// Decoded tokens per second.
    pub decode_tokens_per_s: f64,
}

/// Prefill `prompt_len` tokens, then decode `decode_tokens` greedily (replaying one captured
/// device graph a token with `replay`), on a random model of `config` in `dtype`.
pub fn forward_throughput(
    config: &Qwen3Config,
    device: &Device,
    dtype: DType,
    prompt_len: usize,
    decode_tokens: usize,
    replay: bool,
    repeats: Repeats,
) -> Result<ForwardReport, ModelError> {
    let model = cast_parameters(Qwen3ForCausalLM::new(config, device)?, dtype);
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|i| ((i * 7919 + 13) % config.vocab_size) as u32)
        .collect();
    let (mut prefills, mut decodes) = (Vec::new(), Vec::new());
    for run in 0..repeats.warmup + repeats.timed {
        let (prefill, decode) = timed_run(&model, &prompt, decode_tokens, replay, device)?;
        if run >= repeats.warmup {
            prefills.push(prefill);
            decodes.push(decode);
        }
    }
    let (prefill, decode) = (median(&mut prefills), median(&mut decodes));
    Ok(ForwardReport {
        decoder: if replay { "replayed graph" } else { "eager" },
        prompt_len,
        decode_tokens,
        params: model.num_params(),
        prefill_ms_median: prefill * 1e3,
        prefill_tokens_per_s: prompt_len as f64 / prefill,
        decode_ms_per_token_median: decode * 1e3 / decode_tokens as f64,
        decode_tokens_per_s: decode_tokens as f64 / decode,
    })
}

/// Seconds for the prefill (until the first token id is on the host) and for the decode steps
/// (each token on the host before the next step starts, as a streaming generation needs it).
fn timed_run(
    model: &Qwen3ForCausalLM,
    prompt: &[u32],
    decode_tokens: usize,
    replay: bool,
    device: &Device,
) -> Result<(f64, f64), ModelError> {
    let mut cache = model.new_cache();
    let start = Instant::now();
    let mut next = next_token(model, token_tensor(prompt, device), &mut cache)?;
    let prefill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    if replay {
        let mut decoder = ReplayedDecoder::new(model, cache, next, decode_tokens)?;
        for _ in 0..decode_tokens {
            decoder.next_token()?;
        }
    } else {
        for _ in 0..decode_tokens {
            next = next_token(model, token_tensor(&[next], device), &mut cache)?;
        }
    }
    Ok((prefill, start.elapsed().as_secs_f64()))
}

/// Greedy next token after `tokens`, argmax taken on the device.
fn next_token(
    model: &Qwen3ForCausalLM,
    tokens: Tensor<2, Int>,
    cache: &mut KvCache,
) -> Result<u32, ModelError> {
    let hidden = model.forward_hidden(tokens, cache)?;
    let [_, seq, width] = hidden.dims();
    let logits = model.logits(hidden.slice([0..1, seq - 1..seq, 0..width]));
    let id = logits.argmax(2).into_data().convert::<i64>();
    Ok(id.as_slice::<i64>().expect("converted to i64")[0] as u32)
}

/// A vision tower at one resolution.
#[derive(Debug, Clone, Serialize)]
pub struct VisionReport {
    /// The tower's family.
    pub model_type: String,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Patches an image.
    pub patches: usize,
    /// Images a forward pass.
    pub batch: usize,
    /// The tower's parameters.
    pub params: usize,
    /// Median time of a forward pass.
    pub ms_median: f64,
    /// Images per second.
    pub images_per_s: f64,
}

/// Forward passes of a random tower of `config` over `batch` random images of `height` ×
/// `width` pixels (multiples of the patch size).
pub fn vision_throughput(
    config: &VisionConfig,
    device: &Device,
    dtype: DType,
    [batch, height, width]: [usize; 3],
    repeats: Repeats,
) -> Result<VisionReport, ModelError> {
    let tower = cast_parameters(VisionTransformer::new(config, device), dtype);
    let pixels = Tensor::<4>::random(
        [batch, 3, height, width],
        Distribution::Normal(0.0, 1.0),
        device,
    )
    .cast(dtype);
    let mut seconds = repeats.time(|| {
        // Reading back a sum of all features waits for the whole forward pass.
        tower.forward(pixels.clone())?.sum().into_data();
        Ok(())
    })?;
    let time = median(&mut seconds);
    let patch = config.spec().patch_size;
    Ok(VisionReport {
        model_type: config.model_type().to_string(),
        height,
        width,
        patches: (height / patch) * (width / patch),
        batch,
        params: tower.num_params(),
        ms_median: time * 1e3,
        images_per_s: batch as f64 / time,
    })
}

/// One square matrix product, the ceiling under every linear layer.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulReport {
    /// Side of the matrices.
    pub size: usize,
    /// Median time of a product.
    pub ms_median: f64,
    /// `2·n³` over that time.
    pub tflops: f64,
}

/// Products of two random `size` × `size` matrices in `dtype`.
pub fn matmul_throughput(
    size: usize,
    device: &Device,
    dtype: DType,
    repeats: Repeats,
) -> Result<MatmulReport, ModelError> {
    let random =
        || Tensor::<2>::random([size, size], Distribution::Normal(0.0, 1.0), device).cast(dtype);
    let (a, b) = (random(), random());
    let mut seconds = repeats.time(|| {
        // Reading a sum of the whole product back waits for it to finish; reading one element
        // would let the fusion backend compute only that element.
        a.clone().matmul(b.clone()).sum().into_data();
        Ok(())
    })?;
    let time = median(&mut seconds);
    Ok(MatmulReport {
        size,
        ms_median: time * 1e3,
        tflops: 2.0 * (size as f64).powi(3) / time / 1e12,
    })
}
