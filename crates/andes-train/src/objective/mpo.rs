//! Mixed Preference Optimization (InternVL's MPO, the RL stage AndesVL uses for instruct
//! models): a preference term (DPO's sigmoid loss), a quality term (BCO: each reply judged
//! on its own against a running reward shift) and a generation term (SFT on the chosen
//! reply), all against a frozen reference model. With the last two weights 0 it is DPO.

use std::path::Path;

use andes_data::TextTokenizer;
use andes_data::dataset::{PreferencePair, load_preferences};
use andes_model::qwen3::Qwen3ForCausalLM;
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{
    Evaluation, Objective, ReplyRows, Shard, StepBatches, StepFigures, StepOutput,
    accumulate_share, load_reference, load_splits, scalar,
};
use crate::checkpoint::TrainerState;
use crate::error::TrainError;
use crate::recipe::Recipe;
use andes_model::Model;

/// `[mpo]` of a recipe; defaults are InternVL's MPO settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpoSection {
    /// β: the implicit reward of a reply is β·(log π(reply) − log π_ref(reply)).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Weight of the preference term −log σ(r_chosen − r_rejected).
    #[serde(default = "default_preference_weight")]
    pub preference_weight: f64,
    /// Weight of the quality term −log σ(r_chosen − δ) − log σ(−(r_rejected − δ)), δ the
    /// running mean of the micro-batches' mean rewards (BCO's reward shift, as TRL keeps it).
    #[serde(default = "default_quality_weight")]
    pub quality_weight: f64,
    /// Weight of the generation term: mean NLL of the chosen replies' tokens.
    #[serde(default = "default_sft_weight")]
    pub sft_weight: f64,
}

fn default_beta() -> f64 {
    0.1
}
fn default_preference_weight() -> f64 {
    0.8
}
fn default_quality_weight() -> f64 {
    0.2
}
fn default_sft_weight() -> f64 {
    1.0
}

impl Default for MpoSection {
    fn default() -> Self {
        Self {
            beta: default_beta(),
            preference_weight: default_preference_weight(),
            quality_weight: default_quality_weight(),
            sft_weight: default_sft_weight(),
        }
    }
}

/// The running mean of the micro-batches' mean implicit rewards: BCO's δ. Kept in the trainer state so a
/// resumed run continues with the same shift.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RunningMean {
    /// Values seen.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
}

impl RunningMean {
    /// Folds in `values` (TRL's `RunningMoments` mean).
    pub fn update(&mut self, values: &[f64]) {
        for &value in values {
            self.count += 1;
            self.mean += (value - self.mean) / self.count as f64;
        }
    }
}

/// Per-pair preference and quality losses from the summed reply log-probabilities of the
/// policy and the reference (each `[pairs]`), for reward scale `beta` and shift `delta`.
/// Returns `(preference, quality, chosen_reward, rejected_reward)`, each `[pairs]`.
pub fn mpo_loss(
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    reference_chosen: Tensor<1>,
    reference_rejected: Tensor<1>,
    beta: f64,
    delta: f64,
) -> (Tensor<1>, Tensor<1>, Tensor<1>, Tensor<1>) {
    let chosen = (policy_chosen - reference_chosen).mul_scalar(beta);
    let rejected = (policy_rejected - reference_rejected).mul_scalar(beta);
    let preference = log_sigmoid(chosen.clone() - rejected.clone()).neg();
    let quality = log_sigmoid(chosen.clone().sub_scalar(delta)).neg()
        - log_sigmoid(rejected.clone().sub_scalar(delta).neg());
    (preference, quality, chosen, rejected)
}

/// MPO over a preference file.
pub struct MpoObjective {
    train: Vec<PreferencePair>,
    eval: Option<Vec<PreferencePair>>,
    reference: Qwen3ForCausalLM,
    section: MpoSection,
    batches: StepBatches,
}

