//! Turning a recipe's data files into batches in a seeded, resumable order.

use andes_data::TextTokenizer;
use andes_data::dataset::{PackedWindows, TokenWindow, load_sequences};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::recipe::DataSection;

/// Token id that ends every text document.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Where the data stream stands: epoch and index into that epoch's order. Saved in every
/// checkpoint so a resumed run draws exactly the windows it would have drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Completed passes over the windows.
    pub epoch: u64,
    /// Windows already drawn in this epoch.
    pub index: usize,
}

/// A batch on the device: inputs and targets `[batch, seq_len]`, mask of counted targets.
pub struct Batch {
    /// Input ids.
    pub inputs: Tensor<2, Int>,
    /// Target ids (inputs shifted by one).
    pub targets: Tensor<2, Int>,
    /// `true` where the target is counted in the loss.
    pub mask: Tensor<2, Bool>,
    /// Number of counted targets.
    pub target_tokens: usize,
}

/// The windows of one file.
pub struct WindowSet {
    /// Packed windows in file order.
    pub packed: PackedWindows,
}

impl WindowSet {
    /// Reads, tokenizes and packs `path` per `section`.
    pub fn load(
        path: &std::path::Path,
        section: &DataSection,
        tokenizer: &TextTokenizer,
    ) -> Result<(Self, usize), TrainError> {
        let end_of_text = tokenizer.token_id(END_OF_TEXT).ok_or_else(|| {
            TrainError::io(path, format!("the tokenizer has no {END_OF_TEXT} token"))
        })?;
        let (sequences, skipped) = load_sequences(
            path,
            section.format,
            tokenizer,
            end_of_text,
            section.skip_bad_records,
        )?;
        let packed = PackedWindows::pack(&sequences, section.seq_len);
        if packed.windows.is_empty() {
            return Err(TrainError::io(
                path,
                format!(
                    "too little data: not one window of {} tokens",
                    section.seq_len + 1
                ),
            ));
        }
        Ok((Self { packed }, skipped))
    }
}

/// The next `count` indices into `len` examples from `position`: each epoch visits every
/// example once in a permutation seeded by `(seed, epoch)`, crossing into the next epoch
/// when needed. The position alone restores the stream on resume.
pub fn draw_indices(
    len: usize,
    seed: u64,
    position: &mut DataPosition,
    count: usize,
) -> Vec<usize> {
    let order = |epoch: u64| {
        let mut order: Vec<usize> = (0..len).collect();
        let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        order
    };
    let mut drawn = Vec::with_capacity(count);
    let mut current = order(position.epoch);
    while drawn.len() < count {
        if position.index == current.len() {
            position.epoch += 1;
            position.index = 0;
            current = order(position.epoch);
        }
        drawn.push(current[position.index]);
        position.index += 1;
    }
    drawn
}

/// Stacks windows into a device batch.
pub fn to_batch(windows: &[&TokenWindow], device: &Device) -> Batch {
    let rows = windows.len();
    let seq = windows[0].ids.len() - 1;
    let mut inputs = Vec::with_capacity(rows * seq);
    let mut targets = Vec::with_capacity(rows * seq);
    let mut mask = Vec::with_capacity(rows * seq);
    for window in windows {
        inputs.extend(window.ids[..seq].iter().map(|&id| id as i64));
        targets.extend(window.ids[1..].iter().map(|&id| id as i64));
        mask.extend_from_slice(&window.loss_mask[1..]);
    }
    let target_tokens = mask.iter().filter(|&&m| m).count();
    Batch {
        inputs: Tensor::from_data(TensorData::new(inputs, [rows, seq]), device),
        targets: Tensor::from_data(TensorData::new(targets, [rows, seq]), device),
        mask: Tensor::from_data(TensorData::new(mask, [rows, seq]), device),
        target_tokens,
    }
}
