//! Greedy decoding whose steps replay as one captured device graph.
//!
//! Decoding one token at batch 1 moves little data but runs some 25 operations a layer: an
//! eager step pays Burn's dispatch, fusion bookkeeping and one kernel launch for each of them
//! on the host, and on a GPU that host time, not the kernels, sets the pace. Here one step
//! (embedding, the blocks over a fixed KV cache, logits, argmax, feeding the argmax back) is
//! captured once with Burn's [`capture`] and then replayed: on the cuda backend one CUDA-graph
//! launch a token, as llama.cpp and vLLM decode. On a backend without device graphs the
//! replay runs the step again, so the tokens are the same everywhere (the tests check them
//! on the CPU against the growing cache).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use burn::tensor::{Graph, IndexingUpdateOp, Int, Tensor, capture};

use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::qwen3::Qwen3ForCausalLM;

/// Real steps [`capture`] runs before it records (burn 0.22 warms the kernels and the
/// allocator with three); on a backend without graphs the recording run executes too.
const CAPTURE_WARMUP_STEPS: usize = 3;

/// What one step reads and writes: the same buffers at every replay.
struct StepState {
    cache: KvCache,
    /// `[1, 1]`: the token this step feeds; the step overwrites it with its argmax.
    token: Tensor<2, Int>,
    /// `[capacity]`: the token chosen for each position, so the steps run inside
    /// [`capture`] (which cannot read back) give their tokens up afterwards.
    chosen: Tensor<1, Int>,
}

type Step<'m> = Box<dyn FnMut() -> Tensor<2, Int> + 'm>;

/// Yields greedy tokens one at a time from a prefilled prompt, each from one graph replay.
pub struct ReplayedDecoder<'m> {
    graph: Graph<Tensor<2, Int>, Step<'m>>,
    /// Tokens the capture's own steps chose, handed out before the first replay.
    captured: VecDeque<u32>,
    /// Tokens the fixed cache still has room for.
    remaining: usize,
}

impl<'m> ReplayedDecoder<'m> {
    /// `cache` holds the prefilled prompt (a growing cache of batch 1), `first` the token
    /// chosen after it; `steps` bounds the tokens to come. Fails when the prompt, the steps and
    /// the capture's warm-up steps do not fit the model's positions.
    pub fn new(
        model: &'m Qwen3ForCausalLM,
        cache: KvCache,
        first: u32,
        steps: usize,
    ) -> Result<Self, ModelError> {
        let prompt = cache.len();
        let capacity = Self::positions(prompt, steps);
        let limit = model.model.rotary.max_positions();
        if capacity > limit {
            return Err(ModelError::InvalidInput(format!(
                "a replayed decode of {steps} tokens after {prompt} needs {capacity} positions; \
                 the rotary tables cover {limit} (max_position_embeddings, or yarn's stretched \
                 context; dynamic scaling past max_position_embeddings is not replayed)"
            )));
        }
        let cache = cache.into_fixed(capacity)?;
        let device = model.model.embed_tokens.weight.device();
        let state = Rc::new(RefCell::new(StepState {
            cache,
            token: Tensor::from_data([[first as i64]], &device),
            chosen: Tensor::zeros([capacity], &device),
        }));
        let step_state = state.clone();
        let step: Step<'m> = Box::new(move || step(model, &mut step_state.borrow_mut()));
        let graph = capture(&device, step);
        // The steps that ran for real: the warm-ups, and the recording too where the backend
        // could not record (read from the device rather than assumed).
        let (position, chosen) = {
            let state = state.borrow();
            let position = state.cache.device_index().expect("the cache is fixed");
            (position, state.chosen.clone())
        };
        let executed = ids(position.reshape([1, 1]))?[0] as usize - prompt;
        let chosen = chosen.narrow(0, prompt + 1, executed);
        Ok(Self {
            graph,
            captured: ids(chosen.reshape([1, executed]))?.into(),
            remaining: capacity - prompt - 1,
        })
    }

    /// Positions the fixed cache of `steps` tokens after `prompt` takes: the capture's own
    /// steps run even when fewer tokens are wanted.
    pub fn positions(prompt: usize, steps: usize) -> usize {
        prompt + steps.max(CAPTURE_WARMUP_STEPS + 1) + 1
    }

