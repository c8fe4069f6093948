//! Token windows on the device: the batches training and evaluation run, and the input
//! batches calibration runs.

use andes_data::dataset::{TokenWindow, WindowSet};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::error::ModelError;
use crate::qwen3::Qwen3ForCausalLM;

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
    /// Each input token's record (row after row), when records are packed apart; empty for
    /// stream windows.
    pub segments: Vec<u32>,
}

impl Batch {
    /// Final hidden states of the inputs: each record on its own when the windows were packed
    /// apart ([`Qwen3ForCausalLM::forward_packed`]), one sequence a row otherwise.
    pub fn hidden(&self, model: &Qwen3ForCausalLM) -> Result<Tensor<3>, ModelError> {
        match self.segments.is_empty() {
            true => model.forward_hidden(self.inputs.clone(), &mut model.new_cache()),
            false => model.forward_packed(self.inputs.clone(), &self.segments),
        }
    }
}

/// Windows stacked on the host, `[rows, seq_len]` each, ready to upload as a [`Batch`] or to
/// write into the fixed buffers of a replayed training step.
pub struct HostBatch {
    /// Input ids.
    pub inputs: TensorData,
    /// Target ids (inputs shifted by one).
    pub targets: TensorData,
    /// `true` where the target is counted in the loss.
    pub mask: TensorData,
    /// Number of counted targets.
    pub target_tokens: usize,
    /// Each input token's record (row after row), when records are packed apart; empty for
    /// stream windows.
    pub segments: Vec<u32>,
}

impl HostBatch {
    /// Stacks windows (all of one length).
    pub fn stack(windows: &[&TokenWindow]) -> Self {
        Self::stack_columns(windows, windows[0].ids.len() - 1)
    }

    /// Stacks the windows' columns up to the batch's last counted target, as padding to the
    /// longest record does: a position sees only those before it, so the columns after the
    /// last counted target change no counted target's loss. A batch of padded records
    /// ([`andes_data::dataset::Packing::Padded`]) then costs its longest record, not the
    /// window.
    pub fn stack_to_last_target(windows: &[&TokenWindow]) -> Self {
        let seq = windows[0].ids.len() - 1;
        let last_target = (0..seq)
            .rev()
            .find(|&t| windows.iter().any(|w| w.loss_mask[t + 1]));
        Self::stack_columns(windows, last_target.map_or(1, |t| t + 1))
    }

    /// The first `seq` input positions of each window, with their targets.
    fn stack_columns(windows: &[&TokenWindow], seq: usize) -> Self {
        let rows = windows.len();
        let mut inputs = Vec::with_capacity(rows * seq);
        let mut targets = Vec::with_capacity(rows * seq);
        let mut mask = Vec::with_capacity(rows * seq);
        let mut segments = Vec::new();
        for window in windows {
            segments.extend(window.segments.iter().take(seq));
            inputs.extend(window.ids[..seq].iter().map(|&id| id as i64));
            targets.extend(window.ids[1..=seq].iter().map(|&id| id as i64));
            mask.extend_from_slice(&window.loss_mask[1..=seq]);
        }
        let target_tokens = mask.iter().filter(|&&m| m).count();
        Self {
            inputs: TensorData::new(inputs, [rows, seq]),
            targets: TensorData::new(targets, [rows, seq]),
            mask: TensorData::new(mask, [rows, seq]),
            target_tokens,
            segments,
        }
    }

    /// The batch on `device`.
    pub fn upload(self, device: &Device) -> Batch {
        Batch {
            inputs: Tensor::from_data(self.inputs, device),
            targets: Tensor::from_data(self.targets, device),
            mask: Tensor::from_data(self.mask, device),
            target_tokens: self.target_tokens,
            segments: self.segments,
        }
    }
}

/// Stacks windows (all of one length) into a device batch, cut after its last counted target
/// ([`HostBatch::stack_to_last_target`]).
pub fn to_batch(windows: &[&TokenWindow], device: &Device) -> Batch {
    HostBatch::stack_to_last_target(windows).upload(device)
}

/// The input ids `[rows, seq_len]` of the first `windows` windows of `set`, `batch_size` rows
/// a tensor: a calibration set, the same windows every time it is read.
pub fn calibration_batches(
    set: &WindowSet,
    windows: usize,
    batch_size: usize,
    device: &Device,
) -> Vec<Tensor<2, Int>> {
    set.first(windows)
        .chunks(batch_size)
        .map(|chunk| HostBatch::stack(chunk).upload(device).inputs)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch is cut after the last position any row counts (here the second row's fourth
    /// target), its inputs and targets cut alike; with no counted target at all, one column.
    #[test]
    fn a_batch_is_cut_after_its_last_counted_target() {
        let window = |targets: usize| TokenWindow {
            ids: (10..19).collect(),
            loss_mask: (0..9).map(|i| (1..=targets).contains(&i)).collect(),
            segments: Vec::new(),
        };
        let (short, long) = (window(2), window(4));
        let batch = HostBatch::stack_to_last_target(&[&short, &long]);
        assert_eq!(batch.inputs.shape().to_vec(), [2, 4]);
        assert_eq!(
            batch.targets.try_to_vec::<i64>().unwrap(),
            [11, 12, 13, 14, 11, 12, 13, 14]
        );
        assert_eq!(batch.target_tokens, 6);
        assert_eq!(
            HostBatch::stack(&[&short, &long]).inputs.shape().to_vec(),
            [2, 8]
        );
        let none = window(0);
        assert_eq!(
            HostBatch::stack_to_last_target(&[&none])
                .inputs
                .shape()
                .to_vec(),
            [1, 1]
        );
    }
}
