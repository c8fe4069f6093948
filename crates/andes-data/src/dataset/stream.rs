//! A training file read as a stream with bounded memory: records pass through a seeded shuffle
//! buffer of N records (as Hugging Face's `IterableDataset.shuffle(buffer_size)` and
//! `tf.data` shuffle them), are tokenized when drawn, and are cut into windows as the stream
//! packing of [`PackedWindows::pack`](super::PackedWindows::pack) cuts them. Only the buffer's
//! records and one window's worth of tokens are held, whatever the file's size.
//!
//! Where the stream stands ([`StreamPosition`]) is saved in checkpoints: which records the
//! buffer holds, how many were read and drawn, and the tokens not yet in a window. A resumed
//! run reopens the file, scans to where it was (picking up the buffer's records on the way)
//! and draws exactly what the uninterrupted run would have.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reader::{RawRecord, RecordReader};
use super::records::{RecordError, parse_record};
use super::{MaskedTokens, TokenWindow, Windowing, end_of_text};
use crate::TextTokenizer;

/// Where a streamed source stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Completed passes over the file.
    pub epoch: u64,
    /// Records read from the file in this epoch (into the buffer).
    pub read: u64,
    /// Records drawn from the buffer in this epoch.
    pub drawn: u64,
    /// The numbers (in file order, from 0) of the records waiting in the buffer.
    pub buffer: Vec<u64>,
    /// Tokens drawn but not yet in a window: the next window starts with them.
    pub carry: MaskedTokens,
}

/// The file as it is open: the reader's place and the buffered records' text.
struct OpenFile {
    reader: RecordReader,
    epoch: u64,
    read: u64,
    records: HashMap<u64, RawRecord>,
}

/// Windows drawn from one file through a shuffle buffer.
pub struct StreamedWindows {
    path: PathBuf,
    windowing: Windowing,
    buffer_size: usize,
    seed: u64,
    tokenizer: TextTokenizer,
    end_of_text: u32,
    open: Option<OpenFile>,
}

impl StreamedWindows {
    /// A stream over `path` (text or chat records, per `windowing`) with a buffer of
    /// `buffer_size` records, shuffled by `seed`. Nothing is read yet.
    pub fn new(
        path: &Path,
        windowing: Windowing,
        buffer_size: usize,
        seed: u64,
        tokenizer: &TextTokenizer,
    ) -> Result<Self, RecordError> {
        Ok(Self {
            path: path.to_owned(),
            windowing,
            buffer_size: buffer_size.max(1),
            seed,
            tokenizer: tokenizer.clone(),
            end_of_text: end_of_text(path, tokenizer)?,
            open: None,
        })
    }

    /// The next window of `seq_len + 1` tokens from `position` on (advancing it); windows
    /// overlap by one token, as stream packing's do. Bad records are skipped or stop the read
    /// per the windowing.
    pub fn next_window(
        &mut self,
        position: &mut StreamPosition,
    ) -> Result<TokenWindow, RecordError> {
        let width = self.windowing.seq_len + 1;
        while position.carry.ids.len() < width {
            let record = self.draw_record(position)?;
            let parsed = parse_record(
                &record.text,
                self.windowing.format,
                &self.path,
                &self.tokenizer,
                self.end_of_text,
            )?;
            match parsed {
                Ok(tokens) => {
                    position.carry.push_masked(&tokens);
                }
                Err(_) if self.windowing.skip_bad_records => {}
                Err(message) => {
                    return Err(RecordError::BadRecord {
                        path: self.path.clone(),
                        line: record.line,
                        message,
                    });
                }
            }
        }
        let window = TokenWindow {
            ids: position.carry.ids[..width].to_vec(),
            loss_mask: position.carry.loss_mask[..width].to_vec(),
            segments: Vec::new(),
        };
        position.carry.ids.drain(..width - 1);
        position.carry.loss_mask.drain(..width - 1);
        Ok(window)
    }

    /// The next record out of the shuffle buffer, refilled from the file (a new epoch when
    /// the file and the buffer are both spent).
    fn draw_record(&mut self, position: &mut StreamPosition) -> Result<RawRecord, RecordError> {
        self.sync(position)?;
        self.fill(position)?;
        if position.buffer.is_empty() {
            if position.read == 0 {
                return Err(RecordError::TooLittleData {
                    path: self.path.clone(),
                    window: self.windowing.seq_len + 1,
                });
            }
            position.epoch += 1;
            position.read = 0;
            position.drawn = 0;
            self.open = None;
            self.sync(position)?;
            self.fill(position)?;
        }
        let pick = splitmix(
            self.seed
                ^ position.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ position.drawn.wrapping_mul(0xBF58_476D_1CE4_E5B9),
        );
        let index = (pick % position.buffer.len() as u64) as usize;
        let number = position.buffer.swap_remove(index);
        position.drawn += 1;
        let open = self.open.as_mut().expect("synced");
        Ok(open
            .records
            .remove(&number)
            .expect("a buffered record is held"))
    }

