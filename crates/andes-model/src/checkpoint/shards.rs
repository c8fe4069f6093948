//! Read access to the safetensors files of a Hugging Face model directory, single-file or
//! sharded through `model.safetensors.index.json`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};
use serde::Deserialize;

use crate::error::ModelError;

/// File name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// File name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    bytes: Mmap,
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of a checkpoint directory, memory-mapped, with a record of which were read so
/// that tensors nobody asked for can be reported.
pub struct SafetensorsShards {
    dir: PathBuf,
    shards: Vec<Shard>,
    location: HashMap<String, usize>,
    consumed: HashSet<String>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The mapped files and, for every tensor name, the index of the file holding it.
type MappedShards = (Vec<Shard>, HashMap<String, usize>);

/// Memory-maps `paths`, validating each header against the file's length.
fn map_shards(paths: &[PathBuf]) -> Result<MappedShards, ModelError> {
    let maps = paths
        .iter()
        .map(|path| {
            let handle = File::open(path).map_err(io_error(path))?;
            // SAFETY: the map is read-only and the checkpoint is not expected to change while
            // it is being loaded; a concurrent writer could at worst yield wrong values.
            let bytes = unsafe { Mmap::map(&handle) }.map_err(io_error(path))?;
            Ok((path.clone(), bytes))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    index_shards(maps)
}

/// Validates each mapped file's header and indexes its tensors.
fn index_shards(maps: Vec<(PathBuf, Mmap)>) -> Result<MappedShards, ModelError> {
    let mut shards = Vec::with_capacity(maps.len());
    let mut location = HashMap::new();
    for (i, (path, bytes)) in maps.into_iter().enumerate() {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: format!("{e:?} (the file may be truncated or not safetensors)"),
            })?;
        for name in metadata.tensors().keys() {
            location.insert(name.clone(), i);
        }
        shards.push(Shard {
            path: path.clone(),
            bytes,
            data_start: 8 + header_len,
            metadata,
        });
    }
    Ok((shards, location))
}

impl SafetensorsShards {
    /// Opens `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`;
    /// each file's header is validated against its length, so a truncated file fails here.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let (files, weight_map) = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io_error(&index_path))?;
            let mut de = serde_json::Deserializer::from_str(&text);
            let index: ShardIndex =
                serde_path_to_error::deserialize(&mut de).map_err(|e| ModelError::Config {
                    path: index_path.clone(),
                    key: e.path().to_string(),
                    message: e.inner().to_string(),
                })?;
            let mut files: Vec<String> = index.weight_map.values().cloned().collect();
            files.sort();
            files.dedup();
            (files, Some(index.weight_map))
        } else if single_path.exists() {
            (vec![SINGLE_FILE.to_string()], None)
        } else {
            return Err(ModelError::Io {
                path: single_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("neither {SINGLE_FILE} nor {INDEX_FILE} exists in this directory"),
                ),
            });
        };

        let paths: Vec<PathBuf> = files.iter().map(|file| dir.join(file)).collect();
        let (shards, location) = map_shards(&paths)?;
        if let Some(weight_map) = weight_map {
            for (tensor, file) in weight_map {
                let held = location.get(&tensor).map(|&i| &shards[i].path);
                if held != Some(&dir.join(&file)) {
                    return Err(ModelError::Config {
                        path: index_path.clone(),
                        key: format!("weight_map.{tensor}"),
                        message: format!("names {file}, but that file does not hold this tensor"),
                    });
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            shards,
            location,
            consumed: HashSet::new(),
        })
    }

    /// Serves safetensors bytes built in memory (a package's weights, dequantized) as if read
    /// from `label`, which names them in errors.
    pub fn from_memory(label: &Path, bytes: &[u8]) -> Result<Self, ModelError> {
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(io_error(label))?;
        map[..bytes.len()].copy_from_slice(bytes);
        let map = map.make_read_only().map_err(io_error(label))?;
        let (shards, location) = index_shards(vec![(label.to_owned(), map)])?;
        Ok(Self {
            dir: label.to_owned(),
            shards,
            location,
            consumed: HashSet::new(),
        })
    }

    /// Opens one safetensors file (e.g. a PEFT `adapter_model.safetensors`), validating its
    /// header against its length like [`Self::open`].
    pub fn open_file(path: &Path) -> Result<Self, ModelError> {
        let (shards, location) = map_shards(&[path.to_owned()])?;
        Ok(Self {
            dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
            shards,
            location,
            consumed: HashSet::new(),
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The shape of tensor `name` and the file holding it, without reading its data.
    pub fn shape(&self, name: &str) -> Option<(&[usize], &Path)> {
        let shard = &self.shards[*self.location.get(name)?];
        let info = shard.metadata.info(name)?;
        Some((&info.shape, &shard.path))
    }

    /// Reads tensor `name` as f32 (converting bf16/f16), checking it has shape `expected`.
    pub fn read_f32(&mut self, name: &str, expected: &[usize]) -> Result<TensorData, ModelError> {
        let (shard, dtype, bytes) = self.locate(name, expected)?;
        let values: Vec<f32> = match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: shard.path.clone(),
                    tensor: name.to_string(),
                    found: format!("{other:?}"),
                });
            }
        };
        self.consumed.insert(name.to_string());
        Ok(TensorData::new(values, expected.to_vec()))
    }

    /// The shard holding tensor `name`, its dtype and its bytes, checked to have shape
    /// `expected`; errors name the directory or file and the tensor.
    fn locate(&self, name: &str, expected: &[usize]) -> Result<(&Shard, Dtype, &[u8]), ModelError> {
        let shard = self
            .location
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| ModelError::MissingTensor {
                dir: self.dir.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
            })?;
        let info = shard
            .metadata
            .info(name)
            .expect("the location map only names tensors present in the shard");
        if info.shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: shard.path.clone(),
                tensor: name.to_string(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let (begin, end) = info.data_offsets;
        let bytes = &shard.bytes[shard.data_start + begin..shard.data_start + end];
        Ok((shard, info.dtype, bytes))
    }

    /// Reads tensor `name` as stored when it is f16 (no widening: a table a runtime keeps in
    /// f16), checking it has shape `expected`; `None` when it is stored in another dtype.
    pub fn read_f16(
        &mut self,
        name: &str,
        expected: &[usize],
    ) -> Result<Option<Vec<half::f16>>, ModelError> {
        let (_, dtype, bytes) = self.locate(name, expected)?;
        if dtype != Dtype::F16 {
            return Ok(None);
        }
        let values = bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
            .collect();
        self.consumed.insert(name.to_string());
        Ok(Some(values))
    }

    /// Marks `name` as deliberately ignored (e.g. `lm_head.weight` of a tied model).
    pub fn ignore(&mut self, name: &str) {
        self.consumed.insert(name.to_string());
    }

    /// Marks every tensor whose name satisfies `ignored` as deliberately ignored (the text
    /// tower of a full SigLIP2 checkpoint when only its vision tower is loaded).
    pub fn ignore_where(&mut self, ignored: impl Fn(&str) -> bool) {
        let names: Vec<String> = self
            .location
            .keys()
            .filter(|name| ignored(name))
            .cloned()
            .collect();
        self.consumed.extend(names);
    }

    /// Every tensor name of the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// Fails if any tensor of the checkpoint was never read nor ignored.
    pub fn ensure_all_used(&self) -> Result<(), ModelError> {
        let mut unused: Vec<&String> = self
            .location
            .keys()
            .filter(|name| !self.consumed.contains(*name))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let path = self.shards[self.location[unused[0]]].path.clone();
        let tensors = unused
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Err(ModelError::UnexpectedTensors { path, tensors })
    }
}