    /// The next greedy token.
    pub fn next_token(&mut self) -> Result<u32, ModelError> {
        self.remaining = self.remaining.checked_sub(1).ok_or_else(|| {
            ModelError::InvalidInput(
                "the replayed decoder's fixed KV cache is full: ask for more steps".into(),
            )
        })?;
        if let Some(token) = self.captured.pop_front() {
            return Ok(token);
        }
        // SAFETY: the step reads the model (borrowed for 'm, outliving `self`) and its state
        // (owned by the step), and nothing else touches them between replays; each replay is
        // followed by reading its output back, which waits for it.
        let chosen = unsafe { self.graph.replay() }.clone();
        Ok(ids(chosen)?[0])
    }
}

/// One decoding step over a fixed cache; returns the chosen token (`[1, 1]`).
fn step(model: &Qwen3ForCausalLM, state: &mut StepState) -> Tensor<2, Int> {
    let hidden = model
        .forward_hidden(state.token.clone(), &mut state.cache)
        .expect("ReplayedDecoder::new sized the fixed cache for every step");
    let chosen = model.logits(hidden).argmax(2).reshape([1, 1]);
    let position = state.cache.device_index().expect("the cache is fixed");
    state.chosen.inplace(|all| {
        all.select_assign(
            0,
            position,
            chosen.clone().reshape([1]),
            IndexingUpdateOp::Assign,
        )
    });
    state
        .token
        .inplace(|token| token.slice_assign([0..1, 0..1], chosen.clone()));
    chosen
}

/// The ids of a `[1, n]` token tensor, read back from the device.
fn ids(tokens: Tensor<2, Int>) -> Result<Vec<u32>, ModelError> {
    let data = tokens.into_data().convert::<i64>();
    let values = data
        .as_slice::<i64>()
        .map_err(|err| ModelError::InvalidInput(format!("reading chosen tokens: {err:?}")))?;
    Ok(values.iter().map(|&id| id as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::token_tensor;
    use burn::tensor::{DType, Device};

    /// The tiny fixture with `tokens` fed through a growing cache: the model, the cache and the
    /// greedy token after them.
    fn prefilled(tokens: &[u32]) -> (Qwen3ForCausalLM, KvCache, u32) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/qwen3-tiny-tied-gqa-f32");
        let device = Device::flex();
        let (_, model) = crate::checkpoint::load_qwen3(&dir, &device, DType::F32).unwrap();
        let mut cache = model.new_cache();
        let next = greedy_after(&model, tokens, &mut cache);
        (model, cache, next)
    }

    /// The greedy token after `tokens`, which continue the sequence in `cache`.
    fn greedy_after(model: &Qwen3ForCausalLM, tokens: &[u32], cache: &mut KvCache) -> u32 {
        let device = model.model.embed_tokens.weight.device();
        let logits = model.forward(token_tensor(tokens, &device), cache).unwrap();
        let last = tokens.len() - 1;
        let chosen = logits.slice([0..1, last..last + 1]).argmax(2);
        ids(chosen.reshape([1, 1])).unwrap()[0]
    }

    /// Fewer wanted tokens than the capture runs steps still works: the capture's steps are
    /// handed out in order, and they are the growing cache's greedy tokens.
    #[test]
    fn the_capture_steps_tokens_come_first_and_match_eager_decoding() {
        let (model, cache, first) = prefilled(&[3, 141, 59, 26, 5]);
        let mut eager_cache = cache.clone();
        let mut eager = vec![first];
        for _ in 0..6 {
            let next = greedy_after(&model, &[*eager.last().unwrap()], &mut eager_cache);
            eager.push(next);
        }
        for steps in [2, 6] {
            let mut decoder = ReplayedDecoder::new(&model, cache.clone(), first, steps).unwrap();
            let replayed: Vec<u32> = (0..steps).map(|_| decoder.next_token().unwrap()).collect();
            assert_eq!(replayed, eager[1..=steps], "{steps} steps");
        }
    }

    /// A token past the cache's room is an error, not a write out of bounds.
    #[test]
    fn a_token_past_the_room_asked_for_is_refused() {
        let (model, cache, first) = prefilled(&[1, 2, 3]);
        let mut decoder = ReplayedDecoder::new(&model, cache, first, 5).unwrap();
        for _ in 0..5 {
            decoder.next_token().unwrap();
        }
        let err = decoder.next_token().unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
    }

    /// A decode that would run past the rotary tables is refused, naming the limit.
    #[test]
    fn a_decode_past_the_positions_is_refused() {
        let (model, cache, first) = prefilled(&[1, 2, 3]);
        let limit = model.model.rotary.max_positions();
        let err = ReplayedDecoder::new(&model, cache, first, limit)
            .err()
            .unwrap();
        assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    }
}
