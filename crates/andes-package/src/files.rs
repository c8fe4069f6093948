//! Files shared by bundles and packages: the packed-linears safetensors file (written and read
//! back with every part's length checked), sha256 sums of a directory, and their verification.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use andes_model::checkpoint::write_atomically;
use andes_quant::{QuantFormat, QuantizedTensor, WeightShape};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::alignment::{align, is_padding};
use andes_model::checkpoint::sha256;

use crate::error::PackageError;

/// The manifest's file name, at a bundle's or package's root.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest of the bundle or package at `dir`, parsed as `T`; a missing file or another
/// shape is an error naming it.
pub fn read_manifest<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, PackageError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| PackageError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| PackageError::Corrupt {
        path,
        message: e.to_string(),
    })
}

/// An empty staging directory beside `out` (`.tmp-NAME`), for a directory written whole and
/// then renamed into place; refuses an existing `out`, clears a stale staging directory.
pub fn staging_dir(out: &Path) -> Result<PathBuf, PackageError> {
    if out.exists() {
        return Err(PackageError::io(out, "already exists; choose a new --out"));
    }
    let file_name = out
        .file_name()
        .ok_or_else(|| PackageError::io(out, "not a directory name"))?;
    let tmp = out.with_file_name(format!(".tmp-{}", file_name.to_string_lossy()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| PackageError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| PackageError::io(&tmp, e))?;
    Ok(tmp)
}

/// Writes the packed linears: `<name>.qweight` (u8 packed codes, `[out, bytes per row]`),
/// `<name>.scales` (f16 `[out, groups]`) and, for asymmetric formats, `<name>.qzeros` (u8
/// packed zero points `[out, bytes per row]`); layouts in `docs/quant-formats.md`. With an
/// `alignment`, every tensor starts at a multiple of it (a package, for its target). Returns
/// the file's size.
pub fn quantized_file(
    quantized: &[(String, QuantizedTensor)],
    path: &Path,
    alignment: Option<usize>,
) -> Result<u64, PackageError> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, q) in quantized {
        let rows = q.shape().out_features;
        tensors.push((
            format!("{name}.qweight"),
            Dtype::U8,
            vec![rows, q.packed().len() / rows],
            q.packed().to_vec(),
        ));
        let scales: Vec<u8> = q.scales().iter().flat_map(|s| s.to_le_bytes()).collect();
        tensors.push((
            format!("{name}.scales"),
            Dtype::F16,
            vec![rows, q.groups_per_row()],
            scales,
        ));
        if !q.zeros().is_empty() {
            tensors.push((
                format!("{name}.qzeros"),
                Dtype::U8,
                vec![rows, q.zeros().len() / rows],
                q.zeros().to_vec(),
            ));
        }
    }
    let metadata: BTreeMap<String, String> = quantized
        .iter()
        .map(|(name, q)| (format!("{name}.format"), q.format().to_string()))
        .collect();
    let bytes = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|view| (name.as_str(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|views| safetensors::serialize(views, None))
        .map_err(|e| PackageError::io(path, format!("{e:?}")))?;
    let bytes = with_metadata(&bytes, &metadata);
    let bytes = match alignment {
        Some(alignment) => align(&bytes, alignment, path)?,
        None => bytes,
    };
    write_atomically(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// `file` (safetensors bytes) with `metadata` as its header's `__metadata__`, written in
/// sorted key order: the safetensors crate writes a metadata map in hash order, which would
/// give the same package different bytes, and checksums, from run to run. The header is
/// padded with spaces to a multiple of 8 bytes, as the format asks; the data section and its
/// (relative) offsets are unchanged.
fn with_metadata(file: &[u8], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let header_len = u64::from_le_bytes(file[..8].try_into().expect("8 bytes")) as usize;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&file[8..8 + header_len]).expect("the crate wrote this header");
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).expect("strings serialize"),
    );
    let mut text = serde_json::to_string(&header).expect("the header serializes");
    text.push_str(&" ".repeat((8 - text.len() % 8) % 8));
    let mut out = Vec::with_capacity(8 + text.len() + file.len() - 8 - header_len);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&file[8 + header_len..]);
    out
}

