//! A data file as the windows training, evaluation and calibration read, and the seeded,
//! resumable order in which training draws them.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{DataFormat, PackedWindows, Packing, RecordError, load_sequences};
use crate::TextTokenizer;

/// Token that ends every document in the packed stream.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// How a file becomes windows: its record layout, the window length, and whether malformed
/// records are counted and skipped instead of stopping the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    /// Record layout (a packed format: text or chat).
    pub format: DataFormat,
    /// Tokens per window (each window holds `seq_len + 1` ids: inputs and shifted targets).
    pub seq_len: usize,
    /// Count and skip malformed records instead of stopping at the first.
    pub skip_bad_records: bool,
    /// A stream cut into windows, or whole records apart.
    pub packing: Packing,
}

impl Windowing {
    /// Plain text, one document a line, every record required to parse: what evaluation and
    /// calibration read.
    pub fn text(seq_len: usize) -> Self {
        Self {
            format: DataFormat::Text,
            seq_len,
            skip_bad_records: false,
            packing: Packing::Stream,
        }
    }
}

/// The windows of one file.
pub struct WindowSet {
    /// Packed windows in file order.
    pub packed: PackedWindows,
}

impl WindowSet {
    /// Reads, tokenizes and packs `path` per `windowing`; also returns how many bad records
    /// were skipped.
    pub fn load(
        path: &Path,
        windowing: &Windowing,
        tokenizer: &TextTokenizer,
    ) -> Result<(Self, usize), RecordError> {
        let end_of_text = end_of_text(path, tokenizer)?;
        let (sequences, skipped) = load_sequences(
            path,
            windowing.format,
            tokenizer,
            end_of_text,
            windowing.skip_bad_records,
        )?;
        let packed = match windowing.packing {
            Packing::Stream => PackedWindows::pack(&sequences, windowing.seq_len),
            Packing::PaddingFree => PackedWindows::pack_apart(&sequences, windowing.seq_len),
            Packing::Padded => PackedWindows::pack_padded(&sequences, windowing.seq_len),
        };
        if packed.windows.is_empty() {
            return Err(RecordError::TooLittleData {
                path: path.to_owned(),
                window: windowing.seq_len + 1,
            });
        }
        Ok((Self { packed }, skipped))
    }

    /// The first `count` windows, in file order (calibration sets).
    pub fn first(&self, count: usize) -> Vec<&super::TokenWindow> {
        self.packed.windows.iter().take(count).collect()
    }
}

/// The id of [`END_OF_TEXT`] in `tokenizer`; a tokenizer without it cannot read `path`.
pub fn end_of_text(path: &Path, tokenizer: &TextTokenizer) -> Result<u32, RecordError> {
    tokenizer
        .token_id(END_OF_TEXT)
        .ok_or_else(|| RecordError::MissingToken {
            path: path.to_owned(),
            token: END_OF_TEXT.into(),
        })
}

/// The tokens of `path`'s lines, each line a document ended by [`END_OF_TEXT`], in file
/// order: the stream training packs from a `text` data file, unwindowed (for sliding-window
/// perplexity).
pub fn document_stream(path: &Path, tokenizer: &TextTokenizer) -> Result<Vec<u32>, RecordError> {
    let end_of_text = end_of_text(path, tokenizer)?;
    let (documents, _) = load_sequences(path, DataFormat::Text, tokenizer, end_of_text, false)?;
    Ok(documents.into_iter().flat_map(|d| d.ids).collect())
}

/// Where the data stream stands: epoch and index into that epoch's order. Saved in every
/// checkpoint so a resumed run draws exactly the windows it would have drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Completed passes over the windows.
    pub epoch: u64,
    /// Windows already drawn in this epoch.
    pub index: usize,
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

/// Where a mixture of sources stands: how many examples it has drawn (which seeds the choice
/// of source for the next one) and each source's own position. Saved in every checkpoint so a
/// resumed run draws exactly the examples it would have drawn.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MixturePosition {
    /// Examples drawn so far, from all sources.
    pub drawn: u64,
    /// Each loaded source's epoch and index, in the recipe's order.
    pub sources: Vec<DataPosition>,
    /// Each streamed source's place in its file, in the recipe's order (default for the
    /// loaded ones); empty when no source streams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<super::StreamPosition>,
}

