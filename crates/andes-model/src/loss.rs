//! Token log-probabilities and the next-token loss shared by every stage that learns from
//! tokens.
//!
//! The LM head and log-softmax run over at most [`MAX_LOGIT_BYTES`] of logits at a time: a
//! Qwen3 vocabulary of 151,936 makes the logits of one [4, 1024] batch 2.5 GB in f32, more
//! than one Vulkan buffer may hold (2 GiB), and no pass needs them all at once.

use crate::composed::{Form, form};
use crate::head_log_probs::{head_target_log_probs, row_chunks};
use crate::precision::{autocast_dtype, operand};
use crate::qwen3::Qwen3ForCausalLM;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

/// The most bytes of logits one chunk of positions produces: in f32, or in the products'
/// dtype where the LM head's operation reads them as they come (`positions_per_chunk`).
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
    chunked_log_probs(model, hidden, targets)
}

/// Positions whose logits of `bytes` an element stay within [`MAX_LOGIT_BYTES`]: 4 where a
/// chunk's logits are f32 (the composed forms, distillation), the products' dtype's (bf16
/// under autocast) where [`head_target_log_probs`] reads the product as it comes.
fn positions_per_chunk(model: &Qwen3ForCausalLM, bytes: usize) -> usize {
    (MAX_LOGIT_BYTES / (bytes * model.vocab_size())).max(1)
}

/// The head and the log-softmax over chunks of positions: one operation
/// ([`head_target_log_probs`], chunks sized by the products' dtype) where the head has no
/// bias (Qwen3's has none), else, or where `ANDES_HEAD=composed` asks, composed of Burn's
/// operations (chunks of f32 logits); see [`positions_per_chunk`].
fn chunked_log_probs(
    model: &Qwen3ForCausalLM,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
) -> Tensor<2> {
    let [batch, seq, width] = hidden.dims();
    let positions = batch * seq;
    let hidden: Tensor<2> = hidden.reshape([positions, width]);
    let targets: Tensor<1, Int> = targets.reshape([positions]);
    let picked = match model.head() {
        (_, None) if form("ANDES_HEAD", Form::OneOperation) == Form::OneOperation => {
            head_target_log_probs(
                operand(hidden),
                operand(model.head_rows()),
                targets,
                positions_per_chunk(model, autocast_dtype().map_or(4, |dtype| dtype.size())),
            )
        }
        _ => composed_log_probs(model, hidden, targets, positions_per_chunk(model, 4)),
    };
    picked.reshape([batch, seq])
}

/// The head, log-softmax and gather of each chunk differentiated operation by operation.
fn composed_log_probs(
    model: &Qwen3ForCausalLM,
    hidden: Tensor<2>,
    targets: Tensor<1, Int>,
    positions_per_chunk: usize,
) -> Tensor<1> {
    let chunks: Vec<Tensor<1>> = row_chunks(hidden.dims()[0], positions_per_chunk)
        .map(|chunk| {
            let logits = model.logits(hidden.clone().slice(chunk.clone()).unsqueeze());
            let picked = targets.clone().slice(chunk).unsqueeze();
            target_log_probs(logits, picked).squeeze_dim(0)
        })
        .collect();
    Tensor::cat(chunks, 0)
}

/// Summed KL(teacher ‖ student) of the next-token distributions at `temperature`, over the
/// masked positions: `hidden` and `teacher_hidden` are the final hidden states `[batch, seq,
/// hidden]` of `model` and `teacher` on the same inputs, `mask` `[batch, seq]`. Both heads run
/// on the chunks of positions of [`head_log_probs`], so neither's logits take memory whole;
/// the teacher side carries no gradient. Returns a one-element tensor, scaled like
/// [`masked_next_token_nll`]'s sum.
pub fn masked_distillation_kl(
    model: &Qwen3ForCausalLM,
    hidden: Tensor<3>,
    teacher: &Qwen3ForCausalLM,
    teacher_hidden: Tensor<3>,
    mask: Tensor<2, Bool>,
    temperature: f64,
) -> Tensor<1> {
    let [batch, seq, width] = hidden.dims();
    let positions = batch * seq;
    let hidden: Tensor<2> = hidden.reshape([positions, width]);
    let teacher_hidden: Tensor<2> = teacher_hidden.detach().reshape([positions, width]);
    let chunks: Vec<Tensor<1>> = row_chunks(positions, positions_per_chunk(model, 4))
        .map(|chunk| {
            let rows = chunk.len();
            let student = model.logits(hidden.clone().slice(chunk.clone()).unsqueeze());
            let teacher = teacher
                .logits(teacher_hidden.clone().slice(chunk).unsqueeze())
                .detach();
            let log_student = log_softmax(student.div_scalar(temperature), 2);
            let log_teacher = log_softmax(teacher.div_scalar(temperature), 2);
            let kl = log_teacher.clone().exp() * (log_teacher - log_student);
            kl.sum_dim(2).reshape([rows])
        })
        .collect();
    let kl: Tensor<2> = Tensor::cat(chunks, 0).reshape([batch, seq]);
    kl.zeros_like().mask_where(mask, kl).sum()
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
    masked_target_log_probs(model, hidden, targets, mask)
        .sum()
        .neg()
}

