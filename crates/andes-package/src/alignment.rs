//! Safetensors files whose every tensor starts at a multiple of the target's alignment (64
//! bytes on the Dimensity 9500 profile), so a phone runtime can map the file and hand each
//! tensor to the NPU in place. The format itself only aligns the data section to 8 bytes and
//! forbids holes between tensors; so the header is padded with spaces (which the format
//! allows) to end on an aligned offset, and each gap before a tensor is filled by a zero
//! tensor named `__pad__.N`, U8, which readers skip (`docs/package-format.md`).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde_json::{Value, json};

use crate::error::PackageError;

/// Name prefix of the filler tensors.
const PAD_PREFIX: &str = "__pad__.";

/// Whether `name` is a filler tensor, not model data.
pub fn is_padding(name: &str) -> bool {
    name.starts_with(PAD_PREFIX)
}

/// `file` (safetensors bytes) rewritten so the data section and every tensor start at a
/// multiple of `alignment` (a power of two; at least the format's 8), tensors in their order
/// in the file, the header's other entries (`__metadata__`) kept, earlier fillers replaced. The header's keys are
/// written sorted, so the same tensors always give the same bytes.
pub fn align(file: &[u8], alignment: usize, path: &Path) -> Result<Vec<u8>, PackageError> {
    let alignment = alignment.max(8);
    let (data_start, header) = parse_header(file, path)?;
    let data = &file[data_start..];
    let mut entries: BTreeMap<String, Value> = BTreeMap::new();
    let mut tensors: Vec<(String, Value, usize, usize)> = Vec::new();
    for (name, entry) in header {
        if is_padding(&name) {
            continue;
        }
        match offsets(&entry) {
            Some((begin, end)) if name != "__metadata__" => tensors.push((name, entry, begin, end)),
            _ => {
                entries.insert(name, entry);
            }
        }
    }
    tensors.sort_by_key(|(_, _, begin, _)| *begin);
    let mut out_data = Vec::with_capacity(data.len() + tensors.len() * alignment);
    for (index, (name, mut entry, begin, end)) in tensors.into_iter().enumerate() {
        let gap = out_data.len().next_multiple_of(alignment) - out_data.len();
        if gap > 0 {
            let start = out_data.len();
            entries.insert(
                format!("{PAD_PREFIX}{index}"),
                json!({"dtype": "U8", "shape": [gap], "data_offsets": [start, start + gap]}),
            );
            out_data.resize(start + gap, 0);
        }
        let start = out_data.len();
        entry["data_offsets"] = json!([start, start + end - begin]);
        out_data.extend_from_slice(&data[begin..end]);
        entries.insert(name, entry);
    }
    let mut text = serde_json::to_string(&entries).expect("the header serializes");
    let padded = (8 + text.len()).next_multiple_of(alignment) - 8;
    text.push_str(&" ".repeat(padded - text.len()));
    let mut out = Vec::with_capacity(8 + text.len() + out_data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&out_data);
    Ok(out)
}

/// Fails, naming the file and tensor, unless every tensor of `file` but the fillers starts at
/// a multiple of `alignment` bytes from the start of the file.
pub fn check_alignment(file: &[u8], alignment: usize, path: &Path) -> Result<(), PackageError> {
    let (data_start, header) = parse_header(file, path)?;
    for (name, entry) in &header {
        if let Some((begin, _)) = offsets(entry)
            && !is_padding(name)
            && (data_start + begin) % alignment != 0
        {
            return Err(PackageError::Corrupt {
                path: path.to_owned(),
                message: format!(
                    "tensor `{name}` starts at byte {}, not a multiple of the target's \
                     {alignment}-byte alignment",
                    data_start + begin
                ),
            });
        }
    }
    Ok(())
}

/// The offset of the data section and the header's entries, once the safetensors crate has
/// accepted the file.
fn parse_header(
    file: &[u8],
    path: &Path,
) -> Result<(usize, BTreeMap<String, Value>), PackageError> {
    let corrupt = |message: String| PackageError::Corrupt {
        path: path.to_owned(),
        message,
    };
    let (header_len, _) = SafeTensors::read_metadata(file)
        .map_err(|e| corrupt(format!("not a safetensors file: {e:?}")))?;
    let header = serde_json::from_slice(&file[8..8 + header_len])
        .map_err(|e| corrupt(format!("unreadable header: {e}")))?;
    Ok((8 + header_len, header))
}

/// A tensor entry's `data_offsets`.
fn offsets(entry: &Value) -> Option<(usize, usize)> {
    let offsets = entry.get("data_offsets")?.as_array()?;
    Some((
        offsets.first()?.as_u64()? as usize,
        offsets.get(1)?.as_u64()? as usize,
    ))
}

#[cfg(test)]
mod tests {
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;

    use super::*;

    #[test]
    fn every_tensor_starts_aligned_and_reads_back_unchanged() {
        let odd: Vec<u8> = (0..13).collect();
        let halves: Vec<u8> = (0..10).map(|i| i * 3).collect();
        let views = vec![
            ("b.odd", TensorView::new(Dtype::U8, vec![13], &odd).unwrap()),
            (
                "a.half",
                TensorView::new(Dtype::F16, vec![5], &halves).unwrap(),
            ),
            (
                "c.more",
                TensorView::new(Dtype::U8, vec![1, 13], &odd).unwrap(),
            ),
        ];
        let metadata = Some(std::collections::HashMap::from([(
            "x.format".to_string(),
            "int4".to_string(),
        )]));
        let plain = safetensors::serialize(views, metadata).unwrap();
        let path = Path::new("t.safetensors");
        assert!(check_alignment(&plain, 64, path).is_err(), "8-aligned only");
        let aligned = align(&plain, 64, path).unwrap();
        check_alignment(&aligned, 64, path).unwrap();
        let read = SafeTensors::deserialize(&aligned).unwrap();
        let (_, metadata) = SafeTensors::read_metadata(&aligned).unwrap();
        assert_eq!(metadata.metadata().as_ref().unwrap()["x.format"], "int4");
        let mut names: Vec<&str> = read
            .names()
            .into_iter()
            .filter(|n| !is_padding(n))
            .collect();
        names.sort();
        assert_eq!(names, ["a.half", "b.odd", "c.more"]);
        assert_eq!(read.tensor("b.odd").unwrap().data(), &odd[..]);
        assert_eq!(read.tensor("c.more").unwrap().shape(), [1, 13]);
        assert_eq!(read.tensor("a.half").unwrap().data(), &halves[..]);
        assert_eq!(
            align(&aligned, 64, path).unwrap(),
            aligned,
            "already aligned"
        );
    }
}