/// Summed figures of some pairs, values only: what the reported loss and accuracy are made of.
#[derive(Debug, Clone, Copy, Default)]
struct PairTotals {
    /// Σ preference term, Σ quality term, Σ chosen-reply NLL.
    preference: f64,
    quality: f64,
    chosen_nll: f64,
    /// Pairs whose chosen reward beats the rejected one.
    preferred: usize,
}

impl std::ops::AddAssign for PairTotals {
    fn add_assign(&mut self, other: Self) {
        self.preference += other.preference;
        self.quality += other.quality;
        self.chosen_nll += other.chosen_nll;
        self.preferred += other.preferred;
    }
}

impl PairTotals {
    /// The MPO loss of `pairs` pairs with `chosen_tokens` chosen-reply tokens.
    fn loss(&self, section: &MpoSection, pairs: usize, chosen_tokens: usize) -> f64 {
        (section.preference_weight * self.preference + section.quality_weight * self.quality)
            / pairs.max(1) as f64
            + section.sft_weight * self.chosen_nll / chosen_tokens.max(1) as f64
    }
}

/// One micro-batch's figures, before dividing by the step's totals.
struct PairSums {
    /// Σ (w_p·preference + w_q·quality) over pairs + w_g·Σ chosen NLL · pairs / chosen tokens;
    /// kept as a tensor for the backward pass.
    objective: Tensor<1>,
    /// The same figures as values.
    totals: PairTotals,
}

impl MpoObjective {
    /// Reads the recipe's preference files and loads the reference (the starting checkpoint)
    /// on the plain device under `device`; `section` weighs the terms.
    pub fn new(
        recipe: &Recipe,
        section: &MpoSection,
        tokenizer: &TextTokenizer,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let load = |path: &Path| {
            load_preferences(
                path,
                tokenizer,
                recipe.data.seq_len,
                recipe.data.skip_bad_records,
            )
            .map(|(pairs, _skipped)| pairs)
            .map_err(TrainError::from)
        };
        let (train, eval) = load_splits(recipe.data.primary(), load)?;
        let (_, reference) = load_reference(recipe, device)?;
        Ok(Self {
            train,
            eval,
            reference,
            section: section.clone(),
            batches: StepBatches::of(recipe),
        })
    }

    /// The summed figures of `pairs` under `policy`, δ taken from `shift` after folding in
    /// this micro-batch's mean reward. `step_pairs` and `step_chosen_tokens` are the totals of
    /// the whole step: `objective / step_pairs` is this micro-batch's share of the step's
    /// loss, the generation term being a mean over the step's chosen tokens.
    fn pair_sums(
        &self,
        policy: &Qwen3ForCausalLM,
        pairs: &[&PreferencePair],
        shift: &mut RunningMean,
        step_pairs: usize,
        step_chosen_tokens: usize,
    ) -> Result<PairSums, TrainError> {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
            )
            .collect();
        let count = pairs.len();
        let policy_device: Device = policy.devices()[0].clone();
        let reference_device: Device = self.reference.devices()[0].clone();
        let policy_tokens = ReplyRows::new(&rows, &policy_device).token_log_probs(policy)?;
        let reference_sums: Vec<f32> = ReplyRows::new(&rows, &reference_device)
            .token_log_probs(&self.reference)?
            .sum_dim(1)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 log-probabilities");
        let reference_sums: Tensor<1> =
            Tensor::from_data(TensorData::new(reference_sums, [2 * count]), &policy_device);
        let policy_sums: Tensor<1> = policy_tokens.clone().sum_dim(1).squeeze_dim(1);
        let reward_values: Vec<f64> = {
            let values: Vec<f32> = (policy_sums.clone() - reference_sums.clone())
                .mul_scalar(self.section.beta)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32 rewards");
            values.into_iter().map(f64::from).collect()
        };
        shift.update(&[reward_values.iter().sum::<f64>() / reward_values.len() as f64]);
        let halves = |t: Tensor<1>| (t.clone().slice(0..count), t.slice(count..2 * count));
        let (policy_chosen, policy_rejected) = halves(policy_sums);
        let (reference_chosen, reference_rejected) = halves(reference_sums);
        let (preference, quality, _, _) = mpo_loss(
            policy_chosen.clone(),
            policy_rejected,
            reference_chosen,
            reference_rejected,
            self.section.beta,
            shift.mean,
        );
        let (preference, quality) = (preference.sum(), quality.sum());
        let chosen_nll = policy_chosen.sum().neg();
        let totals = PairTotals {
            preference: scalar(preference.clone()),
            quality: scalar(quality.clone()),
            chosen_nll: scalar(chosen_nll.clone()),
            preferred: (0..count)
                .filter(|&i| reward_values[i] > reward_values[count + i])
                .count(),
        };
        let sft_scale =
            self.section.sft_weight * step_pairs as f64 / step_chosen_tokens.max(1) as f64;
        let objective = preference.mul_scalar(self.section.preference_weight)
            + quality.mul_scalar(self.section.quality_weight)
            + chosen_nll.mul_scalar(sft_scale);
        Ok(PairSums { objective, totals })
    }
}

