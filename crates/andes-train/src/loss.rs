//! Token log-probabilities and the next-token loss shared by every stage that learns from
//! tokens.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

/// Log-probability of each target under `logits`: `logits` `[batch, seq, vocab]`, `targets`
/// `[batch, seq]`, result `[batch, seq]`.
pub fn target_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim(2))
        .squeeze_dim(2)
}

/// Summed negative log-likelihood of the masked targets: `logits` `[batch, seq, vocab]`,
/// `targets` and `mask` `[batch, seq]`. Returns a one-element tensor; divide by the number
/// of counted targets of the whole optimizer step for a mean that gradient accumulation
/// leaves unchanged.
pub fn masked_next_token_nll(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    mask: Tensor<2, Bool>,
) -> Tensor<1> {
    let picked = target_log_probs(logits, targets);
    let zeros = picked.zeros_like();
    let counted = zeros.mask_where(mask, picked);
    counted.sum().neg()
}