    /// Reads records into the buffer until it holds `buffer_size` or the file ends.
    fn fill(&mut self, position: &mut StreamPosition) -> Result<(), RecordError> {
        let open = self.open.as_mut().expect("synced");
        while position.buffer.len() < self.buffer_size {
            let Some(record) = open.reader.next() else {
                break;
            };
            let number = open.read;
            open.records.insert(number, record?);
            open.read += 1;
            position.buffer.push(number);
            position.read = open.read;
        }
        Ok(())
    }

    /// Makes the open file stand where `position` says (after a resume, or the first time):
    /// reopened and scanned to `position.read`, keeping the records the buffer names.
    fn sync(&mut self, position: &StreamPosition) -> Result<(), RecordError> {
        if let Some(open) = &self.open
            && open.epoch == position.epoch
            && open.read == position.read
            && position.buffer.iter().all(|n| open.records.contains_key(n))
        {
            return Ok(());
        }
        let mut reader = RecordReader::open(&self.path, self.windowing.format.columns())?;
        let mut records = HashMap::with_capacity(position.buffer.len());
        for number in 0..position.read {
            let record = reader.next().ok_or_else(|| RecordError::BadRecord {
                path: self.path.clone(),
                line: 0,
                message: format!(
                    "the file has fewer than the {} records the checkpoint read: it changed \
                     since the run began",
                    position.read
                ),
            })??;
            if position.buffer.contains(&number) {
                records.insert(number, record);
            }
        }
        self.open = Some(OpenFile {
            reader,
            epoch: position.epoch,
            read: position.read,
            records,
        });
        Ok(())
    }
}

/// SplitMix64's output function: a well-mixed 64-bit value of `x`.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DataFormat, Packing};

    fn tokenizer() -> TextTokenizer {
        TextTokenizer::from_model_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer"),
        )
        .unwrap()
    }

    fn stream(path: &Path, buffer: usize) -> StreamedWindows {
        let windowing = Windowing {
            format: DataFormat::Text,
            seq_len: 16,
            skip_bad_records: false,
            packing: Packing::Stream,
        };
        StreamedWindows::new(path, windowing, buffer, 3, &tokenizer()).unwrap()
    }

    fn corpus(dir: &Path, lines: usize) -> PathBuf {
        let path = dir.join("corpus.txt");
        let text: String = (0..lines)
            .map(|i| format!("Record {i} says {} things.\n", i * 7 % 13))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_resumed_stream_draws_what_an_uninterrupted_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = corpus(dir.path(), 40);
        let mut whole = StreamPosition::default();
        let mut uninterrupted = stream(&path, 8);
        let expected: Vec<TokenWindow> = (0..60)
            .map(|_| uninterrupted.next_window(&mut whole).unwrap())
            .collect();
        assert!(whole.epoch >= 1, "the stream went round the file");

        let mut position = StreamPosition::default();
        let mut first = stream(&path, 8);
        let mut got: Vec<TokenWindow> = (0..23)
            .map(|_| first.next_window(&mut position).unwrap())
            .collect();
        let saved: StreamPosition =
            serde_json::from_str(&serde_json::to_string(&position).unwrap()).unwrap();
        let mut resumed = stream(&path, 8);
        let mut restored = saved;
        got.extend((23..60).map(|_| resumed.next_window(&mut restored).unwrap()));
        assert_eq!(got, expected);
        assert_eq!(restored, whole);
    }

    #[test]
    fn the_buffer_holds_at_most_n_records_and_every_record_comes_once_an_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = corpus(dir.path(), 30);
        let mut windows = stream(&path, 5);
        let mut position = StreamPosition::default();
        let mut order = Vec::new();
        while position.epoch == 0 {
            let record = windows.draw_record(&mut position).unwrap();
            assert!(windows.open.as_ref().unwrap().records.len() <= 5);
            assert!(position.buffer.len() <= 5);
            order.push(record.line);
        }
        order.pop(); // the first record of the next epoch
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=30).collect::<Vec<_>>());
        assert_ne!(order, sorted, "shuffled");
    }
}