/// The next `count` examples of a mixture as `(source, index)` pairs: each example's source
/// drawn by `weights` (relative, positive) from a generator seeded by `(seed, drawn)`, then
/// the next index of that source's own seeded stream ([`draw_indices`] over its `lens`
/// examples; none for a streamed source, `lens` none, whose next window its stream gives).
/// A single source draws exactly what [`draw_indices`] draws with `seed`, so a one-file
/// recipe reads its data as it always has.
pub fn draw_mixture(
    lens: &[Option<usize>],
    weights: &[f64],
    seed: u64,
    position: &mut MixturePosition,
    count: usize,
) -> Vec<(usize, Option<usize>)> {
    position.sources.resize(lens.len(), DataPosition::default());
    let total: f64 = weights.iter().sum();
    let sources: Vec<usize> = (0..count as u64)
        .map(|k| {
            if lens.len() == 1 {
                return 0;
            }
            let draw = position.drawn + k;
            let mut rng = StdRng::seed_from_u64(seed ^ draw.wrapping_mul(0xD1B5_4A32_D192_ED03));
            let mut point = rand::Rng::random::<f64>(&mut rng) * total;
            weights
                .iter()
                .position(|&w| {
                    point -= w;
                    point < 0.0
                })
                .unwrap_or(weights.len() - 1)
        })
        .collect();
    position.drawn += count as u64;
    let mut indices: Vec<std::vec::IntoIter<usize>> = (0..lens.len())
        .map(|source| {
            let Some(len) = lens[source] else {
                return Vec::new().into_iter();
            };
            let wanted = sources.iter().filter(|&&s| s == source).count();
            let source_seed = seed.wrapping_add(source as u64);
            draw_indices(len, source_seed, &mut position.sources[source], wanted).into_iter()
        })
        .collect();
    sources
        .into_iter()
        .map(|source| (source, indices[source].next()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixture_draws_by_weight_and_resumes_exactly() {
        let (lens, weights) = ([Some(50), Some(30), None], [0.6, 0.3, 0.1]);
        let mut whole = MixturePosition::default();
        let uninterrupted = draw_mixture(&lens, &weights, 5, &mut whole, 3000);
        for (source, weight) in weights.iter().enumerate() {
            let share = uninterrupted.iter().filter(|(s, _)| *s == source).count() as f64 / 3000.0;
            assert!((share - weight).abs() < 0.03, "source {source}: {share}");
        }
        let mut position = MixturePosition::default();
        let mut resumed = draw_mixture(&lens, &weights, 5, &mut position, 1234);
        let mut restored = position.clone();
        resumed.extend(draw_mixture(&lens, &weights, 5, &mut restored, 1766));
        assert_eq!(resumed, uninterrupted);
        assert_eq!(restored, whole);
        let streamed = uninterrupted.iter().filter(|(s, _)| *s == 2);
        assert!(streamed.clone().all(|(_, index)| index.is_none()));
        assert!(streamed.count() > 0);
    }

    #[test]
    fn one_source_draws_as_a_plain_stream() {
        let mut position = MixturePosition::default();
        let mixed: Vec<usize> = draw_mixture(&[Some(7)], &[2.0], 9, &mut position, 20)
            .into_iter()
            .map(|(_, i)| i.unwrap())
            .collect();
        let mut plain = DataPosition::default();
        assert_eq!(mixed, draw_indices(7, 9, &mut plain, 20));
        assert_eq!(position.sources, vec![plain]);
    }

    #[test]
    fn each_epoch_visits_every_example_once() {
        let mut position = DataPosition::default();
        let mut first = draw_indices(10, 7, &mut position, 10);
        first.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
        assert_eq!(
            position,
            DataPosition {
                epoch: 0,
                index: 10
            }
        );
    }

    #[test]
    fn a_resumed_stream_draws_what_an_uninterrupted_one_does() {
        let mut whole = DataPosition::default();
        let uninterrupted = draw_indices(6, 3, &mut whole, 15);
        let mut position = DataPosition::default();
        let mut resumed = draw_indices(6, 3, &mut position, 4);
        let saved = position;
        let mut restored = saved;
        resumed.extend(draw_indices(6, 3, &mut restored, 11));
        assert_eq!(resumed, uninterrupted);
        assert_eq!(restored, whole);
        assert_eq!(whole.epoch, 2);
    }
}
