//! Records read one at a time from a data file, whatever its layout: a text file or JSONL (a
//! record a non-empty line), or a Parquet file (a record a row, the format Hugging Face
//! datasets ship in), each row given as the JSON object of the columns the format reads.
//! Nothing is read whole, so a file larger than memory streams through.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;

use super::records::RecordError;

/// One record: where it is (a 1-based line, or a 1-based row for Parquet) and its text (the
/// line, or a row's JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// 1-based line or row.
    pub line: usize,
    /// The record as a line of text or JSON.
    pub text: String,
}

/// The records of one data file, in file order.
pub enum RecordReader {
    /// A text file or JSONL: a record a non-empty line.
    Lines {
        /// The file.
        path: PathBuf,
        /// Its lines.
        lines: std::io::Lines<BufReader<File>>,
        /// Lines read so far.
        line: usize,
    },
    /// A Parquet file: a record a row.
    Parquet {
        /// The file.
        path: PathBuf,
        /// Its rows.
        rows: RowIter<'static>,
        /// Rows read so far.
        row: usize,
        /// The columns kept (those of `columns` the file has).
        columns: Vec<String>,
    },
}

/// Whether `path` is read as Parquet (by its extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
}

impl RecordReader {
    /// Opens `path`. A Parquet file's rows become JSON objects of those of `columns` it has
    /// (the keys a record of its format takes); it must have the first of them.
    pub fn open(path: &Path, columns: &[&str]) -> Result<Self, RecordError> {
        let io = |source| RecordError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        if !is_parquet(path) {
            return Ok(Self::Lines {
                path: path.to_owned(),
                lines: BufReader::new(file).lines(),
                line: 0,
            });
        }
        let bad = |message: String| RecordError::BadRecord {
            path: path.to_owned(),
            line: 0,
            message,
        };
        let reader = SerializedFileReader::new(file)
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
        let schema = reader.metadata().file_metadata().schema_descr();
        let present: Vec<String> = schema
            .root_schema()
            .get_fields()
            .iter()
            .map(|field| field.name().to_string())
            .collect();
        if let Some(first) = columns.first()
            && !present.iter().any(|name| name == first)
        {
            return Err(bad(format!(
                "no column `{first}`; the file has {present:?} (this data format reads \
                 {columns:?})"
            )));
        }
        let kept = present
            .into_iter()
            .filter(|name| columns.contains(&name.as_str()))
            .collect();
        let rows = RowIter::from_file_into(Box::new(reader) as Box<dyn FileReader>);
        Ok(Self::Parquet {
            path: path.to_owned(),
            rows,
            row: 0,
            columns: kept,
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        match self {
            Self::Lines { path, .. } | Self::Parquet { path, .. } => path,
        }
    }
}

impl Iterator for RecordReader {
    type Item = Result<RawRecord, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Lines { path, lines, line } => loop {
                let text = match lines.next()? {
                    Ok(text) => text,
                    Err(source) => {
                        return Some(Err(RecordError::Io {
                            path: path.clone(),
                            source,
                        }));
                    }
                };
                *line += 1;
                if !text.trim().is_empty() {
                    return Some(Ok(RawRecord { line: *line, text }));
                }
            },
            Self::Parquet {
                path,
                rows,
                row,
                columns,
            } => {
                let next = rows.next()?;
                *row += 1;
                Some(match next {
                    Ok(values) => {
                        let mut object = serde_json::Map::new();
                        for (name, field) in values.get_column_iter() {
                            if columns.contains(name)
                                && !matches!(field, parquet::record::Field::Null)
                            {
                                object.insert(name.clone(), field.to_json_value());
                            }
                        }
                        Ok(RawRecord {
                            line: *row,
                            text: serde_json::Value::Object(object).to_string(),
                        })
                    }
                    Err(e) => Err(RecordError::BadRecord {
                        path: path.clone(),
                        line: *row,
                        message: format!("unreadable row: {e}"),
                    }),
                })
            }
        }
    }
}
