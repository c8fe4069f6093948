//! Group Relative Policy Optimization (DeepSeekMath; the RL stage AndesVL uses for thinking
//! models): for each prompt sample a group of completions from the current policy, score
//! them with a named reward function, normalise rewards within the group into advantages,
//! and maximise the clipped policy-ratio objective with a KL penalty to a frozen reference.
//!
//! A prompt's group is sampled in one batch ([`generate_group`]). One policy update per batch
//! of samples (TRL's default `num_iterations = 1`), so the
//! ratio's "old" policy is the current one detached: the ratio is 1 in value and its gradient
//! is the policy gradient; clipping is kept in the form that holds for more updates.

use std::path::Path;

use andes_data::TextTokenizer;
use andes_data::chat::END_OF_TURN;
use andes_data::dataset::{PromptExample, load_prompts};
use andes_model::generate::{Decoding, eos_token_ids, generate_group};
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{
    Evaluation, Objective, ReplyRows, Shard, StepBatches, StepFigures, StepOutput,
    accumulate_share, load_reference, load_splits,
};
use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::recipe::Recipe;
use crate::reward::RewardFunction;
use andes_model::Model;

/// `[grpo]` of a recipe; defaults are DeepSeekMath's and TRL's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoSection {
    /// How completions are scored against the prompt's answer.
    pub reward: RewardFunction,
    /// Completions sampled per prompt (G).
    #[serde(default = "default_group_size")]
    pub group_size: usize,
    /// Upper bound on a completion's tokens; generation also stops at the end of the turn.
    pub max_new_tokens: usize,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Nucleus sampling threshold (none: the whole distribution).
    pub top_p: Option<f64>,
    /// ε of the clipped ratio `clip(π/π_old, 1 − ε, 1 + ε)`.
    #[serde(default = "default_clip_epsilon")]
    pub clip_epsilon: f64,
    /// β of the per-token KL penalty to the reference (k3 estimator).
    #[serde(default = "default_kl_beta")]
    pub kl_beta: f64,
}

fn default_group_size() -> usize {
    8
}
fn default_temperature() -> f64 {
    1.0
}
fn default_clip_epsilon() -> f64 {
    0.2
}
fn default_kl_beta() -> f64 {
    0.04
}

/// One sampled completion and its reward.
struct Rollout<'a> {
    prompt: &'a [u32],
    completion: Vec<u32>,
    reward: f64,
}

/// GRPO over a prompt file.
pub struct GrpoObjective {
    train: Vec<PromptExample>,
    eval: Option<Vec<PromptExample>>,
    reference: Qwen3ForCausalLM,
    tokenizer: TextTokenizer,
    stop_tokens: Vec<u32>,
    section: GrpoSection,
    batches: StepBatches,
}

impl GrpoObjective {
    /// Reads the recipe's prompt files (prompts leave room for `section.max_new_tokens`
    /// within `seq_len`) and loads the reference on the plain device under `device`.
    pub fn new(
        recipe: &Recipe,
        section: &GrpoSection,
        tokenizer: &TextTokenizer,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let prompt_limit = recipe.data.seq_len + 1 - section.max_new_tokens;
        let load = |path: &Path| {
            load_prompts(path, tokenizer, prompt_limit, recipe.data.skip_bad_records)
                .map(|(prompts, _skipped)| prompts)
                .map_err(TrainError::from)
        };
        let (train, eval) = load_splits(recipe.data.primary(), load)?;
        let (config, reference) = load_reference(recipe, device)?;
        let mut stop_tokens = eos_token_ids(&recipe.model.checkpoint, config.text_config())?;
        stop_tokens.extend(tokenizer.token_id(END_OF_TURN));
        Ok(Self {
            train,
            eval,
            reference,
            tokenizer: tokenizer.clone(),
            stop_tokens,
            section: section.clone(),
            batches: StepBatches::of(recipe),
        })
    }

