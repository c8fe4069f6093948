//! Prompt-and-reply rows as one batch, for the stages that score whole replies (MPO, GRPO).

use andes_data::dataset::counted_targets;
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::TrainError;
use andes_model::loss::head_log_probs;

/// Rows `prompt ++ reply`, right-padded to the longest; the model reads `inputs` and each
/// position predicts `targets`, of which only reply tokens count (`mask`). Right padding
/// leaves a causal model's view of the real tokens unchanged.
pub struct ReplyRows {
    /// Input ids `[rows, len - 1]`.
    pub inputs: Tensor<2, Int>,
    /// Target ids `[rows, len - 1]`.
    pub targets: Tensor<2, Int>,
    /// 1.0 where the target is a reply token, 0.0 elsewhere.
    pub mask: Tensor<2>,
    /// Reply tokens of each row.
    pub reply_tokens: Vec<usize>,
}

impl ReplyRows {
    /// Stacks `(prompt, reply)` pairs; every reply has at least one token.
    pub fn new(rows: &[(&[u32], &[u32])], device: &Device) -> Self {
        let masked: Vec<(Vec<u32>, Vec<bool>)> = rows
            .iter()
            .map(|(prompt, reply)| {
                let ids = prompt.iter().chain(reply.iter()).copied().collect();
                let mask = (0..prompt.len() + reply.len())
                    .map(|i| i >= prompt.len())
                    .collect();
                (ids, mask)
            })
            .collect();
        Self::masked(&masked, device)
    }

    /// Stacks token rows whose `mask` marks the tokens to score (the reply tokens); a row's
    /// first token is never scored (nothing predicts it).
    pub fn masked(rows: &[(Vec<u32>, Vec<bool>)], device: &Device) -> Self {
        let width = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(2) - 1;
        let mut inputs = vec![0i64; rows.len() * width];
        let mut targets = vec![0i64; rows.len() * width];
        let mut mask = vec![0f32; rows.len() * width];
        for (row, (ids, scored)) in rows.iter().enumerate() {
            let base = row * width;
            for position in 0..ids.len() - 1 {
                inputs[base + position] = ids[position] as i64;
                targets[base + position] = ids[position + 1] as i64;
                if scored[position + 1] {
                    mask[base + position] = 1.0;
                }
            }
        }
        let shape = [rows.len(), width];
        Self {
            inputs: Tensor::from_data(TensorData::new(inputs, shape), device),
            targets: Tensor::from_data(TensorData::new(targets, shape), device),
            mask: Tensor::from_data(TensorData::new(mask, shape), device),
            reply_tokens: rows
                .iter()
                .map(|(_, scored)| counted_targets(scored))
                .collect(),
        }
    }

    /// Log-probability of each reply token under `model` `[rows, len - 1]`, 0 elsewhere.
    pub fn token_log_probs(&self, model: &Qwen3ForCausalLM) -> Result<Tensor<2>, TrainError> {
        let hidden = model.forward_hidden(self.inputs.clone(), &mut model.new_cache())?;
        Ok(self.log_probs(model, hidden))
    }

    /// Log-probability of each reply token given `model`'s final hidden states `[rows,
    /// len - 1, hidden]` computed from `inputs` (with images spliced in, for AndesVL), 0
    /// elsewhere.
    pub fn log_probs(&self, model: &Qwen3ForCausalLM, hidden: Tensor<3>) -> Tensor<2> {
        head_log_probs(model, hidden, self.targets.clone()) * self.mask.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reply_targets_count() {
        let device = Device::flex();
        let rows = ReplyRows::new(&[(&[1, 2, 3], &[4, 5]), (&[1], &[6])], &device);
        let mask: Vec<f32> = rows.mask.into_data().try_to_vec().unwrap();
        // Row 0 predicts 2 3 4 5 (the last two are reply); row 1 predicts 6 then padding.
        assert_eq!(mask, vec![0., 0., 1., 1., 1., 0., 0., 0.]);
        let targets: Vec<i64> = rows
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap();
        assert_eq!(targets, vec![2, 3, 4, 5, 6, 0, 0, 0]);
        assert_eq!(rows.reply_tokens, vec![2, 1]);
    }
}
