//! Token log-probabilities and the next-token loss shared by every stage that learns from
//! tokens.
//!
//! The LM head and log-softmax run over at most [`MAX_LOGIT_BYTES`] of logits at a time: a
//! Qwen3 vocabulary of 151,936 makes the logits of one [4, 1024] batch 2.5 GB in f32, more
//! than one Vulkan buffer may hold (2 GiB), and no pass needs them all at once.

use crate::qwen3::Qwen3ForCausalLM;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

/// The most bytes of f32 logits one chunk of positions produces.
pub const MAX_LOGIT_BYTES: usize = 512 << 20;

/// Log-probability of each target under `logits`: `logits` `[batch, seq, vocab]`, `targets`
/// `[batch, seq]`, result `[batch, seq]`.
pub fn target_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim(2))
        .squeeze_dim(2)
}

/// Log-probability of each target `[batch, seq]` given the final hidden states `[batch, seq,
/// hidden]` of `model`: its head and the log-softmax applied to chunks of positions whose
/// logits stay within [`MAX_LOGIT_BYTES`].
pub fn head_log_probs(
    model: &Qwen3ForCausalLM,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
) -> Tensor<2> {
    let vocab = model.vocab_size();
    chunked_log_probs(
        model,
        hidden,
        targets,
        (MAX_LOGIT_BYTES / (4 * vocab)).max(1),
    )
}

fn chunked_log_probs(
    model: &Qwen3ForCausalLM,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
    positions_per_chunk: usize,
) -> Tensor<2> {
    let [batch, seq, width] = hidden.dims();
    let positions = batch * seq;
    if positions <= positions_per_chunk {
        return target_log_probs(model.logits(hidden), targets);
    }
    let hidden: Tensor<2> = hidden.reshape([positions, width]);
    let targets: Tensor<1, Int> = targets.reshape([positions]);
    let chunks: Vec<Tensor<1>> = (0..positions)
        .step_by(positions_per_chunk)
        .map(|start| {
            let end = (start + positions_per_chunk).min(positions);
            let logits = model.logits(hidden.clone().slice(start..end).unsqueeze());
            let picked = targets.clone().slice(start..end).unsqueeze();
            target_log_probs(logits, picked).squeeze_dim(0)
        })
        .collect();
    Tensor::cat(chunks, 0).reshape([batch, seq])
}

/// Summed negative log-likelihood of the masked targets given the final hidden states
/// `[batch, seq, hidden]`; `targets` and `mask` `[batch, seq]`. Returns a one-element tensor;
/// divide by the number of counted targets of the whole optimizer step for a mean that
/// gradient accumulation leaves unchanged.
pub fn masked_next_token_nll(
    model: &Qwen3ForCausalLM,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
    mask: Tensor<2, Bool>,
) -> Tensor<1> {
    let picked = head_log_probs(model, hidden, targets);
    let zeros = picked.zeros_like();
    let counted = zeros.mask_where(mask, picked);
    counted.sum().neg()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::checkpoint::load_qwen3;
    use burn::tensor::{DType, Device, TensorData};

    use super::*;

    #[test]
    fn chunks_of_positions_give_the_whole_batchs_log_probs_and_gradients() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen3-tiny-untied-mha-f32");
        let device = Device::flex().autodiff();
        let (_, model) = load_qwen3(&dir, &device, DType::F32).unwrap();
        let ids: Vec<i64> = (0..2 * 9).map(|i| (i * 37 % 500) as i64).collect();
        let inputs: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(ids.clone(), [2, 9]), &device);
        let targets: Tensor<2, Int> = Tensor::from_data(
            TensorData::new(
                ids.iter().map(|i| (i + 1) % 500).collect::<Vec<_>>(),
                [2, 9],
            ),
            &device,
        );
        let run = |per_chunk: usize| {
            let hidden = model
                .forward_hidden(inputs.clone(), &mut model.new_cache())
                .unwrap();
            let picked = chunked_log_probs(&model, hidden, targets.clone(), per_chunk);
            let values: Vec<f32> = picked.clone().into_data().try_to_vec().unwrap();
            let grads = picked.sum().backward();
            let head = model.lm_head.as_ref().unwrap().weight.grad(&grads).unwrap();
            (values, head.into_data().try_to_vec::<f32>().unwrap())
        };
        let (whole, whole_grad) = run(18);
        for per_chunk in [1, 4, 7] {
            let (chunked, chunked_grad) = run(per_chunk);
            for (a, b) in whole
                .iter()
                .zip(&chunked)
                .chain(whole_grad.iter().zip(&chunked_grad))
            {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{per_chunk}: {a} vs {b}"
                );
            }
        }
    }
}
