//! What `andes eval` measures: the mean next-token NLL and perplexity of a text file (as it
//! stands, or as the one-document-a-line stream training packs) or of the assistant turns of
//! conversations; of the model as given, or post-training quantized first (RTN or GPTQ), the
//! way llama.cpp users measure a quantization with `llama-perplexity`.

use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use andes_data::dataset::{DataFormat, WindowSet, Windowing, document_stream};
use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;

use crate::error::ModelError;
use crate::perplexity::{mean_nll, sliding_window_perplexity};
use crate::quantize::{BaseQuantization, PtqMethod, quantize_base_with};
use crate::qwen3::{Qwen3Config, Qwen3ForCausalLM};

/// Windows a forward pass scores at once.
const EVAL_BATCH: usize = 8;

/// What is scored.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalInput {
    /// A plain-text file, scored as one token sequence.
    Text(PathBuf),
    /// A plain-text file of one document a line, each ended by `<|endoftext|>`: the stream a
    /// pretraining run reads, which never shows its newlines.
    Documents(PathBuf),
    /// Conversations (JSONL of `messages`), scored on the assistant turns only, packed into
    /// windows: the task metric of an SFT or LoRA model.
    Chat(PathBuf),
}

/// A post-training quantization to apply before scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalQuantization {
    /// Formats and method.
    pub base: BaseQuantization,
    /// Plain-text calibration file (GPTQ only).
    pub calibration: Option<PathBuf>,
}

/// An evaluation request.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalParams {
    /// What is scored.
    pub input: EvalInput,
    /// Tokens of context per forward pass (default: min(max_position_embeddings, 1024)).
    pub window: Option<usize>,
    /// Tokens a sliding window advances (default: half the window).
    pub stride: Option<usize>,
    /// Quantize first.
    pub quantization: Option<EvalQuantization>,
}

/// The result: one line for people, one JSON object for scripts.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// `FILE: ... mean NLL ... perplexity ...`.
    pub summary: String,
    /// `mean_nll`, `perplexity`, and `tokens`, `window`, `stride` or `windows`.
    pub json: serde_json::Value,
    /// Bits per weight over the quantized linears, when the model was quantized here.
    pub bpw_linears: Option<f64>,
}

/// Scores `model` (of `config`, tokenizing with `tokenizer`) per `params`.
pub fn evaluate(
    model: &mut Qwen3ForCausalLM,
    config: &Qwen3Config,
    tokenizer: &TextTokenizer,
    params: &EvalParams,
) -> Result<EvalReport, ModelError> {
    let limit = model.model.rotary.context();
    let window = params
        .window
        .unwrap_or(config.max_position_embeddings.min(1024));
    if window > limit {
        return Err(ModelError::InvalidInput(format!(
            "window {window} exceeds the model's context of {limit} positions \
             (max_position_embeddings, stretched by yarn or dynamic rope scaling)"
        )));
    }
    let bpw_linears = match &params.quantization {
        Some(quantization) => Some(quantize(model, tokenizer, quantization, window)?),
        None => None,
    };
    let (summary, json) = match &params.input {
        EvalInput::Chat(path) => {
            let windowing = Windowing {
                format: DataFormat::Chat,
                ..Windowing::text(window)
            };
            let (set, _) = WindowSet::load(path, &windowing, tokenizer)?;
            let mean_nll = mean_nll(model, &set, EVAL_BATCH)?;
            let windows = set.packed.windows.len();
            let summary = format!(
                "{}: assistant tokens of {windows} windows, mean NLL {mean_nll:.6} nats, \
                 perplexity {:.4}",
                path.display(),
                mean_nll.exp()
            );
            let json = json!({
                "windows": windows,
                "mean_nll": mean_nll,
                "perplexity": mean_nll.exp(),
            });
            (summary, json)
        }
        EvalInput::Text(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
            score_stream(
                model,
                path,
                &tokenizer.encode(&text)?,
                window,
                params.stride,
            )?
        }
        EvalInput::Documents(path) => {
            let ids = document_stream(path, tokenizer)?;
            score_stream(model, path, &ids, window, params.stride)?
        }
    };
    Ok(EvalReport {
        summary,
        json,
        bpw_linears,
    })
}

/// Sliding-window perplexity of the token stream `ids` read from `path`: its summary line and
/// JSON.
fn score_stream(
    model: &Qwen3ForCausalLM,
    path: &Path,
    ids: &[u32],
    window: usize,
    stride: Option<usize>,
) -> Result<(String, serde_json::Value), ModelError> {
    let stride = stride.unwrap_or((window / 2).max(1));
    let device: Device = model.devices()[0].clone();
    let result = sliding_window_perplexity(model, ids, window, stride, &device)?;
    let summary = format!(
        "{}: {} tokens, mean NLL {:.6} nats, perplexity {:.4} (window {}, stride {})",
        path.display(),
        result.tokens,
        result.mean_nll,
        result.perplexity,
        result.window,
        result.stride
    );
    let json = serde_json::to_value(&result).expect("the result serializes");
    Ok((summary, json))
}

/// Quantizes `model` per `quantization` (GPTQ calibrated on windows of `window` tokens of
/// its calibration file); returns the bpw over the quantized linears.
fn quantize(
    model: &mut Qwen3ForCausalLM,
    tokenizer: &TextTokenizer,
    quantization: &EvalQuantization,
    window: usize,
) -> Result<f64, ModelError> {
    let calibration = match (quantization.base.method, &quantization.calibration) {
        (PtqMethod::Rtn, _) => None,
        (PtqMethod::Gptq, None) => {
            return Err(ModelError::InvalidInput(
                "GPTQ needs a calibration text file (--calib)".into(),
            ));
        }
        (PtqMethod::Gptq, Some(path)) => {
            Some(WindowSet::load(path, &Windowing::text(window), tokenizer)?.0)
        }
    };
    let summary = quantize_base_with(model, &quantization.base, calibration.as_ref(), EVAL_BATCH)?;
    Ok(summary.bpw_linears)
}