    /// Completions of `example` from `policy`, one per rule of `decodings`, sampled in one
    /// batch, each scored.
    fn rollouts<'a>(
        &self,
        policy: &Qwen3ForCausalLM,
        example: &'a PromptExample,
        decodings: &[Decoding],
    ) -> Result<Vec<Rollout<'a>>, TrainError> {
        let device: Device = policy.devices()[0].clone();
        let completions = generate_group(
            policy,
            &example.prompt,
            decodings,
            self.section.max_new_tokens,
            &self.stop_tokens,
            &device,
        )?;
        completions
            .into_iter()
            .map(|completion| {
                let text_ids = match completion.last() {
                    Some(last) if self.stop_tokens.contains(last) => {
                        &completion[..completion.len() - 1]
                    }
                    _ => &completion[..],
                };
                let text = self.tokenizer.decode(text_ids)?;
                Ok(Rollout {
                    prompt: &example.prompt,
                    reward: self.section.reward.score(&text, &example.answer),
                    completion,
                })
            })
            .collect()
    }

    /// The summed per-sequence GRPO losses of `rollouts` (whole groups) under `model`.
    fn group_loss(
        &self,
        model: &Qwen3ForCausalLM,
        rollouts: &[Rollout<'_>],
    ) -> Result<Tensor<1>, TrainError> {
        let device: Device = model.devices()[0].clone();
        let rows: Vec<(&[u32], &[u32])> = rollouts
            .iter()
            .map(|r| (r.prompt, r.completion.as_slice()))
            .collect();
        let policy_rows = ReplyRows::new(&rows, &device);
        let log_probs = policy_rows.token_log_probs(model)?;
        let reference_rows = ReplyRows::new(&rows, &self.reference.devices()[0]);
        let reference = reference_rows.token_log_probs(&self.reference)?.into_data();
        let reference: Tensor<2> = Tensor::from_data(reference, &device);
        let rewards: Vec<f64> = rollouts.iter().map(|r| r.reward).collect();
        let advantages: Vec<f32> = group_advantages(&rewards, self.section.group_size)
            .into_iter()
            .map(|a| a as f32)
            .collect();
        let advantages: Tensor<2> =
            Tensor::from_data(TensorData::new(advantages, [rollouts.len(), 1]), &device);
        let ratio = (log_probs.clone() - log_probs.clone().detach()).exp();
        let epsilon = self.section.clip_epsilon;
        let surrogate = (ratio.clone() * advantages.clone())
            .min_pair(ratio.clamp(1.0 - epsilon, 1.0 + epsilon) * advantages);
        let log_ratio = reference - log_probs;
        let kl = log_ratio.clone().exp() - log_ratio - 1.0;
        let per_token = (kl.mul_scalar(self.section.kl_beta) - surrogate) * policy_rows.mask;
        let lengths: Vec<f32> = policy_rows.reply_tokens.iter().map(|&n| n as f32).collect();
        let lengths: Tensor<2> =
            Tensor::from_data(TensorData::new(lengths, [rollouts.len(), 1]), &device);
        Ok((per_token.sum_dim(1) / lengths).sum())
    }
}

/// `(r − mean) / (std + 1e-4)` within each consecutive group of `group_size` rewards, the
/// standard deviation unbiased (as `torch.std`); a group of equal rewards gets 0.
pub fn group_advantages(rewards: &[f64], group_size: usize) -> Vec<f64> {
    rewards
        .chunks(group_size)
        .flat_map(|group| {
            let n = group.len() as f64;
            let mean = group.iter().sum::<f64>() / n;
            let variance =
                group.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            let std = variance.sqrt();
            group.iter().map(move |r| (r - mean) / (std + 1e-4))
        })
        .collect()
}

impl Objective for GrpoObjective {
    fn step(
        &self,
        model: &Model,
        state: &mut TrainerState,
        step_seed: u64,
        shard: Shard,
    ) -> Result<StepOutput, TrainError> {
        let model = model.language_model();
        let policy = model.valid();
        let group_size = self.section.group_size;
        let prompts = self.batches.draw_one(&self.train, state);
        // Slots are numbered over the whole step, so a completion's seed does not depend on
        // which shard samples it.
        let sequences = prompts.iter().map(Vec::len).sum::<usize>() * group_size;
        let mut micro_batches = Vec::new();
        for (index, batch) in prompts.iter().enumerate() {
            if !shard.owns(index) {
                continue;
            }
            let first_slot: usize =
                prompts[..index].iter().map(Vec::len).sum::<usize>() * group_size;
            let mut rollouts = Vec::new();
            for (position, example) in batch.iter().enumerate() {
                let start = (first_slot + position * group_size) as u64;
                let decodings: Vec<Decoding> = (start..start + group_size as u64)
                    .map(|slot| Decoding::Sample {
                        temperature: self.section.temperature as f32,
                        top_k: None,
                        top_p: self.section.top_p.map(|p| p as f32),
                        seed: step_seed ^ slot.wrapping_mul(0x2545_F491_4F6C_DD1D),
                    })
                    .collect();
                rollouts.extend(self.rollouts(&policy, example, &decodings)?);
            }
            micro_batches.push(rollouts);
        }
        let sequences = sequences as f64;
        let mut accumulator = GradientsAccumulator::new();
        let mut loss_sum = 0.0;
        for rollouts in &micro_batches {
            let summed = self.group_loss(model, rollouts)?;
            loss_sum += accumulate_share(&mut accumulator, model, summed, sequences);
        }
        let all = micro_batches.iter().flatten();
        let reward = all.clone().map(|r| r.reward).sum::<f64>() / sequences;
        Ok(StepOutput {
            grads: accumulator.grads(),
            figures: StepFigures {
                loss: loss_sum / sequences,
                tokens: all.map(|r| r.completion.len()).sum(),
                reward: Some(reward),
                ..StepFigures::default()
            },
        })
    }