/// sha256 of every file under `dir` but the manifest, by relative path with `/` separators.
pub fn checksums(dir: &Path) -> Result<BTreeMap<String, String>, PackageError> {
    let mut sums = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let current = dir.join(&relative);
        for entry in std::fs::read_dir(&current).map_err(|e| PackageError::io(&current, e))? {
            let entry = entry.map_err(|e| PackageError::io(&current, e))?;
            let name = relative.join(entry.file_name());
            let path = dir.join(&name);
            if path.is_dir() {
                pending.push(name);
            } else if name != Path::new(MANIFEST_FILE) {
                let bytes = std::fs::read(&path).map_err(|e| PackageError::io(&path, e))?;
                let key = name
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                sums.insert(key, sha256(&bytes));
            }
        }
    }
    Ok(sums)
}

/// Fails, naming the file, unless `dir` holds exactly the files of `expected` with those sums.
pub fn verify_checksums(
    dir: &Path,
    expected: &BTreeMap<String, String>,
) -> Result<(), PackageError> {
    let actual = checksums(dir)?;
    for (file, sum) in expected {
        match actual.get(file) {
            None => {
                return Err(PackageError::Corrupt {
                    path: dir.join(file),
                    message: "listed in the manifest but missing".into(),
                });
            }
            Some(found) if found != sum => {
                return Err(PackageError::Corrupt {
                    path: dir.join(file),
                    message: format!("sha256 {found} differs from the manifest's {sum}"),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = actual.keys().find(|f| !expected.contains_key(*f)) {
        return Err(PackageError::Corrupt {
            path: dir.join(extra),
            message: "not listed in the manifest".into(),
        });
    }
    Ok(())
}

/// Reads the packed linears written by [`quantized_file`]: each `shapes` entry (name, shape)
/// must be there in the format its metadata names, with parts of the right lengths, and
/// nothing else may be but alignment fillers.
pub fn read_quantized_file(
    path: &Path,
    shapes: &[(String, WeightShape)],
) -> Result<Vec<(String, QuantizedTensor)>, PackageError> {
    let corrupt = |message: String| PackageError::Corrupt {
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| PackageError::io(path, e))?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(format!("not a safetensors file: {e:?}")))?;
    let tensors =
        SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("unreadable: {e:?}")))?;
    let formats = metadata.metadata().clone().unwrap_or_default();
    let mut expected_names = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let format: QuantFormat = formats
            .get(&format!("{name}.format"))
            .ok_or_else(|| corrupt(format!("no format recorded for `{name}`")))?
            .parse()
            .map_err(|e| corrupt(format!("`{name}`: {e}")))?;
        let part = |suffix: &str, dtype: Dtype| -> Result<Vec<u8>, PackageError> {
            let key = format!("{name}.{suffix}");
            let view = tensors
                .tensor(&key)
                .map_err(|_| corrupt(format!("tensor `{key}` is missing")))?;
            if view.dtype() != dtype || view.shape().first() != Some(&shape.out_features) {
                return Err(corrupt(format!(
                    "tensor `{key}` is {:?} {:?}, expected {dtype:?} with {} rows",
                    view.dtype(),
                    view.shape(),
                    shape.out_features
                )));
            }
            Ok(view.data().to_vec())
        };
        let packed = part("qweight", Dtype::U8)?;
        let scales = part("scales", Dtype::F16)?
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
            .collect();
        let zeros = if format.symmetric() {
            Vec::new()
        } else {
            part("qzeros", Dtype::U8)?
        };
        expected_names.extend(["qweight", "scales", "qzeros"].map(|s| format!("{name}.{s}")));
        let tensor = QuantizedTensor::from_parts(format, *shape, packed, scales, zeros)
            .map_err(|e| corrupt(format!("`{name}`: {e}")))?;
        out.push((name.clone(), tensor));
    }
    if let Some(extra) = tensors
        .names()
        .into_iter()
        .find(|n| !expected_names.contains(*n) && !is_padding(n))
    {
        return Err(corrupt(format!("unexpected tensor `{extra}`")));
    }
    Ok(out)
}