/// Log-probability of each target `[batch, seq]`, zero where `mask` is unset: the terms of
/// [`masked_next_token_nll`], for a caller that also sums them by row.
pub fn masked_target_log_probs(
    model: &Qwen3ForCausalLM,
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
    mask: Tensor<2, Bool>,
) -> Tensor<2> {
    let picked = head_log_probs(model, hidden, targets);
    let zeros = picked.zeros_like();
    zeros.mask_where(mask, picked)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::checkpoint::load_qwen3;
    use burn::tensor::{DType, Device, TensorData};

    use super::*;

    #[test]
    fn the_one_operation_head_gives_the_composed_heads_log_probs_and_gradients() {
        for fixture in ["qwen3-tiny-untied-mha-f32", "qwen3-tiny-tied-gqa-f32"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures")
                .join(fixture);
            let device = Device::flex().autodiff();
            let (_, model) = load_qwen3(&dir, &device, DType::F32).unwrap();
            let ids: Vec<i64> = (0..2 * 9).map(|i| (i * 37 % 500) as i64).collect();
            let inputs: Tensor<2, Int> =
                Tensor::from_data(TensorData::new(ids.clone(), [2, 9]), &device);
            let next: Vec<i64> = ids.iter().map(|i| (i + 1) % 500).collect();
            let targets: Tensor<2, Int> = Tensor::from_data(TensorData::new(next, [2, 9]), &device);
            // Log-probs, then the gradients of their sum for the head and the last layer.
            let run = |per_chunk: usize, composed: bool| {
                let hidden = model
                    .forward_hidden(inputs.clone(), &mut model.new_cache())
                    .unwrap();
                let width = hidden.dims()[2];
                let (hidden, targets) =
                    (hidden.reshape([18, width]), targets.clone().reshape([18]));
                let picked = if composed {
                    composed_log_probs(&model, hidden, targets, per_chunk)
                } else {
                    head_target_log_probs(hidden, model.head_rows(), targets, per_chunk)
                };
                let values: Vec<f32> = picked.clone().into_data().try_to_vec().unwrap();
                let grads = picked.sum().backward();
                let head = match &model.lm_head {
                    Some(head) => head.weight.grad(&grads).unwrap(),
                    None => model.model.embed_tokens.weight.grad(&grads).unwrap(),
                };
                let layer = &model.model.layers[1].mlp.down_proj.base_layer.weight;
                let flat = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
                (values, flat(head), flat(layer.grad(&grads).unwrap()))
            };
            // Both forms, in chunks of every size, against the composed head in one chunk.
            let reference = run(18, true);
            for (per_chunk, composed) in [1, 4, 7, 18]
                .into_iter()
                .flat_map(|n| [(n, false), (n, true)])
            {
                let got = run(per_chunk, composed);
                for (what, a, b) in [
                    ("log-probs", &got.0, &reference.0),
                    ("head gradient", &got.1, &reference.1),
                    ("layer gradient", &got.2, &reference.2),
                ] {
                    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                    assert!(
                        scale > 0.0 && gap <= 1e-5 * scale,
                        "{fixture}, {per_chunk} a chunk, composed {composed}, {what}: gap {gap} \
                         at scale {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn distillation_kl_is_the_sum_of_kl_over_the_masked_positions() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let device = Device::flex();
        let load = |name: &str| {
            let path = dir.join("../../fixtures").join(name);
            load_qwen3(&path, &device, DType::F32).unwrap().1
        };
        // Two models of one vocabulary and width: the untied and the tied tiny Qwen3.
        let (student, teacher) = (
            load("qwen3-tiny-untied-mha-f32"),
            load("qwen3-tiny-tied-gqa-f32"),
        );
        let ids: Vec<i64> = (0..2 * 5).map(|i| (i * 41 % 500) as i64).collect();
        let inputs: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids, [2, 5]), &device);
        let mask_values = vec![
            true, false, true, true, false, true, true, true, false, true,
        ];
        let mask: Tensor<2, Bool> =
            Tensor::from_data(TensorData::new(mask_values.clone(), [2, 5]), &device);
        let hidden = |m: &Qwen3ForCausalLM| {
            m.forward_hidden(inputs.clone(), &mut m.new_cache())
                .unwrap()
        };
        let logits = |m: &Qwen3ForCausalLM| -> Vec<f64> {
            let out: Vec<f32> = m.logits(hidden(m)).into_data().try_to_vec().unwrap();
            out.into_iter().map(f64::from).collect()
        };
        let temperature = 2.0;
        let kl = |t: &Qwen3ForCausalLM| {
            let value = masked_distillation_kl(
                &student,
                hidden(&student),
                t,
                hidden(t),
                mask.clone(),
                temperature,
            );
            f64::from(value.into_scalar::<f32>())
        };
        // The formula, in f64 on the host: Σ_positions Σ_v p_t(v) (log p_t(v) − log p_s(v)).
        let log_softmax = |row: &[f64]| {
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            row.iter().map(|z| z - lse).collect::<Vec<f64>>()
        };
        let (zs, zt) = (logits(&student), logits(&teacher));
        let vocab = student.vocab_size();
        let mut expected = 0.0;
        for (position, counted) in mask_values.iter().enumerate() {
            if !counted {
                continue;
            }
            let row = |z: &[f64]| {
                let r: Vec<f64> = z[position * vocab..(position + 1) * vocab]
                    .iter()
                    .map(|v| v / temperature)
                    .collect();
                log_softmax(&r)
            };
            let (ls, lt) = (row(&zs), row(&zt));
            expected += lt
                .iter()
                .zip(&ls)
                .map(|(t, s)| t.exp() * (t - s))
                .sum::<f64>();
        }
        let got = kl(&teacher);
        assert!(expected > 0.01, "the two models differ: {expected}");
        assert!(
            (got - expected).abs() <= 1e-4 * expected,
            "{got} vs {expected}"
        );
        assert!(kl(&student).abs() < 1e-6, "a model against itself");
    }
}
