//! Parquet data files written by pyarrow (as Hugging Face datasets ship them; made by
//! scripts/fixtures/make_parquet_fixture.py) read as the same records as the JSONL beside them,
//! whole or streamed, and a file without the format's column is refused naming it.

use std::path::{Path, PathBuf};

use andes_data::TextTokenizer;
use andes_data::dataset::{
    DataFormat, Packing, StreamPosition, StreamedWindows, Windowing, end_of_text, load_sequences,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_model_dir(&fixture("tokenizer")).unwrap()
}

#[test]
fn parquet_rows_are_the_records_of_the_jsonl_beside_them() {
    let tokenizer = tokenizer();
    for (stem, format) in [("text", DataFormat::Text), ("chat", DataFormat::Chat)] {
        let read = |extension: &str| {
            let path = fixture(&format!("parquet/{stem}.{extension}"));
            let eot = end_of_text(&path, &tokenizer).unwrap();
            load_sequences(&path, format, &tokenizer, eot, false)
                .unwrap()
                .0
        };
        let (parquet, jsonl) = (read("parquet"), read("jsonl"));
        assert_eq!(parquet.len(), 40, "{stem}");
        assert_eq!(parquet, jsonl, "{stem}");
    }
}

#[test]
fn a_streamed_parquet_file_gives_the_windows_of_its_jsonl() {
    let tokenizer = tokenizer();
    let windowing = Windowing {
        format: DataFormat::Chat,
        seq_len: 32,
        skip_bad_records: false,
        packing: Packing::Stream,
    };
    let windows = |extension: &str| {
        let path = fixture(&format!("parquet/chat.{extension}"));
        let mut stream = StreamedWindows::new(&path, windowing, 7, 1, &tokenizer).unwrap();
        let mut position = StreamPosition::default();
        (0..50)
            .map(|_| stream.next_window(&mut position).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(windows("parquet"), windows("jsonl"));
}

#[test]
fn a_parquet_file_without_the_formats_column_names_it() {
    let tokenizer = tokenizer();
    let path = fixture("parquet/chat.parquet");
    let eot = end_of_text(&path, &tokenizer).unwrap();
    let error = load_sequences(&path, DataFormat::Text, &tokenizer, eot, false)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("chat.parquet")
            && error.contains("no column `text`")
            && error.contains("messages"),
        "{error}"
    );
}