impl Objective for MpoObjective {
    fn step(
        &self,
        model: &Model,
        state: &mut TrainerState,
        _step_seed: u64,
        shard: Shard,
    ) -> Result<StepOutput, TrainError> {
        // δ is a running mean over the micro-batches in order: each depends on the last.
        assert_eq!(shard, Shard::WHOLE, "MPO steps are not sharded");
        let model = model.language_model();
        let micro_batches = self.batches.draw_one(&self.train, state);
        let pairs = micro_batches.iter().map(Vec::len).sum::<usize>();
        let chosen_tokens: usize = micro_batches.iter().flatten().map(|p| p.chosen.len()).sum();
        let reply_tokens: usize = micro_batches
            .iter()
            .flatten()
            .map(|p| p.chosen.len() + p.rejected.len())
            .sum();
        let mut accumulator = GradientsAccumulator::new();
        let mut totals = PairTotals::default();
        for batch in &micro_batches {
            let sums =
                self.pair_sums(model, batch, &mut state.reward_shift, pairs, chosen_tokens)?;
            accumulate_share(&mut accumulator, model, sums.objective, pairs as f64);
            totals += sums.totals;
        }
        Ok(StepOutput {
            grads: accumulator.grads(),
            figures: StepFigures {
                loss: totals.loss(&self.section, pairs, chosen_tokens),
                tokens: reply_tokens,
                preference_accuracy: Some(totals.preferred as f64 / pairs as f64),
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
        let all: Vec<&PreferencePair> = eval.iter().collect();
        let chosen_tokens: usize = eval.iter().map(|p| p.chosen.len()).sum();
        let mut totals = PairTotals::default();
        // Each held-out batch takes its own mean reward as δ, so the figure depends on the
        // model only, not on how many rewards the training shift has seen.
        for batch in all.chunks(self.batches.batch_size) {
            let mut shift = RunningMean::default();
            let sums = self.pair_sums(&policy, batch, &mut shift, eval.len(), chosen_tokens)?;
            totals += sums.totals;
        }
        Ok(Some(Evaluation {
            loss: Some(totals.loss(&self.section, eval.len(), chosen_tokens)),
            preference_accuracy: Some(totals.preferred as f64 / eval.len() as f64),
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

    /// At the first step the policy is its reference: every implicit reward and δ are 0, so
    /// σ(·) = ½ in both DPO's and BCO's derivatives and the MPO gradient is the closed form
    /// −(w_p + w_q)·β/2·Σ(∇log π(chosen) − ∇log π(rejected))/P − w_g·Σ∇log π(chosen)/T_chosen,
    /// written here directly and compared parameter by parameter.
    #[test]
    fn at_the_reference_the_gradient_is_the_closed_form() {
        let (recipe, tokenizer) =
            tiny_recipe("mpo", "datasets/preferences/gcide-define-eval.jsonl");
        let device = Device::flex();
        let Stage::Mpo { mpo } = &recipe.stage else {
            panic!("the tiny mpo recipe read as {:?}", recipe.stage);
        };
        let objective = MpoObjective::new(&recipe, mpo, &tokenizer, &device).unwrap();
        let fixture = recipe.model.checkpoint.clone();
        let (_, policy) = Model::load(
            &fixture,
            &device.clone().autodiff(),
            burn::tensor::DType::F32,
        )
        .unwrap();
        let policy = policy.into_language_model();
        let pairs: Vec<&PreferencePair> = objective.train[..3].iter().collect();
        let chosen_tokens: usize = pairs.iter().map(|p| p.chosen.len()).sum();
        let count = pairs.len();
        let mut shift = RunningMean::default();
        let sums = objective
            .pair_sums(&policy, &pairs, &mut shift, count, chosen_tokens)
            .unwrap();
        let mpo = sums.objective.div_scalar(count as f64);
        let mpo = GradientsParams::from_grads(mpo.backward(), &policy);

        let section = &objective.section;
        let preference = (section.preference_weight + section.quality_weight) * section.beta / 2.0;
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(
                pairs
                    .iter()
                    .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
            )
            .collect();
        let weights: Vec<f32> = (0..2 * count)
            .map(|row| {
                let sign = if row < count { -1.0 } else { 1.0 };
                let sft = if row < count {
                    -section.sft_weight / chosen_tokens as f64
                } else {
                    0.0
                };
                (sign * preference / count as f64 + sft) as f32
            })
            .collect();
        let device = policy.devices()[0].clone();
        let weights: Tensor<2> =
            Tensor::from_data(TensorData::new(weights, [2 * count, 1]), &device);
        let rows = ReplyRows::new(&rows, &device);
        let closed_form = (rows.token_log_probs(&policy).unwrap() * weights).sum();
        let closed_form = GradientsParams::from_grads(closed_form.backward(), &policy);
        let (gap, scale) = gradient_gap(&policy, &mpo, &closed_form);
        assert!(scale > 1e-4, "no gradient at all");
        assert!(
            gap <= 1e-5 * scale,
            "largest gradient difference {gap} of {scale}"
        );
    }

    fn tensor(values: &[f64]) -> Tensor<1> {
        let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        Tensor::from_data(
            TensorData::new(values.clone(), [values.len()]),
            &Device::flex(),
        )
    }

    fn values(t: Tensor<1>) -> Vec<f64> {
        t.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// DPO eq. 7 and BCO's loss written out in f64 from their papers.
    #[test]
    fn the_terms_match_the_dpo_and_bco_formulas() {
        let (pc, pr, rc, rr) = ([-10.0, -3.0], [-12.0, -2.0], [-11.0, -2.5], [-11.5, -2.5]);
        let (beta, delta) = (0.5, 0.1);
        let (preference, quality, chosen, rejected) = mpo_loss(
            tensor(&pc),
            tensor(&pr),
            tensor(&rc),
            tensor(&rr),
            beta,
            delta,
        );
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        for (i, ((p, q), (c, r))) in values(preference)
            .into_iter()
            .zip(values(quality))
            .zip(values(chosen).into_iter().zip(values(rejected)))
            .enumerate()
        {
            let want_c = beta * (pc[i] - rc[i]);
            let want_r = beta * (pr[i] - rr[i]);
            assert!((c - want_c).abs() < 1e-6 && (r - want_r).abs() < 1e-6);
            let want_p = -sigmoid(want_c - want_r).ln();
            let want_q = -sigmoid(want_c - delta).ln() - sigmoid(-(want_r - delta)).ln();
            assert!((p - want_p).abs() < 1e-6, "preference {p} vs {want_p}");
            assert!((q - want_q).abs() < 1e-6, "quality {q} vs {want_q}");
        }
    }

    #[test]
    fn the_running_mean_is_the_mean_of_everything_seen() {
        let mut mean = RunningMean::default();
        mean.update(&[1.0, 2.0]);
        mean.update(&[6.0]);
        assert_eq!(mean.count, 3);
        assert!((mean.mean - 3.0).abs() < 1e-12);
    }
}