    fn evaluate(&self, model: &Model) -> Result<Option<Evaluation>, TrainError> {
        let model = model.language_model();
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let policy = model.valid();
        let mut total = 0.0;
        for example in eval {
            total += self.rollouts(&policy, example, &[Decoding::Greedy])?[0].reward;
        }
        Ok(Some(Evaluation {
            reward: Some(total / eval.len() as f64),
            ..Evaluation::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::GradientsParams;

    use super::*;
    use crate::objective::tests::{gradient_gap, tiny_recipe};
    use crate::recipe::Stage;
    use andes_model::Model;

    /// On-policy (the model is its reference, one update per batch) the clipped ratio is 1 and
    /// the k3 KL has zero gradient, so GRPO's gradient must be REINFORCE's with group-normalised
    /// advantages, each sequence's log-likelihood averaged over its tokens: written here
    /// directly from DeepSeekMath's eq. 21 and compared parameter by parameter.
    #[test]
    fn on_policy_the_gradient_is_reinforce_with_group_advantages() {
        let (recipe, tokenizer) = tiny_recipe("grpo", "datasets/grpo/gcide-letters-eval.jsonl");
        let fixture = recipe.model.checkpoint.clone();
        let device = Device::flex();
        let Stage::Grpo { grpo } = &recipe.stage else {
            panic!("the tiny grpo recipe read as {:?}", recipe.stage);
        };
        let objective = GrpoObjective::new(&recipe, grpo, &tokenizer, &device).unwrap();
        let (_, policy) = Model::load(
            &fixture,
            &device.clone().autodiff(),
            burn::tensor::DType::F32,
        )
        .unwrap();
        let policy = policy.into_language_model();
        let prompt = objective.train[0].prompt.as_slice();
        let completions: [&[u32]; 4] = [&[40, 41, 42], &[43, 44], &[45], &[46, 47, 48, 49]];
        let rewards = [1.0, 0.0, 0.0, 1.0];
        let rollouts: Vec<Rollout<'_>> = completions
            .iter()
            .zip(rewards)
            .map(|(completion, reward)| Rollout {
                prompt,
                completion: completion.to_vec(),
                reward,
            })
            .collect();
        let n = rollouts.len() as f64;
        let grpo = objective
            .group_loss(&policy, &rollouts)
            .unwrap()
            .div_scalar(n);
        let grpo = GradientsParams::from_grads(grpo.backward(), &policy);

        let rows: Vec<(&[u32], &[u32])> = completions.iter().map(|c| (prompt, *c)).collect();
        let rows = ReplyRows::new(&rows, &policy.devices()[0]);
        let weights: Vec<f32> = group_advantages(&rewards, 4)
            .iter()
            .zip(&completions)
            .map(|(a, c)| (-a / c.len() as f64 / n) as f32)
            .collect();
        let weights: Tensor<2> =
            Tensor::from_data(TensorData::new(weights, [4, 1]), &policy.devices()[0]);
        let reinforce = (rows.token_log_probs(&policy).unwrap() * weights).sum();
        let reinforce = GradientsParams::from_grads(reinforce.backward(), &policy);
        let (gap, scale) = gradient_gap(&policy, &grpo, &reinforce);
        assert!(scale > 1e-4, "no gradient at all");
        assert!(
            gap <= 1e-5 * scale,
            "largest gradient difference {gap} of {scale}"
        );
    }

    #[test]
    fn advantages_are_normalised_within_each_group() {
        let advantages = group_advantages(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], 4);
        // Group 1: mean 0.25, unbiased std 0.5.
        let want = [1.5, -0.5, -0.5, -0.5];
        for (got, want) in advantages[..4].iter().zip(want) {
            assert!(
                (got - want * 0.5 / (0.5 + 1e-4)).abs() < 1e-12,
                "{got} vs {want}"
            );
        }
        assert!(advantages[4..].iter().all(|&a| a == 0.0));
    }
}
