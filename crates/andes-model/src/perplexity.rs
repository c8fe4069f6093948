//! Next-token negative log-likelihood: of a long token sequence by sliding windows, and of
//! packed windows (the masked targets only).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use andes_data::dataset::WindowSet;
use burn::module::Module;

use crate::batch::to_batch;
use crate::error::ModelError;
use crate::loss::masked_next_token_nll;
use crate::qwen3::Qwen3ForCausalLM;

/// Mean next-token NLL over a sequence, and its exponential.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// Tokens in the sequence.
    pub tokens: usize,
    /// Tokens that were predicted and scored (every token but the first).
    pub scored_tokens: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Tokens of context per forward pass.
    pub window: usize,
    /// Positions the window advances between passes.
    pub stride: usize,
}

/// Scores `ids` with windows of `window` tokens starting every `stride` tokens (the method of
/// the transformers perplexity guide): each window scores only the tokens no earlier window
/// scored, with the tokens before them as context; token 0 is never scored. The mean is the
/// exact sum of per-token NLLs over the number of scored tokens.
pub fn sliding_window_perplexity(
    model: &Qwen3ForCausalLM,
    ids: &[u32],
    window: usize,
    stride: usize,
    device: &Device,
) -> Result<Perplexity, ModelError> {
    if ids.len() < 2 {
        return Err(ModelError::InvalidInput(format!(
            "perplexity needs at least 2 tokens, the text has {}",
            ids.len()
        )));
    }
    if stride == 0 || stride > window {
        return Err(ModelError::InvalidInput(format!(
            "stride {stride} must be between 1 and the window {window}"
        )));
    }
    let mut nll_sum = 0.0f64;
    let mut scored = 0usize;
    let mut previous_end = 0usize;
    let mut begin = 0usize;
    loop {
        let end = (begin + window).min(ids.len());
        let new_tokens = end - previous_end;
        let first_scored = (end - begin - new_tokens).max(1);
        let nll = window_nll(model, &ids[begin..end], device)?;
        nll_sum += nll[first_scored - 1..]
            .iter()
            .map(|&v| v as f64)
            .sum::<f64>();
        scored += nll.len() + 1 - first_scored;
        previous_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let mean_nll = nll_sum / scored as f64;
    Ok(Perplexity {
        tokens: ids.len(),
        scored_tokens: scored,
        mean_nll,
        perplexity: mean_nll.exp(),
        window,
        stride,
    })
}

/// NLL of tokens `1..n` of `ids` given the tokens before each, `n − 1` values.
fn window_nll(
    model: &Qwen3ForCausalLM,
    ids: &[u32],
    device: &Device,
) -> Result<Vec<f32>, ModelError> {
    let n = ids.len();
    let values: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    let tokens: Tensor<2, Int> = Tensor::from_data(TensorData::new(values.clone(), [1, n]), device);
    let logits = model.forward(tokens, &mut model.new_cache())?;
    let [_, _, vocab] = logits.dims();
    let log_probs = log_softmax(logits.slice([0..1, 0..n - 1, 0..vocab]), 2);
    let targets: Tensor<3, Int> =
        Tensor::from_data(TensorData::new(values[1..].to_vec(), [1, n - 1, 1]), device);
    let picked = log_probs.gather(2, targets).neg();
    Ok(picked
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32"))
}
/// Mean NLL per target token over every window of `set`, without gradients.
pub fn mean_nll(
    model: &Qwen3ForCausalLM,
    set: &WindowSet,
    batch_size: usize,
) -> Result<f64, ModelError> {
    let model = model.valid();
    let device: Device = model.devices()[0].clone();
    let windows: Vec<_> = set.packed.windows.iter().collect();
    let mut nll = 0.0;
    let mut tokens = 0usize;
    for chunk in windows.chunks(batch_size) {
        let batch = to_batch(chunk, &device);
        let hidden = batch.hidden(&model)?;
        nll +=
            masked_next_token_nll(&model, hidden, batch.targets, batch.mask).into_scalar::<f64>();
        tokens += batch.target_tokens;
    }
    Ok(nll / tokens.max(1) as f64)
}
