//! Image-caption pairs for vision-language pretraining: JSONL `{"image", "caption"}`, the
//! image path relative to the JSONL file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::records::{DataFormat, RecordError, read_records};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionLine {
    image: String,
    caption: String,
}

/// One image and the text that describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRecord {
    /// The image file, resolved against the JSONL file's folder.
    pub image: PathBuf,
    /// Its caption.
    pub caption: String,
}

/// Reads the caption records of `path`; a record whose image file does not exist or whose
/// caption is empty is a bad record. Images are decoded later, batch by batch.
pub fn load_captions(
    path: &Path,
    skip_bad_records: bool,
) -> Result<(Vec<CaptionRecord>, usize), RecordError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    read_records(
        path,
        DataFormat::ImageCaption.columns(),
        skip_bad_records,
        |line| {
            let record: CaptionLine = match serde_json::from_str(line) {
                Ok(record) => record,
                Err(e) => {
                    return Ok(Err(format!(
                        "expected {{\"image\": path, \"caption\": string}}: {e}"
                    )));
                }
            };
            let image = match resolve_image(folder, &record.image) {
                Ok(image) => image,
                Err(message) => return Ok(Err(message)),
            };
            if record.caption.trim().is_empty() {
                return Ok(Err("the caption is empty".into()));
            }
            Ok(Ok(CaptionRecord {
                image,
                caption: record.caption,
            }))
        },
    )
}

/// `image` resolved against `folder`, or a message when no such file exists.
pub(super) fn resolve_image(folder: &Path, image: &str) -> Result<PathBuf, String> {
    let path = folder.join(image);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("image {} not found", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_file_and_missing_images_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"not checked here").unwrap();
        let file = dir.path().join("captions.jsonl");
        std::fs::write(
            &file,
            "{\"image\": \"a.png\", \"caption\": \"A cat.\"}\n{\"image\": \"b.png\", \"caption\": \"A dog.\"}\n",
        )
        .unwrap();
        let err = load_captions(&file, false).unwrap_err().to_string();
        assert!(
            err.contains(":2:") && err.contains("b.png not found"),
            "{err}"
        );
        let (records, skipped) = load_captions(&file, true).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(records[0].image, dir.path().join("a.png"));
    }
}
